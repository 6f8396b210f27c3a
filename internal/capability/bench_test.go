package capability

import (
	"bytes"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchSubject is a realistic subject: Kubernetes UIDs, a ULID session id and a JWT-sized user token (~190
// characters), giving a token of about 900 characters.
func benchSubject() Subject {
	jwt := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + // header, claims and an HS256 signature
		"eyJraWxvVXNlcklkIjoib2F1dGgvZ29vZ2xlOjEwNDk1NjczNDgyNzE2NTQzMjEwOSIsInZlcnNpb24iOjMsImlhdCI6MTc4MDgzMzYwMH0." +
		"Qm9vdHN0cmFwcGVkU2lnbmF0dXJlRm9yQmVuY2htYXJrcw"
	return Subject{
		UserID:              "oauth/google:104956734827165432109",
		CloudAgentSessionID: "3f9c2a71-5b8e-4d06-a1c4-7e2b9d0f6a38",
		KiloSessionID:       "ses_01HZYX8K3M4N5P6Q7R8S9T0V1W",
		OutboundContainerID: "6c1f0d0e-8f2a-4d3b-9a51-0e7f1b2c3d4e",
		UserToken:           Secret(jwt),
		Targets: Targets{
			BackendBaseURL:       "https://api.kilo.ai",
			ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
			SessionIngestBaseURL: "https://ingest.kilosessions.ai",
		},
	}
}

var benchNow = time.UnixMilli(1780833600000)

type benchFixture struct {
	ring   *KeyRing
	token  string
	iv     []byte
	sealed []byte // ciphertext || tag, as GCM Open takes it
}

var benchOnce = sync.OnceValue(func() *benchFixture {
	r, err := NewKeyRing(bytes.Repeat([]byte{0x42}, KeySize))
	if err != nil {
		panic(err)
	}
	tok, _, err := Issue(r, benchSubject(), benchNow, 0)
	if err != nil {
		panic(err)
	}
	parts := strings.Split(tok[len(Prefix):], ":")
	iv := make([]byte, b64DecodedLen(parts[0]))
	tag := make([]byte, b64DecodedLen(parts[1]))
	ct := make([]byte, b64DecodedLen(parts[2]))
	if !b64Decode(iv, parts[0]) || !b64Decode(tag, parts[1]) || !b64Decode(ct, parts[2]) {
		panic("fixture token is not canonical")
	}
	return &benchFixture{ring: r, token: tok, iv: iv, sealed: append(ct, tag...)}
})

// BenchmarkGCMOpenBaseline is the cost of the cryptography alone: AES-256-GCM open of the benchmark token's
// ciphertext into a reused buffer. docs/DESIGN.md §9 budgets Decode at ≤ 10× this.
func BenchmarkGCMOpenBaseline(b *testing.B) {
	f := benchOnce()
	dst := make([]byte, 0, len(f.sealed))
	b.SetBytes(int64(len(f.sealed)))
	b.ReportAllocs()
	for b.Loop() {
		f.gcmOpen(dst)
	}
}

// gcmOpen runs the baseline operation once.
func (f *benchFixture) gcmOpen(dst []byte) {
	if _, err := f.ring.aeads[0].Open(dst[:0], f.iv, f.sealed, nil); err != nil {
		panic(err)
	}
}

// ratioToGCMOpen measures op against the GCM open baseline in the same run. The machine these run on is shared,
// so the two are interleaved in short rounds (the same load hits both) and the median of the per-round ratios is
// taken (a burst of load in one round does not move it). testing.Benchmark cannot be used here: it waits on the
// lock the running benchmark holds.
func ratioToGCMOpen(op func()) float64 {
	const rounds, perRound = 101, 64
	f := benchOnce()
	dst := make([]byte, 0, len(f.sealed))
	ratios := make([]float64, 0, rounds)
	for range rounds {
		t0 := time.Now()
		for range perRound {
			op()
		}
		t1 := time.Now()
		for range perRound {
			f.gcmOpen(dst)
		}
		t2 := time.Now()
		ratios = append(ratios, float64(t1.Sub(t0))/float64(t2.Sub(t1)))
	}
	slices.Sort(ratios)
	return ratios[rounds/2]
}

// BenchmarkDecode decodes the ~900-character benchmark token cold (no cache). Besides ns/op it reports
// "x-gcm-open": Decode's cost as a multiple of BenchmarkGCMOpenBaseline, measured interleaved in the same run
// (docs/DESIGN.md §9 budget: 10).
func BenchmarkDecode(b *testing.B) {
	f := benchOnce()
	b.SetBytes(int64(len(f.token)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(f.ring, f.token, benchNow); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(ratioToGCMOpen(func() { _, _ = Decode(f.ring, f.token, benchNow) }), "x-gcm-open")
}

// BenchmarkIssue seals the benchmark subject, crypto/rand nonce included, and reports its cost against the GCM
// open baseline for scale (there is no budget for issuing).
func BenchmarkIssue(b *testing.B) {
	f := benchOnce()
	s := benchSubject()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Issue(f.ring, s, benchNow, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(ratioToGCMOpen(func() { _, _, _ = Issue(f.ring, s, benchNow, 0) }), "x-gcm-open")
}

func TestBenchmarkTokenIsRealistic(t *testing.T) {
	f := benchOnce()
	if n := len(f.token); n < 850 || n > 1000 {
		t.Fatalf("benchmark token is %d characters; the benchmarks promise about 900", n)
	}
}
