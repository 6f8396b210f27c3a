package policy

import (
	"strings"
	"unicode/utf8"
)

// splitURL holds the pieces of an absolute http(s) URL. Every string aliases the input: splitting allocates
// nothing.
type splitURL struct {
	scheme    string // as written (case preserved)
	host      string // as written (case preserved), never empty
	port      string // digits as written, "" when absent
	path      string // escaped, "" when the URL has no path; starts with '/' otherwise
	hostEnd   int    // index in the input just after host
	authEnd   int    // index in the input just after host[:port]
	hasQuery  bool
	https     bool
	lowerHost bool // scheme and host are already lower-case
}

// split applies DESIGN §4 rule 1 to s. It returns "" and the pieces, or the Detail of the first check that
// failed. Checks on the whole string (length, characters, '#') come first so a trick hidden in the query is
// caught the same way as one in the path.
func split(s string) (u splitURL, detail string) {
	if len(s) == 0 {
		return u, DetailEmpty
	}
	if len(s) > MaxURLLength {
		return u, DetailTooLong
	}
	query := -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		// Control characters, space and DEL/non-ASCII are where parsers disagree most (WHATWG strips tabs and
		// newlines, trims spaces and IDNA-maps non-ASCII hosts; RFC 3986 forbids them), so none is accepted.
		if c <= ' ' || c >= 0x7f {
			return u, DetailForbiddenCharacter
		}
		if c == '#' {
			return u, DetailFragment
		}
		if c == '?' && query < 0 {
			query = i
		}
	}
	end := len(s)
	if query >= 0 {
		end = query
		u.hasQuery = true
	}

	// scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":" (RFC 3986 §3.1)
	i := 0
	for i < end && (isAlpha(s[i]) || (i > 0 && (isDigit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))) {
		i++
	}
	if i == 0 || i >= end || s[i] != ':' {
		return u, DetailNotAbsolute
	}
	u.scheme = s[:i]
	switch {
	case strings.EqualFold(u.scheme, "https"):
		u.https = true
	case strings.EqualFold(u.scheme, "http"):
	default:
		return u, DetailScheme
	}
	// Only the hierarchical form "scheme://authority": "https:host" and "https:/host" are opaque or
	// authority-less, and WHATWG would silently repair them into something else.
	if end-i < 3 || s[i+1] != '/' || s[i+2] != '/' {
		return u, DetailNotAbsolute
	}
	start := i + 3
	authEnd := start
	for authEnd < end && s[authEnd] != '/' {
		authEnd++
	}
	auth := s[start:authEnd]
	// Any '@' is userinfo, even "https://@host" or "https://evil\@host": whichever side a parser believes is the
	// host, the other side reads it differently.
	if strings.IndexByte(auth, '@') >= 0 {
		return u, DetailUserinfo
	}
	// Brackets mean an IP literal (IPv6, possibly with a zone id): refused before the port split, whose ':'
	// they contain.
	if strings.IndexByte(auth, '[') >= 0 {
		return u, DetailHost
	}
	host := auth
	if c := strings.IndexByte(auth, ':'); c >= 0 {
		host = auth[:c]
		u.port = auth[c+1:]
		if !validPort(u.port) {
			return u, DetailPort
		}
	}
	// '%' (escaped hosts) and anything else outside letters, digits, '-' and '.' are refused by validHost.
	if !validHost(host) {
		return u, DetailHost
	}
	if !u.https && !isLocalHost(host) {
		return u, DetailHTTPNotLocal
	}
	u.host = host
	u.hostEnd = start + len(host)
	u.authEnd = authEnd
	u.path = s[authEnd:end]
	u.lowerHost = !hasUpper(s[:u.hostEnd])
	return u, ""
}

// origin returns the normalised origin of u, which was split from s: lower-case scheme and host, the port only
// when it is not the scheme's default. It aliases s whenever s is already normalised (the common case).
func (u *splitURL) origin(s string) string {
	defaultPort := (u.https && u.port == "443") || (!u.https && u.port == "80")
	if u.lowerHost {
		if defaultPort || u.port == "" {
			return s[:u.hostEnd]
		}
		return s[:u.authEnd]
	}
	var b strings.Builder
	b.Grow(u.authEnd)
	for i := 0; i < u.hostEnd; i++ {
		b.WriteByte(toLower(s[i]))
	}
	if !defaultPort && u.port != "" {
		b.WriteByte(':')
		b.WriteString(u.port)
	}
	return b.String()
}

