package capability

import "strings"

// validTargetURL reports whether s parses as an absolute URL under the WHATWG URL Standard, which is what the Node
// reference checks with `new URL(s)`. It never builds the URL; it only runs the parts of the basic URL parser
// that can fail (scheme, authority, host, port), so it costs a fraction of url.Parse and allocates nothing in the
// common case.
//
// Go's net/url is the wrong oracle here: it accepts "not a url" (a relative path) and refuses things WHATWG
// accepts, so a Go issuer could mint tokens the Node side rejects or the other way round.
//
// Deliberate difference, always in the stricter direction: a special-scheme host that is not ASCII after
// percent-decoding, or that has a label starting with "xn--", needs UTS #46 / Punycode processing, which is not
// implemented; such URLs are refused. (The request policy accepts only ASCII https hosts anyway.)
// TestTargetURLMatchesNode checks the rest against Node.
func validTargetURL(s string) bool {
	if valid, decided := fastValidTargetURL(s); decided {
		return valid
	}
	return parseTargetURL(s)
}

// parseTargetURL is the general path of validTargetURL: the failure-relevant states of the WHATWG basic URL parser.
func parseTargetURL(s string) bool {
	// Leading and trailing C0 controls and spaces are stripped; tabs and newlines anywhere are removed.
	for len(s) > 0 && s[0] <= 0x20 {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] <= 0x20 {
		s = s[:len(s)-1]
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\t' || c == '\n' || c == '\r' {
			s = strings.NewReplacer("\t", "", "\n", "", "\r", "").Replace(s) // rare: allocate only then
			break
		}
	}

	// Scheme: an ASCII letter, then letters, digits, '+', '-' or '.', then ':'. Without a base URL, anything else
	// is a failure.
	if s == "" || !isASCIIAlpha(s[0]) {
		return false
	}
	i := 1
	for i < len(s) && (isASCIIAlpha(s[i]) || isDigit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.') {
		i++
	}
	if i == len(s) || s[i] != ':' {
		return false
	}
	scheme, rest := s[:i], s[i+1:]

	switch {
	case strings.EqualFold(scheme, "file"):
		// file:[/\][/\]host… is the only form with a host; the rest is a path, which never fails.
		if len(rest) < 2 || !isSlash(rest[0], true) || !isSlash(rest[1], true) {
			return true
		}
		host := rest[2:]
		if j := strings.IndexAny(host, `/\?#`); j >= 0 {
			host = host[:j]
		}
		if host == "" || isWindowsDriveLetter(host) {
			return true
		}
		return validHost(host, true)
	case isSpecialScheme(scheme):
		// Any run of '/' and '\' after the scheme is skipped ("https:example.com" is valid).
		for len(rest) > 0 && isSlash(rest[0], true) {
			rest = rest[1:]
		}
		return validAuthority(rest, true)
	default:
		// A non-special URL has an authority only after "//"; otherwise it is a path or an opaque path.
		if !strings.HasPrefix(rest, "//") {
			return true
		}
		return validAuthority(rest[2:], false)
	}
}

// fastValidTargetURL decides the common case — http(s)://lower-or-upper-LDH-host[:port] followed by nothing or a
// path, query or fragment — in one short pass; it returns decided=false for anything else, which the full parser
// then handles. It only ever says "valid" for inputs the full parser also accepts: the rest of the URL after the
// authority cannot make a special URL fail, and a host whose last label starts with a digit (a possible IPv4
// address) or any label starting with "xn--" is left to the full parser.
func fastValidTargetURL(s string) (valid, decided bool) {
	var rest string
	switch {
	case strings.HasPrefix(s, "https://"):
		rest = s[len("https://"):]
	case strings.HasPrefix(s, "http://"):
		rest = s[len("http://"):]
	default:
		return false, false
	}
	j, lastLabel := 0, 0
	for ; j < len(rest); j++ {
		c := rest[j]
		switch {
		case 'a' <= c|0x20 && c|0x20 <= 'z' || '0' <= c && c <= '9' || c == '-':
			if j == lastLabel && c|0x20 == 'x' && len(rest)-j >= 4 && strings.EqualFold(rest[j+1:j+4], "n--") {
				return false, false
			}
			continue
		case c == '.':
			if j == lastLabel { // empty label: leave "a..b" and ".a" to the full parser
				return false, false
			}
			lastLabel = j + 1
			continue
		}
		break
	}
	if j == 0 || lastLabel == j || isDigit(rest[lastLabel]) {
		return false, false
	}
	switch rest = rest[j:]; {
	case rest == "" || rest[0] == '/' || rest[0] == '?' || rest[0] == '#':
		return true, true
	case rest[0] == ':':
		v, k := 0, 1
		for ; k < len(rest) && isDigit(rest[k]) && k <= 5; k++ {
			v = v*10 + int(rest[k]-'0')
		}
		if k > 1 && v <= 65535 && (k == len(rest) || rest[k] == '/' || rest[k] == '?' || rest[k] == '#') {
			return true, true
		}
	}
	return false, false
}

