package capability

import (
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// The claims JSON reader and writer.
//
// Reading is a hand-written scanner for the one fixed schema instead of encoding/json: a json.Decoder with
// DisallowUnknownFields costs about 40 AES-GCM opens per token (docs/DESIGN.md §9 allows 10), matches keys
// case-insensitively, keeps the last of duplicate keys and turns invalid escapes into U+FFFD — all of which the
// spec forbids. The scanner accepts exactly what the Node reference (JSON.parse + its duplicate-key check +
// validateClaims) accepts, with one deliberate exception: a \u escape that leaves a lone UTF-16 surrogate is
// refused, because a Go string cannot hold it faithfully (encoding/json would silently turn it into U+FFFD, so
// two distinct Node strings would compare equal in Go). FuzzClaimsJSONDifferential checks the scanner against a
// reference built on encoding/json.
//
// Writing reproduces JSON.stringify byte for byte: only '"', '\\' and control characters below U+0020 are escaped
// (the short forms \b \f \n \r \t, else \u00xx in lower case); '<', '>', '&', U+2028 and U+2029 — which
// encoding/json would escape — are written as they are.

// Claim keys, as bits of a seen-mask: a second occurrence of a bit is a duplicate key.
const (
	kVersion uint16 = 1 << iota
	kPurpose
	kUserID
	kCloudAgentSessionID
	kKiloSessionID
	kOutboundContainerID
	kUserToken
	kProviderToken
	kTargets
	kIssuedAt
	kExpiresAt

	kRequired = kVersion | kPurpose | kUserID | kCloudAgentSessionID | kKiloSessionID | kOutboundContainerID |
		kUserToken | kTargets | kIssuedAt | kExpiresAt
)

const (
	tBackend uint8 = 1 << iota
	tProvider
	tIngest

	tRequired = tBackend | tProvider | tIngest
)

// Fixed failure details. They name the rule that failed and never echo any part of the plaintext.
const (
	errNotJSON        = "claims are not a JSON object"
	errTrailing       = "claims have data after the JSON object"
	errUnknownKey     = "claims have an unknown key"
	errDuplicateKey   = "claims have a duplicate key"
	errMissingKey     = "claims lack a required key"
	errBadString      = "claims hold a malformed string"
	errLoneSurrogate  = "claims hold a lone UTF-16 surrogate escape"
	errBadNumber      = "claims hold a malformed number"
	errWrongType      = "claims hold a value of the wrong type"
	errNotSafeInteger = "claims hold a number that is not a safe integer"
	errVersion        = "claims version is not 1"
	errPurpose        = "claims purpose is not kilo_api_session"
	errEmptyString    = "claims hold an empty string"
	errBadTarget      = "claims hold a target that is not a URL"
	errIssuedAt       = "claims issuedAt is negative"
	errNotAfter       = "claims expiresAt is not after issuedAt"
	errTooLong        = "claims lifetime exceeds 4h"
)

type claimsScanner struct {
	s string
	i int
	// plain: the text holds no backslash and no byte below 0x20, so no string needs unescaping or control-character
	// checks and a string ends at the next '"' (found with the vectorised strings.IndexByte).
	plain bool
}

// parseClaimsText checks and parses an opened plaintext as the Node side does: TextDecoder('utf-8', {fatal: true})
// (invalid UTF-8 fails, one leading BOM is dropped), then JSON.parse with a duplicate-key check, then
// validateClaims. pt must not be modified afterwards: the claims' strings share its memory.
func parseClaimsText(pt []byte, c *Claims) string {
	valid, plain := scanPlaintext(pt)
	if !valid {
		return "claims are not valid UTF-8"
	}
	if len(pt) >= 3 && pt[0] == 0xEF && pt[1] == 0xBB && pt[2] == 0xBF {
		pt = pt[3:]
	}
	if len(pt) == 0 {
		return errNotJSON
	}
	return parseClaims(unsafe.String(&pt[0], len(pt)), plain, c)
}

// scanPlaintext reports whether b is valid UTF-8 and whether it is plain: free of '\\' and of bytes below 0x20,
// so that no string in it needs unescaping or control-character checks. ASCII is checked eight bytes at a time;
// the bit tricks (Hacker's Delight "has less than" and "has zero byte") can flag a byte falsely only above a true
// hit in the same word, so the answer is exact.
func scanPlaintext(b []byte) (validUTF8, plain bool) {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		if w&highs != 0 {
			break // non-ASCII: the general loops below take over from here
		}
		bs := w ^ ('\\' * ones)
		if ((w-0x20*ones)&^w|(bs-ones)&^bs)&highs != 0 {
			return utf8.Valid(b[i:]), false
		}
	}
	tail := b[i:]
	for _, c := range tail {
		if c < 0x20 || c == '\\' {
			return utf8.Valid(tail), false
		}
	}
	return utf8.Valid(tail), true
}

