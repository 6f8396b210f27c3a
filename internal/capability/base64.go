package capability

// Canonical standard base64 (RFC 4648 §4, padded), decoded straight from a string.
//
// encoding/base64 is not used on the decode path for two reasons: its decoder silently skips '\r' and '\n'
// (so "AAAA\nAAAA" would decode, making tokens malleable), and it only takes []byte, which would cost a copy of
// the ~1 KB ciphertext on every decode. This decoder accepts exactly the strings that StdEncoding produces: the
// alphabet A–Z a–z 0–9 + /, a length that is a multiple of four, '=' only as the final one or two characters, and
// zero bits in the unused tail of the last quantum. Decode-then-encode therefore always gives back the input,
// which is what "canonical" means in DESIGN.md §3.

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// b64Dec maps a byte to its 6-bit value, or 0xFF for a byte outside the alphabet (including '=').
var b64Dec = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xFF
	}
	for i := 0; i < len(b64Alphabet); i++ {
		t[b64Alphabet[i]] = byte(i)
	}
	return t
}()

// b64DecodedLen returns the number of bytes s decodes to, or -1 when its length or padding cannot be canonical.
// It does not look at the other characters; b64Decode does.
func b64DecodedLen(s string) int {
	n := len(s)
	if n == 0 || n%4 != 0 {
		return -1
	}
	pad := 0
	if s[n-1] == '=' {
		pad = 1
		if s[n-2] == '=' {
			pad = 2
		}
	}
	return n/4*3 - pad
}

// b64Decode decodes canonical padded base64 s into dst, which must be exactly b64DecodedLen(s) bytes long. It
// reports false for any non-canonical input.
func b64Decode(dst []byte, s string) bool {
	n := len(s)
	if n == 0 || n%4 != 0 || len(dst) != b64DecodedLen(s) {
		return false
	}
	full := n - 4 // every quantum but the last has no padding
	j := 0
	for i := 0; i < full; i += 4 {
		a, b, c, d := b64Dec[s[i]], b64Dec[s[i+1]], b64Dec[s[i+2]], b64Dec[s[i+3]]
		if (a|b|c|d)&0xC0 != 0 { // 0xFF marks a byte outside the alphabet; valid values fit in 6 bits
			return false
		}
		v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
		dst[j], dst[j+1], dst[j+2] = byte(v>>16), byte(v>>8), byte(v)
		j += 3
	}
	a, b := b64Dec[s[full]], b64Dec[s[full+1]]
	if (a|b)&0xC0 != 0 {
		return false
	}
	switch {
	case s[full+2] == '=' && s[full+3] == '=':
		if b&0x0F != 0 { // the 4 unused bits must be zero
			return false
		}
		dst[j] = a<<2 | b>>4
	case s[full+3] == '=':
		c := b64Dec[s[full+2]]
		if c&0xC0 != 0 || c&0x03 != 0 { // the 2 unused bits must be zero
			return false
		}
		dst[j], dst[j+1] = a<<2|b>>4, b<<4|c>>2
	default:
		c, d := b64Dec[s[full+2]], b64Dec[s[full+3]]
		if (c|d)&0xC0 != 0 {
			return false
		}
		v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
		dst[j], dst[j+1], dst[j+2] = byte(v>>16), byte(v>>8), byte(v)
	}
	return true
}