// validAuthority runs the authority, host and port states over rest (the input after the "//").
func validAuthority(rest string, special bool) bool {
	// One pass finds the end of the authority (the first '/', '?', '#', or '\\' when special) and the last '@'
	// in it: credentials end at the last '@'.
	end, at := len(rest), -1
	for j := 0; j < len(rest); j++ {
		c := rest[j]
		if c == '/' || c == '?' || c == '#' || (special && c == '\\') {
			end = j
			break
		}
		if c == '@' {
			at = j
		}
	}
	auth := rest[at+1 : end]
	if at >= 0 && auth == "" { // an '@' with nothing after it is a missing host
		return false
	}
	// The host ends at the first ':' outside brackets; the port follows.
	host, port, hasPort := auth, "", false
	inBrackets := false
	for j := 0; j < len(auth); j++ {
		switch auth[j] {
		case '[':
			inBrackets = true
		case ']':
			inBrackets = false
		case ':':
			if !inBrackets {
				host, port, hasPort = auth[:j], auth[j+1:], true
				j = len(auth)
			}
		}
	}
	if hasPort && host == "" {
		return false
	}
	if special && host == "" {
		return false
	}
	if !validHost(host, special) {
		return false
	}
	// Port: digits only (leading zeros allowed), at most 65535; empty is allowed.
	v := 0
	for j := 0; j < len(port); j++ {
		if !isDigit(port[j]) {
			return false
		}
		v = v*10 + int(port[j]-'0')
		if v > 65535 {
			return false
		}
	}
	return true
}

// validHost is the WHATWG host parser's success condition. special is false for an opaque (non-special) host.
func validHost(host string, special bool) bool {
	if strings.HasPrefix(host, "[") {
		return strings.HasSuffix(host, "]") && len(host) >= 2 && validIPv6(host[1:len(host)-1])
	}
	if !special {
		// An opaque host fails only on a forbidden host code point; it may be empty.
		for j := 0; j < len(host); j++ {
			if isForbiddenHostByte(host[j]) {
				return false
			}
		}
		return true
	}
	// Special host: percent-decode, then domain-to-ASCII (for ASCII input without "xn--" labels that is just
	// lower-casing, which changes nothing checked below), then refuse forbidden domain code points, then parse it
	// as an IPv4 address if it ends in a number.
	domain := host
	if strings.IndexByte(host, '%') >= 0 {
		d := make([]byte, 0, len(host))
		for j := 0; j < len(host); j++ {
			c := host[j]
			if c == '%' && j+2 < len(host) && isHex(host[j+1]) && isHex(host[j+2]) {
				c = unhex(host[j+1])<<4 | unhex(host[j+2])
				j += 2
			}
			d = append(d, c)
		}
		domain = string(d)
	}
	labelStart := 0
	for j := 0; j < len(domain); j++ {
		c := domain[j]
		if c >= 0x80 {
			return false // needs UTS #46 mapping: refused (see validTargetURL)
		}
		if c <= 0x1F || c == 0x7F || c == '%' || isForbiddenHostByte(c) {
			return false
		}
		if j == labelStart && (c == 'x' || c == 'X') && len(domain)-j >= 4 && strings.EqualFold(domain[j:j+4], "xn--") {
			return false // needs Punycode validation: refused (see validTargetURL)
		}
		if c == '.' {
			labelStart = j + 1
		}
	}
	if endsInANumber(domain) {
		return validIPv4(domain)
	}
	return true
}

// isForbiddenHostByte reports the WHATWG forbidden host code points (ASCII only).
func isForbiddenHostByte(c byte) bool {
	switch c {
	case 0x00, '\t', '\n', '\r', ' ', '#', '/', ':', '<', '>', '?', '@', '[', '\\', ']', '^', '|':
		return true
	}
	return false
}

// endsInANumber is the WHATWG "ends in a number checker": the last label (ignoring one trailing dot) is all
// digits or a 0x-prefixed hex number.
func endsInANumber(domain string) bool {
	if strings.HasSuffix(domain, ".") {
		if domain == "." {
			return false
		}
		domain = domain[:len(domain)-1]
	}
	last := domain[strings.LastIndexByte(domain, '.')+1:]
	if last == "" {
		return false
	}
	allDigits := true
	for j := 0; j < len(last); j++ {
		if !isDigit(last[j]) {
			allDigits = false
			break
		}
	}
	if allDigits {
		return true
	}
	_, ok := parseIPv4Number(last)
	return ok
}

