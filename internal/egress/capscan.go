package egress

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

// capabilityPrefix is the only token version this interceptor redeems.
const capabilityPrefix = "kka1."

// markerMinTail is how many token-alphabet characters must follow "kka<digits>." before a string is treated as a
// capability. A kka1 token's first part alone (the IV) is 24 base64 characters, so 16 catches truncated or
// re-versioned tokens while "kka1.txt" or a host name "kka1.example.com" stay ordinary text.
const markerMinTail = 16

// credentialKind is what the request carries.
type credentialKind int

const (
	credNone          credentialKind = iota // no capability anywhere
	credBearer                              // exactly one Authorization: Bearer kka1.… and nowhere else
	credMisplaced                           // a capability-shaped string somewhere it must never be forwarded from
	credDuplicateAuth                       // several Authorization fields
)

// inspectCredentials finds the request's capability. It looks in every header value (Basic credentials decoded),
// the path and the query (raw and percent-decoded). Anything other than one Bearer kka1 token in the one
// Authorization field is credMisplaced, so the request is refused instead of carrying the capability to an
// upstream that would see it. It never returns the token anywhere but its first result.
//
// rawTarget is the request-target as received (origin-form or absolute-form).
func inspectCredentials(h http.Header, rawTarget string) (token string, kind credentialKind) {
	auth := h["Authorization"]
	if len(auth) > 1 {
		return "", credDuplicateAuth
	}
	if len(auth) == 1 {
		if tok, ok := bearerToken(auth[0]); ok && strings.HasPrefix(tok, capabilityPrefix) {
			token = tok
			kind = credBearer
		} else if headerValueHasMarker(auth[0]) {
			return "", credMisplaced
		}
	}
	for name, vals := range h {
		if name == "Authorization" {
			continue
		}
		for _, v := range vals {
			if headerValueHasMarker(v) {
				return "", credMisplaced
			}
		}
	}
	if targetHasMarker(rawTarget) {
		return "", credMisplaced
	}
	return token, kind
}

// bearerToken splits "Bearer <token>" (scheme case-insensitive, RFC 9110 §11.1).
func bearerToken(v string) (string, bool) {
	i := strings.IndexAny(v, " \t")
	if i < 0 || !strings.EqualFold(v[:i], "bearer") {
		return "", false
	}
	return strings.TrimLeft(v[i:], " \t"), true
}

// headerValueHasMarker looks for a capability in a header value, decoding Basic credentials (a capability used as
// a password is still a capability).
func headerValueHasMarker(v string) bool {
	if hasMarker(v) {
		return true
	}
	i := strings.IndexAny(v, " \t")
	if i < 0 || !strings.EqualFold(v[:i], "basic") {
		return false
	}
	enc := strings.TrimLeft(v[i:], " \t")
	dec, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		dec, err = base64.RawStdEncoding.DecodeString(enc)
	}
	return err == nil && hasMarker(string(dec))
}

// targetHasMarker looks in the request-target, raw and once percent-decoded (both path and query conventions).
func targetHasMarker(t string) bool {
	if hasMarker(t) {
		return true
	}
	if !strings.ContainsAny(t, "%+") {
		return false
	}
	if d, err := url.PathUnescape(t); err == nil && hasMarker(d) {
		return true
	}
	if d, err := url.QueryUnescape(t); err == nil && hasMarker(d) {
		return true
	}
	// Undecodable text cannot be checked further; a malformed escape next to a marker is caught by the raw scan
	// above or refused by the policy's own URL checks.
	return false
}

// hasMarker reports whether s contains "kka" + digits + "." (case-insensitive) followed by at least
// markerMinTail token-alphabet characters. Any version number counts: a kka2 token is not redeemable here and
// must not leak either.
func hasMarker(s string) bool {
	for i := 0; i+4 < len(s); i++ {
		if s[i]|0x20 != 'k' || s[i+1]|0x20 != 'k' || s[i+2]|0x20 != 'a' {
			continue
		}
		j := i + 3
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == i+3 || j >= len(s) || s[j] != '.' {
			continue
		}
		n := 0
		for k := j + 1; k < len(s) && isTokenByte(s[k]); k++ {
			n++
			if n >= markerMinTail {
				return true
			}
		}
	}
	return false
}

// isTokenByte is the alphabet of token text: standard and URL-safe base64 and the ':' part separator.
func isTokenByte(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '+', '/', '=', ':', '-', '_':
		return true
	}
	return false
}