func (p *claimsScanner) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// expect consumes optional whitespace and then the byte c.
func (p *claimsScanner) expect(c byte) bool {
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// peek returns the next non-whitespace byte, or 0 at the end.
func (p *claimsScanner) peek() byte {
	p.ws()
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// parseClaims reads and validates the claims text (already known to be valid UTF-8; plain as scanPlaintext
// says). It returns "" on success, or the detail of the first rule broken.
func parseClaims(text string, plain bool, c *Claims) string {
	p := claimsScanner{s: text, plain: plain}
	if !p.expect('{') {
		return errNotJSON
	}
	var seen uint16
	if p.peek() != '}' {
		for {
			if p.peek() != '"' {
				return errNotJSON
			}
			key, detail := p.str()
			if detail != "" {
				return detail
			}
			if !p.expect(':') {
				return errNotJSON
			}
			var bit uint16
			switch key {
			case "version":
				bit = kVersion
			case "purpose":
				bit = kPurpose
			case "userId":
				bit = kUserID
			case "cloudAgentSessionId":
				bit = kCloudAgentSessionID
			case "kiloSessionId":
				bit = kKiloSessionID
			case "outboundContainerId":
				bit = kOutboundContainerID
			case "userToken":
				bit = kUserToken
			case "providerToken":
				bit = kProviderToken
			case "targets":
				bit = kTargets
			case "issuedAt":
				bit = kIssuedAt
			case "expiresAt":
				bit = kExpiresAt
			default:
				return errUnknownKey
			}
			if seen&bit != 0 {
				return errDuplicateKey
			}
			seen |= bit
			switch bit {
			case kVersion, kIssuedAt, kExpiresAt:
				n, detail := p.number()
				if detail != "" {
					return detail
				}
				switch bit {
				case kVersion:
					if n != Version {
						return errVersion
					}
					c.Version = Version
				case kIssuedAt:
					c.IssuedAt = n
				default:
					c.ExpiresAt = n
				}
			case kTargets:
				if detail := p.targets(&c.Targets); detail != "" {
					return detail
				}
			default:
				v, detail := p.stringValue()
				if detail != "" {
					return detail
				}
				switch bit {
				case kPurpose:
					if v != Purpose {
						return errPurpose
					}
					c.Purpose = Purpose
				case kUserID:
					c.UserID = v
				case kCloudAgentSessionID:
					c.CloudAgentSessionID = v
				case kKiloSessionID:
					c.KiloSessionID = v
				case kOutboundContainerID:
					c.OutboundContainerID = v
				case kUserToken:
					c.UserToken = Secret(v)
				case kProviderToken:
					c.ProviderToken = Secret(v)
				}
			}
			if p.expect(',') {
				continue
			}
			break
		}
	}
	if !p.expect('}') {
		return errNotJSON
	}
	p.ws()
	if p.i != len(p.s) {
		return errTrailing
	}
	if seen&kRequired != kRequired {
		return errMissingKey
	}
	// Every value has its type; what remains are the rules across values (Node's validateClaims).
	if c.IssuedAt < 0 {
		return errIssuedAt
	}
	if c.ExpiresAt <= c.IssuedAt {
		return errNotAfter
	}
	if c.ExpiresAt-c.IssuedAt > maxLifetimeMs {
		return errTooLong
	}
	return ""
}

// targets reads the targets object: exactly the three keys, each a non-empty string that parses as a URL.
func (p *claimsScanner) targets(t *Targets) string {
	if !p.expect('{') {
		return errWrongType
	}
	var seen uint8
	if p.peek() != '}' {
		for {
			if p.peek() != '"' {
				return errNotJSON
			}
			key, detail := p.str()
			if detail != "" {
				return detail
			}
			if !p.expect(':') {
				return errNotJSON
			}
			var bit uint8
			var dst *string
			switch key {
			case "backendBaseUrl":
				bit, dst = tBackend, &t.BackendBaseURL
			case "providerBaseUrl":
				bit, dst = tProvider, &t.ProviderBaseURL
			case "sessionIngestBaseUrl":
				bit, dst = tIngest, &t.SessionIngestBaseURL
			default:
				return errUnknownKey
			}
			if seen&bit != 0 {
				return errDuplicateKey
			}
			seen |= bit
			v, detail := p.stringValue()
			if detail != "" {
				return detail
			}
			if !validTargetURL(v) {
				return errBadTarget
			}
			*dst = v
			if p.expect(',') {
				continue
			}
			break
		}
	}
	if !p.expect('}') {
		return errNotJSON
	}
	if seen != tRequired {
		return errMissingKey
	}
	return ""
}

// stringValue reads a JSON string that must be non-empty.
func (p *claimsScanner) stringValue() (string, string) {
	if p.peek() != '"' {
		return "", errWrongType
	}
	v, detail := p.str()
	if detail == "" && v == "" {
		detail = errEmptyString
	}
	return v, detail
}

// str reads a JSON string starting at p.s[p.i] == '"'. Strings without escapes — all of them in practice — are
// returned as substrings of the plaintext, without copying.
func (p *claimsScanner) str() (string, string) {
	s := p.s
	start := p.i + 1
	if p.plain {
		j := strings.IndexByte(s[start:], '"')
		if j < 0 {
			return "", errBadString
		}
		p.i = start + j + 1
		return s[start : start+j], ""
	}
	i := start
	for ; i < len(s); i++ {
		c := s[i]
		if c == '"' {
			p.i = i + 1
			return s[start:i], ""
		}
		if c == '\\' {
			break
		}
		if c < 0x20 { // JSON forbids raw control characters in strings
			return "", errBadString
		}
	}
	if i >= len(s) {
		return "", errBadString
	}
	buf := make([]byte, i-start, len(s)-start)
	copy(buf, s[start:i])
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"':
			p.i = i + 1
			return string(buf), ""
		case c < 0x20:
			return "", errBadString
		case c != '\\':
			buf = append(buf, c)
			i++
			continue
		}
		if i+1 >= len(s) {
			return "", errBadString
		}
		switch s[i+1] {
		case '"', '\\', '/':
			buf = append(buf, s[i+1])
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := hex4(s, i+2)
			if !ok {
				return "", errBadString
			}
			i += 6
			switch {
			case r >= 0xD800 && r < 0xDC00: // a high surrogate must be followed by an escaped low one
				if i+1 >= len(s) || s[i] != '\\' || s[i+1] != 'u' {
					return "", errLoneSurrogate
				}
				lo, ok := hex4(s, i+2)
				if !ok {
					return "", errBadString
				}
				if lo < 0xDC00 || lo > 0xDFFF {
					return "", errLoneSurrogate
				}
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
				i += 6
			case r >= 0xDC00 && r <= 0xDFFF:
				return "", errLoneSurrogate
			}
			buf = utf8.AppendRune(buf, r)
			continue
		default:
			return "", errBadString
		}
		i += 2
	}
	return "", errBadString
}