// validIPv4 is the WHATWG IPv4 parser's success condition (decimal, octal and hex parts, 1 to 4 of them).
func validIPv4(domain string) bool {
	if strings.HasSuffix(domain, ".") && domain != "." {
		domain = domain[:len(domain)-1]
	}
	parts := strings.Count(domain, ".") + 1
	if parts > 4 {
		return false
	}
	n := 0
	for part := range strings.SplitSeq(domain, ".") {
		n++
		v, ok := parseIPv4Number(part)
		if !ok {
			return false
		}
		if n < parts && v > 255 {
			return false
		}
		if n == parts && v >= uint64(1)<<(8*(5-parts)) {
			return false
		}
	}
	return true
}

// parseIPv4Number parses one IPv4 part: 0x-prefixed hex, 0-prefixed octal or decimal. Values saturate above
// 2^32, which is already out of range for every caller.
func parseIPv4Number(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	radix := uint64(10)
	switch {
	case len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'):
		s, radix = s[2:], 16
	case len(s) >= 2 && s[0] == '0':
		s, radix = s[1:], 8
	}
	var v uint64
	for j := 0; j < len(s); j++ {
		c := s[j]
		var d uint64
		switch {
		case isDigit(c):
			d = uint64(c - '0')
		case radix == 16 && isHex(c):
			d = uint64(unhex(c))
		default:
			return 0, false
		}
		if d >= radix {
			return 0, false
		}
		if v = v*radix + d; v > 1<<33 {
			v = 1 << 33
		}
	}
	return v, true
}

// validIPv6 is the WHATWG IPv6 parser's success condition.
func validIPv6(s string) bool {
	pieceIndex, compress, p := 0, -1, 0
	at := func(i int) byte {
		if i < len(s) {
			return s[i]
		}
		return 0 // EOF; a NUL byte would fail every branch below just as EOF does
	}
	if at(p) == ':' {
		if at(p+1) != ':' {
			return false
		}
		p += 2
		pieceIndex++
		compress = pieceIndex
	}
	for p < len(s) {
		if pieceIndex == 8 {
			return false
		}
		if s[p] == ':' {
			if compress != -1 {
				return false
			}
			p++
			pieceIndex++
			compress = pieceIndex
			continue
		}
		length := 0
		for length < 4 && p < len(s) && isHex(s[p]) {
			p++
			length++
		}
		if p < len(s) && s[p] == '.' {
			if length == 0 {
				return false
			}
			p -= length
			if pieceIndex > 6 {
				return false
			}
			numbersSeen := 0
			for p < len(s) {
				if numbersSeen > 0 {
					if s[p] == '.' && numbersSeen < 4 {
						p++
					} else {
						return false
					}
				}
				if p >= len(s) || !isDigit(s[p]) {
					return false
				}
				piece := -1
				for p < len(s) && isDigit(s[p]) {
					d := int(s[p] - '0')
					switch {
					case piece == -1:
						piece = d
					case piece == 0:
						return false // leading zero
					default:
						piece = piece*10 + d
					}
					if piece > 255 {
						return false
					}
					p++
				}
				numbersSeen++
				if numbersSeen == 2 || numbersSeen == 4 {
					pieceIndex++
				}
			}
			if numbersSeen != 4 {
				return false
			}
			break
		} else if p < len(s) && s[p] == ':' {
			p++
			if p >= len(s) {
				return false
			}
		} else if p < len(s) {
			return false
		}
		pieceIndex++
	}
	return compress != -1 || pieceIndex == 8
}

func isSpecialScheme(s string) bool {
	for _, sp := range [...]string{"http", "https", "ws", "wss", "ftp"} {
		if strings.EqualFold(s, sp) {
			return true
		}
	}
	return false
}

func isWindowsDriveLetter(s string) bool {
	return len(s) == 2 && isASCIIAlpha(s[0]) && (s[1] == ':' || s[1] == '|')
}

func isSlash(c byte, special bool) bool { return c == '/' || (special && c == '\\') }
func isASCIIAlpha(c byte) bool          { return 'a' <= c|0x20 && c|0x20 <= 'z' }
func isDigit(c byte) bool               { return '0' <= c && c <= '9' }
func isHex(c byte) bool                 { return isDigit(c) || ('a' <= c|0x20 && c|0x20 <= 'f') }
func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return c | 0x20 - 'a' + 10
}
