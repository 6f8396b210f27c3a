package capability

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"time"
	"unicode/utf8"
)

// Decode opens and strictly validates token at time now. Checks run in the order of docs/DESIGN.md §3 and the first
// failure wins: length → prefix → canonical parts → decrypt with each key → UTF-8 → JSON → schema →
// issuedAt > now+60s (invalid) → expiresAt ≤ now (expired). Every failure is an *Error; none carries token
// material. The returned claims' strings share one buffer holding the opened plaintext.
func Decode(r *KeyRing, token string, now time.Time) (*Claims, error) {
	if r == nil || len(r.aeads) == 0 {
		return nil, configuration("key ring holds no keys")
	}
	// Length first, before any work proportional to it. Len in bytes ≥ Node's UTF-16 length, and any token with a
	// non-ASCII byte is invalid anyway, so both sides give the same answer.
	if len(token) > MaxTokenChars {
		return nil, invalid("token is longer than 65536 characters")
	}
	if !strings.HasPrefix(token, Prefix) {
		return nil, invalid("token does not start with kka1.")
	}
	rest := token[len(Prefix):]
	i := strings.IndexByte(rest, ':')
	if i < 0 {
		return nil, invalid("token does not have three parts")
	}
	ivText, rest := rest[:i], rest[i+1:]
	i = strings.IndexByte(rest, ':')
	if i < 0 {
		return nil, invalid("token does not have three parts")
	}
	tagText, ctText := rest[:i], rest[i+1:]
	if strings.IndexByte(ctText, ':') >= 0 {
		return nil, invalid("token does not have three parts")
	}

	var iv [ivSize]byte
	if b64DecodedLen(ivText) != ivSize || !b64Decode(iv[:], ivText) {
		return nil, invalid("token IV is not canonical base64 of 16 bytes")
	}
	if b64DecodedLen(tagText) != tagSize {
		return nil, invalid("token tag is not canonical base64 of 16 bytes")
	}
	ctLen := b64DecodedLen(ctText)
	if ctLen < 1 {
		return nil, invalid("token ciphertext is not canonical base64 of at least 1 byte")
	}
	// sealed is ciphertext || tag, the layout Go's GCM expects. The plaintext is opened in place into the same
	// storage and never written again, so the claims' strings can point into it without another copy.
	sealed := make([]byte, ctLen+tagSize)
	if !b64Decode(sealed[ctLen:], tagText) {
		return nil, invalid("token tag is not canonical base64 of 16 bytes")
	}
	if !b64Decode(sealed[:ctLen], ctText) {
		return nil, invalid("token ciphertext is not canonical base64 of at least 1 byte")
	}
	pt, ok := r.open(iv[:], sealed)
	if !ok {
		return nil, invalid("no key in the ring opens the token")
	}
	c := new(Claims)
	if detail := parseClaimsText(pt, c); detail != "" {
		return nil, invalid(detail)
	}

	nowMs := now.UnixMilli()
	if c.IssuedAt > nowMs+clockSkewMs {
		return nil, invalid("token is issued more than 60s in the future")
	}
	if c.ExpiresAt <= nowMs {
		return nil, &Error{Reason: ReasonExpired, Detail: "token expired"}
	}
	return c, nil
}

// open tries every key on sealed (ciphertext || tag). A failed GCM open may overwrite its destination, so every
// key but the last opens into scratch space and the last one opens in place.
func (r *KeyRing) open(iv, sealed []byte) ([]byte, bool) {
	last := len(r.aeads) - 1
	var scratch []byte
	for i, aead := range r.aeads {
		var dst []byte
		if i == last {
			dst = sealed[:0]
		} else {
			if scratch == nil {
				scratch = make([]byte, 0, len(sealed)-tagSize)
			}
			dst = scratch[:0]
		}
		if pt, err := aead.Open(dst, iv, sealed, nil); err == nil {
			return pt, true
		}
	}
	return nil, false
}