// hex4 parses the four hex digits at s[i:i+4].
func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number reads a JSON number (RFC 8259 grammar, as JSON.parse) and returns it if its value — rounded to a float64
// as JavaScript does — is a safe integer. That is Node's rule, so 1e3, 1.0 and 10e-1 are integers, -0 is 0, and
// 1780833600000.5 is not.
func (p *claimsScanner) number() (int64, string) {
	p.ws()
	s := p.s
	start := p.i
	i := start
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := i
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && '1' <= s[i] && s[i] <= '9':
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	default:
		if i == start && i < len(s) && (s[i] == '"' || s[i] == '{' || s[i] == '[' || s[i] == 't' || s[i] == 'f' || s[i] == 'n') {
			return 0, errWrongType
		}
		return 0, errBadNumber
	}
	intEnd := i
	simple := true
	if i < len(s) && s[i] == '.' {
		simple = false
		i++
		if i >= len(s) || s[i] < '0' || s[i] > '9' {
			return 0, errBadNumber
		}
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		simple = false
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || s[i] < '0' || s[i] > '9' {
			return 0, errBadNumber
		}
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	}
	p.i = i
	if simple && intEnd-digits <= 16 { // 16 decimal digits cannot overflow int64: exact without floating point
		var n int64
		for _, c := range []byte(s[digits:intEnd]) {
			n = n*10 + int64(c-'0')
		}
		if n > maxSafeInteger {
			return 0, errNotSafeInteger
		}
		if digits != start {
			n = -n
		}
		return n, ""
	}
	f, err := strconv.ParseFloat(s[start:i], 64)
	if err != nil && !isRangeError(err) { // the grammar was checked above; this cannot happen
		return 0, errBadNumber
	}
	// Overflow gives ±Inf (refused below); underflow gives ±0, as in JavaScript.
	if math.IsInf(f, 0) || math.IsNaN(f) || f != math.Trunc(f) || math.Abs(f) > maxSafeInteger {
		return 0, errNotSafeInteger
	}
	return int64(f), ""
}