// validPort: 1–65535 written canonically. Empty ports and leading zeros are how "https://host:/" and
// "https://host:0443/" come to name the same origin as "https://host/" in one parser and not in another. Port 0
// cannot be connected to, so it is refused too.
func validPort(p string) bool {
	if len(p) == 0 || len(p) > 5 || p[0] == '0' {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if !isDigit(p[i]) {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n <= 65535
}

// validHost accepts a DNS name or dotted IPv4 address written in letters, digits, '-' and '.': no empty label,
// except that a single trailing dot (a fully-qualified name) is accepted here and simply matches no target.
func validHost(h string) bool {
	if len(h) == 0 || len(h) > 254 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case isAlpha(c) || isDigit(c) || c == '-':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// isLocalHost names the hosts plain http is allowed to: local development only.
func isLocalHost(h string) bool {
	return strings.EqualFold(h, "localhost") || h == "127.0.0.1" || strings.EqualFold(h, "host.docker.internal")
}

// checkPath applies DESIGN §4 rules 2 and 3 to the escaped path p (the part between the authority and the first
// '?'). It returns "" or the Detail of the rule that fired.
func checkPath(p string) string {
	if d := traversalGuard(p); d != "" {
		return d
	}
	return pathSyntax(p)
}

// maxGuardRounds is how many times the guard decodes before it insists the text be stable. Each round peels one
// layer of percent-encoding; an upstream chain that decodes more often than this is not plausible, and anything
// still encoded after it is refused rather than trusted.
const maxGuardRounds = 4

// traversalGuard is rule 2: at every decoding depth refuse encoded separators and dot segments, so that no
// chain of decoders between here and the upstream's router can turn the path into a different one.
func traversalGuard(p string) string {
	if d := guardRound(p); d != "" {
		return d
	}
	if strings.IndexByte(p, '%') < 0 {
		// Nothing to decode: the text is its own fixed point. Dot segments were covered by guardRound.
		if strings.IndexByte(p, '\\') >= 0 {
			return DetailBackslash
		}
		return ""
	}
	var stack [512]byte
	buf := stack[:0]
	if len(p) > len(stack) {
		buf = make([]byte, 0, len(p))
	}
	buf = append(buf, p...)
	for round := 0; ; round++ {
		n, ok := unescapeInPlace(buf)
		if !ok {
			return DetailMalformedEscape
		}
		changed := n != len(buf)
		buf = buf[:n]
		if !utf8.Valid(buf) {
			return DetailInvalidUTF8
		}
		if !changed {
			break
		}
		if round+1 == maxGuardRounds {
			// The fourth decoding changed the text; if any escape is left it has not reached a fixed point.
			if indexByte(buf, '%') >= 0 {
				return DetailNestedEncoding
			}
			break
		}
		if d := guardRound(buf); d != "" {
			return d
		}
	}
	if indexByte(buf, '\\') >= 0 {
		return DetailBackslash
	}
	if hasDotSegment(buf) {
		return DetailDotSegment
	}
	if hasCompatSpecial(buf) {
		return DetailCompatCharacter
	}
	return ""
}

// compatSpecials are the code points whose NFKC form holds one of . / \ % ? # ; — "%EF%BC%8E%EF%BC%8E" is U+FF0E
// twice, which a server that normalises paths with NFKC (several Python, Java and .NET stacks do, and so do some
// WAFs and gateways) turns into "..", after every check here has passed. None has a use in an API path. The list
// is generated from Unicode's decomposition data; TestCompatSpecialsMatchNFKC re-derives it.
var compatSpecials = [...]rune{
	0x037E, 0x2024, 0x2025, 0x2026, 0x2047, 0x2048, 0x2049, 0x2100, 0x2101, 0x2105, 0x2106,
	0x2488, 0x2489, 0x248A, 0x248B, 0x248C, 0x248D, 0x248E, 0x248F, 0x2490, 0x2491, 0x2492, 0x2493,
	0x2494, 0x2495, 0x2496, 0x2497, 0x2498, 0x2499, 0x249A, 0x249B, 0x33C2, 0x33C7, 0x33D8,
	0xFE14, 0xFE16, 0xFE19, 0xFE30, 0xFE52, 0xFE54, 0xFE56, 0xFE5F, 0xFE68, 0xFE6A,
	0xFF03, 0xFF05, 0xFF0E, 0xFF0F, 0xFF1B, 0xFF1F, 0xFF3C, 0x1F100,
}

// hasCompatSpecial reports whether fully decoded, valid UTF-8 text holds one of compatSpecials. ASCII-only text
// (the usual case) costs one pass over the bytes.
func hasCompatSpecial(t []byte) bool {
	for i := 0; i < len(t); {
		if t[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(t[i:])
		i += n
		for _, c := range compatSpecials {
			if r == c {
				return true
			}
		}
	}
	return false
}

type text interface{ ~string | ~[]byte }

// guardRound is one round's refusal test: %2f or %5c in any case, or '/' followed by one or two of ('.' or
// %2e) and then '/' or the end.
func guardRound[T text](t T) string {
	for i := 0; i < len(t); i++ {
		switch t[i] {
		case '%':
			if i+2 < len(t) && ((t[i+1] == '2' && (t[i+2]|0x20) == 'f') || (t[i+1] == '5' && (t[i+2]|0x20) == 'c')) {
				return DetailEncodedSeparator
			}
		case '/':
			j, n := i+1, 0
			for n < 2 {
				if j < len(t) && t[j] == '.' {
					j++
				} else if isEncodedDot(t, j) {
					j += 3
				} else {
					break
				}
				n++
			}
			if n > 0 && (j == len(t) || t[j] == '/') {
				return DetailDotSegment
			}
		}
	}
	return ""
}

func isEncodedDot[T text](t T, j int) bool {
	return j+2 < len(t) && t[j] == '%' && t[j+1] == '2' && (t[j+2]|0x20) == 'e'
}

// hasDotSegment reports a "." or ".." segment in fully decoded text.
func hasDotSegment(t []byte) bool {
	seg := 0
	for i := 0; i <= len(t); i++ {
		if i == len(t) || t[i] == '/' {
			if n := i - seg; (n == 1 && t[seg] == '.') || (n == 2 && t[seg] == '.' && t[seg+1] == '.') {
				return true
			}
			seg = i + 1
		}
	}
	return false
}

// unescapeInPlace percent-decodes b into itself (the output is never longer than the input) and returns the new
// length, or false for a '%' not followed by two hex digits. '+' is not a space in a path.
func unescapeInPlace(b []byte) (int, bool) {
	w := 0
	for r := 0; r < len(b); r++ {
		c := b[r]
		if c == '%' {
			if r+2 >= len(b) {
				return 0, false
			}
			hi, ok1 := unhex(b[r+1])
			lo, ok2 := unhex(b[r+2])
			if !ok1 || !ok2 {
				return 0, false
			}
			c = hi<<4 | lo
			r += 2
		}
		b[w] = c
		w++
	}
	return w, true
}

// pathSyntax is rule 3 on the escaped path, plus RFC 3986 path characters: whatever the policy compares must
// be the one spelling an upstream router will see. Encoded unreserved characters ("/api/%6Frganizations") and
// matrix parameters ("/api;x/…") are the spellings routers normalise away; characters outside pchar get
// re-escaped by clients and proxies (Go's URL.EscapedPath does), so they would not reach the upstream as checked.
func pathSyntax(p string) string {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return DetailEmptySegment
			}
		case c == ';':
			return DetailSemicolon
		case c == '%':
			// The guard has refused malformed escapes already; checked again so this never indexes out of range.
			if i+2 >= len(p) {
				return DetailMalformedEscape
			}
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				return DetailMalformedEscape
			}
			v := hi<<4 | lo
			switch {
			case v == ';':
				return DetailSemicolon
			case v < 0x20 || v == 0x7f:
				return DetailEncodedControl
			case isUnreserved(v):
				return DetailEncodedUnreserved
			}
			i += 2
		case isUnreserved(c) || isSubDelim(c) || c == ':' || c == '@':
		default:
			return DetailPathCharacter
		}
	}
	return ""
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isUnreserved: RFC 3986 §2.3.
func isUnreserved(c byte) bool {
	return isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

// isSubDelim: RFC 3986 §2.2 sub-delims.
func isSubDelim(c byte) bool {
	switch c {
	case '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=':
		return true
	}
	return false
}

func unhex(c byte) (byte, bool) {
	switch {
	case isDigit(c):
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func toLower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 'A' && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

func indexByte(b []byte, c byte) int {
	for i := range b {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// hasPrefixFold is strings.HasPrefix with ASCII case folding.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// equalOrBelow reports path == base or path starting with base + "/", exactly (escaped comparison).
func equalOrBelow(path, base string) bool {
	return strings.HasPrefix(path, base) && (len(path) == len(base) || path[len(base)] == '/')
}

// equalOrBelowFold is equalOrBelow with ASCII case folding.
func equalOrBelowFold(path, base string) bool {
	return hasPrefixFold(path, base) && (len(path) == len(base) || path[len(base)] == '/')
}
