package capability

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// vector is one entry of testdata/vectors/kka1.json, produced by the independent Node implementation.
type vector struct {
	Name   string   `json:"name"`
	Keys   []string `json:"keys"`
	NowMs  int64    `json:"nowMs"`
	Token  string   `json:"token"`
	Expect struct {
		OK     bool            `json:"ok"`
		Reason Reason          `json:"reason"`
		Claims json.RawMessage `json:"claims"`
	} `json:"expect"`
}

func repoFile(t testing.TB, rel string) string {
	t.Helper()
	return filepath.Join("..", "..", filepath.FromSlash(rel))
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	data, err := os.ReadFile(repoFile(t, "testdata/vectors/kka1.json"))
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	var f struct {
		Format  string   `json:"format"`
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("parsing vectors: %v", err)
	}
	if f.Format != "kka1" || len(f.Vectors) == 0 {
		t.Fatalf("vectors file has format %q and %d vectors", f.Format, len(f.Vectors))
	}
	return f.Vectors
}

func (v *vector) ring(t testing.TB) *KeyRing {
	t.Helper()
	var keys [][]byte
	for _, k := range v.Keys {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			t.Fatalf("vector %q: key: %v", v.Name, err)
		}
		keys = append(keys, b)
	}
	r, err := NewKeyRing(keys...)
	if err != nil {
		t.Fatalf("vector %q: NewKeyRing: %v", v.Name, err)
	}
	return r
}

// genericJSON decodes JSON into maps, slices and json.Number so that two documents compare by value.
func genericJSON(t testing.TB, data []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
	return v
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			c, err := Decode(v.ring(t), v.Token, time.UnixMilli(v.NowMs))
			if !v.Expect.OK {
				if err == nil {
					t.Fatalf("Decode accepted the token; want %s", v.Expect.Reason)
				}
				if got := ReasonOf(err); got != v.Expect.Reason {
					t.Fatalf("Decode failed with %s (%v); want %s", got, err, v.Expect.Reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v; want success", err)
			}
			got, want := genericJSON(t, c.Plaintext()), genericJSON(t, v.Expect.Claims)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("claims differ\n got %s\nwant %s", c.Plaintext(), v.Expect.Claims)
			}
			// The vectors were serialised by Node; Go's serialiser must reproduce the sealed plaintext exactly.
			if pt := openVector(t, &v); !bytes.Equal(pt, c.Plaintext()) {
				t.Fatalf("Go re-serialisation differs from the sealed plaintext\n got %s\nwant %s", c.Plaintext(), pt)
			}
		})
	}
}

// openVector returns the plaintext sealed in a vector's token (nil when it does not open), bypassing Decode.
func openVector(t testing.TB, v *vector) []byte {
	t.Helper()
	parts := bytes.Split([]byte(v.Token[min(len(v.Token), len(Prefix)):]), []byte(":"))
	if len(parts) != 3 {
		return nil
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.StdEncoding.DecodeString(string(p))
		if err != nil {
			return nil
		}
		raw[i] = b
	}
	if len(raw[0]) != ivSize {
		return nil
	}
	r := v.ring(t)
	for _, a := range r.aeads {
		if pt, err := a.Open(nil, raw[0], append(raw[2], raw[1]...), nil); err == nil {
			return pt
		}
	}
	return nil
}