// Issue seals a token for s, valid from now for lifetime (0 means MaxLifetime; otherwise MinLifetime to
// MaxLifetime, whole milliseconds). It refuses a subject that Decode — Go's or Node's — would refuse, so it never
// mints a token that cannot be redeemed. The nonce is 16 fresh bytes from crypto/rand.
func Issue(r *KeyRing, s Subject, now time.Time, lifetime time.Duration) (string, *Claims, error) {
	if r == nil || len(r.aeads) == 0 {
		return "", nil, configuration("key ring holds no keys")
	}
	if lifetime == 0 {
		lifetime = MaxLifetime
	}
	if lifetime < MinLifetime || lifetime > MaxLifetime {
		return "", nil, configuration("lifetime must be between 1m and 4h")
	}
	c := &Claims{
		Version:   Version,
		Purpose:   Purpose,
		Subject:   s,
		IssuedAt:  now.UnixMilli(),
		ExpiresAt: now.UnixMilli() + lifetime.Milliseconds(),
	}
	if c.IssuedAt < 0 || c.ExpiresAt > maxSafeInteger {
		return "", nil, configuration("issue time is outside 1970 to 2^53 ms")
	}
	if detail := validateSubject(&c.Subject); detail != "" {
		return "", nil, invalid(detail)
	}

	var iv [ivSize]byte
	_, _ = rand.Read(iv[:]) // crypto/rand.Read never fails; it crashes the program if the OS cannot supply entropy
	tok, err := r.seal(iv, c)
	if err != nil {
		return "", nil, err
	}
	return tok, c, nil
}

// seal serialises c exactly as the Node reference does and seals it with the ring's first key under iv.
func (r *KeyRing) seal(iv [ivSize]byte, c *Claims) (string, error) {
	pt := c.appendJSON(make([]byte, 0, 1024), true, true)
	defer clear(pt) // the raw tokens
	size := len(Prefix) + 2*base64.StdEncoding.EncodedLen(ivSize) + 2 + base64.StdEncoding.EncodedLen(len(pt))
	if size > MaxTokenChars {
		return "", invalid("claims are too large: the token would exceed 65536 characters")
	}
	sealed := r.aeads[0].Seal(nil, iv[:], pt, nil) // ciphertext || tag
	ct, tag := sealed[:len(pt)], sealed[len(pt):]
	out := make([]byte, 0, size)
	out = append(out, Prefix...)
	out = base64.StdEncoding.AppendEncode(out, iv[:])
	out = append(out, ':')
	out = base64.StdEncoding.AppendEncode(out, tag)
	out = append(out, ':')
	out = base64.StdEncoding.AppendEncode(out, ct)
	return string(out), nil
}

// validateSubject applies the schema rules to what the caller supplies: every string non-empty (providerToken
// may be absent) and valid UTF-8 (the Node side decodes the plaintext with a fatal UTF-8 decoder), every target a
// URL.
func validateSubject(s *Subject) string {
	for _, v := range [...]string{s.UserID, s.CloudAgentSessionID, s.KiloSessionID, s.OutboundContainerID, string(s.UserToken)} {
		if v == "" {
			return "subject has an empty required string"
		}
	}
	for _, v := range [...]string{s.UserID, s.CloudAgentSessionID, s.KiloSessionID, s.OutboundContainerID, string(s.UserToken), string(s.ProviderToken),
		s.Targets.BackendBaseURL, s.Targets.ProviderBaseURL, s.Targets.SessionIngestBaseURL} {
		if !utf8.ValidString(v) {
			return "subject holds a string that is not valid UTF-8"
		}
	}
	for _, v := range [...]string{s.Targets.BackendBaseURL, s.Targets.ProviderBaseURL, s.Targets.SessionIngestBaseURL} {
		if v == "" || !validTargetURL(v) {
			return "subject has a target that is not a URL"
		}
	}
	return ""
}
