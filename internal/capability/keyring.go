package capability

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
)

// maxKeyRingBytes bounds ParseKeyRing's input: a ring is a handful of 45-byte lines, and a Secret is at most 1 MiB.
const maxKeyRingBytes = 1 << 20

// KeyRing holds the AES-256-GCM keys: the first seals new tokens, every key is tried to open one, so a key can be
// rotated in (add it second, then move it first) without invalidating live tokens. The ready cipher.AEAD of each
// key is built once here, not per call. A KeyRing is immutable and safe for concurrent use.
//
// The raw key bytes are not kept (the AEADs hold their expanded form), and every way of printing a ring shows only
// the number of keys and the sealing key's fingerprint.
type KeyRing struct {
	aeads        []cipher.AEAD
	fingerprints []string
}

// ParseKeyRing reads a key file: one standard base64 (padded) 32-byte key per line; surrounding whitespace is
// ignored, as are blank lines and lines starting with '#'. The same bytes may come from a Secret's data. A
// malformed ring is an *Error with ReasonConfiguration whose Detail names the line, never its content.
func ParseKeyRing(data []byte) (*KeyRing, error) {
	if len(data) > maxKeyRingBytes {
		return nil, configuration("key ring is larger than 1 MiB")
	}
	var keys [][]byte
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	lineNo := 0
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		lineNo++
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		text := string(line)
		n := b64DecodedLen(text)
		key := make([]byte, max(n, 0))
		if n < 0 || !b64Decode(key, text) {
			return nil, configuration("line " + strconv.Itoa(lineNo) + ": key is not standard padded base64")
		}
		keys = append(keys, key)
		if n != KeySize {
			return nil, configuration(fmt.Sprintf("line %d: key is %d bytes, want %d", lineNo, n, KeySize))
		}
	}
	if len(keys) == 0 {
		return nil, configuration("key ring holds no keys")
	}
	return NewKeyRing(keys...)
}

// NewKeyRing builds a ring from raw 32-byte keys, the sealing key first. The caller may clear keys afterwards.
func NewKeyRing(keys ...[]byte) (*KeyRing, error) {
	if len(keys) == 0 {
		return nil, configuration("key ring holds no keys")
	}
	r := &KeyRing{}
	for i, k := range keys {
		if len(k) != KeySize {
			return nil, configuration(fmt.Sprintf("key %d is %d bytes, want %d", i+1, len(k), KeySize))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, configuration(fmt.Sprintf("key %d: creating AES cipher: %v", i+1, err))
		}
		// The original service uses a 16-byte nonce; GCM hashes a non-96-bit nonce through GHASH to derive J0.
		aead, err := cipher.NewGCMWithNonceSize(block, ivSize)
		if err != nil {
			return nil, configuration(fmt.Sprintf("key %d: creating GCM: %v", i+1, err))
		}
		sum := sha256.Sum256(k)
		r.aeads = append(r.aeads, aead)
		r.fingerprints = append(r.fingerprints, hex.EncodeToString(sum[:8]))
	}
	return r, nil
}

// Fingerprint identifies the sealing key without revealing it: the first 8 bytes of its SHA-256, in hex. It is
// stable, so a controller can record which key sealed a token and re-issue when the ring's first key changes.
func (r *KeyRing) Fingerprint() string {
	if r == nil || len(r.fingerprints) == 0 {
		return ""
	}
	return r.fingerprints[0]
}

// Fingerprints returns the fingerprint of every key in ring order.
func (r *KeyRing) Fingerprints() []string {
	if r == nil {
		return nil
	}
	return append([]string(nil), r.fingerprints...)
}

// Len returns the number of keys in the ring.
func (r *KeyRing) Len() int {
	if r == nil {
		return 0
	}
	return len(r.aeads)
}

// String describes the ring without key material.
func (r *KeyRing) String() string {
	return "capability.KeyRing{keys:" + strconv.Itoa(r.Len()) + " sealing:" + r.Fingerprint() + "}"
}

// Format implements fmt.Formatter so that %#v and %+v cannot print the AEADs' expanded keys.
func (r *KeyRing) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(r.String())) }

// LogValue describes the ring for slog without key material.
func (r *KeyRing) LogValue() slog.Value {
	return slog.GroupValue(slog.Int("keys", r.Len()), slog.String("sealing", r.Fingerprint()))
}

// MarshalJSON describes the ring without key material.
func (r *KeyRing) MarshalJSON() ([]byte, error) {
	return []byte(`{"keys":` + strconv.Itoa(r.Len()) + `,"sealing":"` + r.Fingerprint() + `"}`), nil
}