func isRangeError(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

// appendJSON writes the claims in the wire field order as JSON.stringify would. With reveal false the tokens are
// written as "[REDACTED]". With header false version and purpose are left out (a bare Subject) and so are
// issuedAt and expiresAt.
func (c *Claims) appendJSON(dst []byte, reveal, header bool) []byte {
	str := func(dst []byte, key, v string) []byte {
		dst = append(dst, '"')
		dst = append(dst, key...)
		dst = append(dst, `":`...)
		return appendJSONString(dst, v)
	}
	secret := func(s Secret) string {
		if reveal {
			return string(s)
		}
		return redacted
	}
	dst = append(dst, '{')
	if header {
		dst = append(dst, `"version":`...)
		dst = strconv.AppendInt(dst, int64(c.Version), 10)
		dst = str(append(dst, ','), "purpose", c.Purpose)
		dst = append(dst, ',')
	}
	dst = str(dst, "userId", c.UserID)
	dst = str(append(dst, ','), "cloudAgentSessionId", c.CloudAgentSessionID)
	dst = str(append(dst, ','), "kiloSessionId", c.KiloSessionID)
	dst = str(append(dst, ','), "outboundContainerId", c.OutboundContainerID)
	dst = str(append(dst, ','), "userToken", secret(c.UserToken))
	if c.ProviderToken != "" {
		dst = str(append(dst, ','), "providerToken", secret(c.ProviderToken))
	}
	dst = append(dst, `,"targets":{`...)
	dst = str(dst, "backendBaseUrl", c.Targets.BackendBaseURL)
	dst = str(append(dst, ','), "providerBaseUrl", c.Targets.ProviderBaseURL)
	dst = str(append(dst, ','), "sessionIngestBaseUrl", c.Targets.SessionIngestBaseURL)
	dst = append(dst, '}')
	if header {
		dst = append(dst, `,"issuedAt":`...)
		dst = strconv.AppendInt(dst, c.IssuedAt, 10)
		dst = append(dst, `,"expiresAt":`...)
		dst = strconv.AppendInt(dst, c.ExpiresAt, 10)
	}
	return append(dst, '}')
}

// appendJSONString quotes s exactly as JavaScript's JSON.stringify does for a well-formed string. s must be valid
// UTF-8 (Issue checks; Decode only produces valid UTF-8).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
