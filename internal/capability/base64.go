package capability

import "encoding/binary"

// Canonical standard base64 (RFC 4648 §4, padded), decoded straight from a string.
//
// encoding/base64 is not used on the decode path for two reasons: its decoder silently skips '\r' and '\n'
// (so "AAAA\nAAAA" would decode, making tokens malleable), and it only takes []byte, which would cost a copy of
// the ~1 KB ciphertext on every decode. This decoder accepts exactly the strings that StdEncoding produces: the
// alphabet A–Z a–z 0–9 + /, a length that is a multiple of four, '=' only as the final one or two characters, and
// zero bits in the unused tail of the last quantum. Decode-then-encode therefore always gives back the input,
// which is what "canonical" means in docs/DESIGN.md §3.

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

// b64Shifted[k][c] is c's 6-bit value already shifted to its place in a 24-bit quantum (k = position in the
// quantum), or b64Bad for a byte outside the alphabet.
var b64Shifted = func() (t [4][256]uint32) {
	for k := range t {
		for c, v := range b64Dec {
			if v == 0xFF {
				t[k][c] = b64Bad
			} else {
				t[k][c] = uint32(v) << (18 - 6*k)
			}
		}
	}
	return t
}()

const b64Bad = 0xFFFFFFFF // any set bit above bit 23 marks an invalid character

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
	j, i := 0, 0
	// Two quanta (8 characters → 6 bytes) per step, with pre-shifted tables so a quantum is four loads and three
	// ORs, and one 8-byte store whose last two bytes the next step overwrites. The loop stops while at least one
	// more full quantum and the final one remain, so that store never runs past dst.
	for ; i+12 <= full; i += 8 {
		q := s[i : i+8]
		v1 := b64Shifted[0][q[0]] | b64Shifted[1][q[1]] | b64Shifted[2][q[2]] | b64Shifted[3][q[3]]
		v2 := b64Shifted[0][q[4]] | b64Shifted[1][q[5]] | b64Shifted[2][q[6]] | b64Shifted[3][q[7]]
		if (v1|v2)&^0xFFFFFF != 0 {
			return false
		}
		binary.BigEndian.PutUint64(dst[j:j+8], uint64(v1)<<40|uint64(v2)<<16)
		j += 6
	}
	for ; i < full; i += 4 {
		q, d := s[i:i+4], dst[j:j+3]
		v := b64Shifted[0][q[0]] | b64Shifted[1][q[1]] | b64Shifted[2][q[2]] | b64Shifted[3][q[3]]
		if v&^0xFFFFFF != 0 {
			return false
		}
		d[0], d[1], d[2] = byte(v>>16), byte(v>>8), byte(v)
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
