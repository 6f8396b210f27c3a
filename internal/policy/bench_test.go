package policy

import (
	"net/url"
	"testing"
	"time"
)

// benchMix is a realistic request mix: provider chat completions (with a query), backend calls, ingest.
var benchMix = []string{
	"https://api.kilo.ai/api/openrouter/v1/chat/completions?stream=true&provider=anthropic",
	"https://api.kilo.ai/api/openrouter/v1/chat/completions",
	"https://api.kilo.ai/api/users/me",
	"https://api.kilo.ai/api/organizations/org_1/models",
	"https://ingest.kilosessions.ai/api/session/kilo-session-1/ingest",
	"https://api.kilo.ai/api/profile/balance?include=usage",
}

func benchURLParse(b *testing.B) {
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if _, err := url.Parse(benchMix[n%len(benchMix)]); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// BenchmarkURLParseBaseline is url.Parse of the same URLs, for comparison.
func BenchmarkURLParseBaseline(b *testing.B) { benchURLParse(b) }

// BenchmarkClassify reports ns/op and, as x-url-parse, its cost relative to url.Parse of the same URLs in the same
// run (budget: ≤ 3). testing.Benchmark cannot be nested inside a running benchmark, so the baseline is measured
// inline, in chunks interleaved with the measured ones: on a shared, loaded machine both sides then see the same
// conditions and the ratio stays meaningful even when ns/op does not.
func BenchmarkClassify(b *testing.B) {
	pt := mustParseTargets(b, Targets{"https://api.kilo.ai", "https://api.kilo.ai", "https://ingest.kilosessions.ai"})
	p, err := New([]DenyRule{{Path: "/api/admin/**"}})
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]Request, len(benchMix))
	for i, u := range benchMix {
		reqs[i] = Request{URL: u, Method: "POST", KiloSessionID: "kilo-session-1", HasProviderToken: true}
		if d := p.Classify(reqs[i], pt); !d.Allowed {
			b.Fatalf("%s: %+v", u, d)
		}
	}
	const chunk = 4096
	var classify, baseline time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(chunk, b.N-done)
		t0 := time.Now()
		for i := 0; i < k; i++ {
			if !p.Classify(reqs[(done+i)%len(reqs)], pt).Allowed {
				b.Fatal("refused")
			}
		}
		t1 := time.Now()
		b.StopTimer()
		for i := 0; i < k; i++ {
			if _, err := url.Parse(benchMix[(done+i)%len(benchMix)]); err != nil {
				b.Fatal(err)
			}
		}
		t2 := time.Now()
		b.StartTimer()
		classify += t1.Sub(t0)
		baseline += t2.Sub(t1)
		done += k
	}
	if baseline > 0 {
		b.ReportMetric(float64(classify)/float64(baseline), "x-url-parse")
	}
}
