package redeem

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// Budgets (docs/DESIGN.md §9): ≥ 100k redeems/s cold and ≥ 500k/s warm on one core. Run with
//
//	go test -run '^$' -bench 'Decide|RedeemAPI' -cpu 1 ./internal/redeem/
//
// Each benchmark reports redeems/s (or req/s) and a ratio against a baseline measured in the same run.

var (
	benchPoolOnce sync.Once
	benchPool     []string
	benchRing     *capability.KeyRing
)

// baselineNs times n calls of f after the benchmark's own timer stopped: the baseline of the same run. (Calling
// testing.Benchmark from inside a benchmark deadlocks on the testing package's benchmark lock.)
func baselineNs(n int, f func(i int)) float64 {
	start := time.Now()
	for i := 0; i < n; i++ {
		f(i)
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n)
}

func reportRate(b *testing.B, unit string) float64 {
	perSec := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(perSec, unit)
	return perSec
}

// BenchmarkDecideWarm redeems the same capability again and again: decode once, then cached claims, revocation
// lookups, classification and the allow-list. Baseline: classifying the same URL alone.
func BenchmarkDecideWarm(b *testing.B) {
	f := newFixture(b, logr.Discard())
	req := f.req(backendURL)
	ctx := context.Background()
	if _, err := f.decider.Decide(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.decider.Decide(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportRate(b, "redeems/s")
	pt, err := policy.ParseTargets(policy.Targets{BackendBaseURL: "https://api.kilo.ai",
		ProviderBaseURL: "https://api.kilo.ai/api/openrouter", SessionIngestBaseURL: "https://ingest.kilosessions.ai"})
	if err != nil {
		b.Fatal(err)
	}
	p, _ := policy.New(nil)
	r := policy.Request{URL: backendURL, Method: "GET", KiloSessionID: kiloSessID}
	classify := baselineNs(b.N, func(int) {
		if !p.Classify(r, pt).Allowed {
			b.Fatal("baseline refused")
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/classify, "x-classify")
}

func benchTokens(b *testing.B) ([]string, *capability.KeyRing) {
	benchPoolOnce.Do(func() {
		benchRing = mustRing(b, testKey(1))
		// 20,000 distinct capabilities cycled through a 16-entry cache: every iteration misses and decodes.
		benchPool = make([]string, 20000)
		for i := range benchPool {
			tok, _, err := capability.Issue(benchRing, testSubject(), epoch, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			benchPool[i] = tok
		}
	})
	return benchPool, benchRing
}

// BenchmarkDecideCold redeems a capability it has not seen (pre-issued outside the timer), so each iteration
// decrypts, validates and caches. Baseline: capability.Decode of the same tokens alone.
func BenchmarkDecideCold(b *testing.B) {
	pool, ring := benchTokens(b)
	state := NewMemoryState()
	state.SetPod(podUID, PodState{Namespace: "team", SessionName: "s1", Live: true})
	state.SetSession(sessionUID, SessionState{Namespace: "team", Name: "s1"})
	d, err := NewDecider(Config{Keys: NewKeyRingHolder(ring), State: state, CacheSize: 16,
		Now: func() time.Time { return epoch }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := Request{CallerPodUID: podUID, URL: backendURL, Method: "GET"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.Capability = pool[i%len(pool)]
		if _, err := d.Decide(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if hits := d.cache.len(); hits > 16 {
		b.Fatalf("cache grew to %d", hits)
	}
	reportRate(b, "redeems/s")
	decode := baselineNs(b.N, func(i int) {
		if _, err := capability.Decode(ring, pool[i%len(pool)], epoch); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/decode, "x-decode")
}

// BenchmarkRedeemAPI posts redemptions over loopback HTTP/1.1 with keep-alive (authenticated caller, cached
// review, warm claims), then the same number of requests to a trivial JSON handler on the same server. It reports
// both rates, the redeem p99, and the redeem rate as a fraction of the trivial one.
func BenchmarkRedeemAPI(b *testing.B) {
	f := newFixture(b, logr.Discard())
	auth, err := NewTokenReviewAuthenticator(TokenReviewConfig{Reviewer: &fakeReviewer{}, Allowed: []string{"gw/gateway"}})
	if err != nil {
		b.Fatal(err)
	}
	api, err := NewAPIHandler(APIConfig{Redeemer: f.decider, Authenticator: auth})
	if err != nil {
		b.Fatal(err)
	}
	mux := NewMux(MuxConfig{API: api, Gatherer: prometheus.NewRegistry()})
	mux.HandleFunc("/trivial", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"success":true}`))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	body := []byte(`{"capability":"` + f.token + `","outboundContainerId":"` + podUID +
		`","requestUrl":"` + backendURL + `","requestMethod":"GET"}`)

	run := func(path string, n int) (perSec float64, p99 time.Duration) {
		lat := make([]time.Duration, n)
		start := time.Now()
		for i := 0; i < n; i++ {
			t0 := time.Now()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+path, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+gatewayToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("%s answered %d", path, resp.StatusCode)
			}
			lat[i] = time.Since(t0)
		}
		elapsed := time.Since(start)
		slices.Sort(lat)
		return float64(n) / elapsed.Seconds(), lat[(n*99)/100]
	}
	run(RedeemPath, 10) // warm the connection, the review cache and the claims cache
	b.ResetTimer()
	rate, p99 := run(RedeemPath, b.N)
	b.StopTimer()
	baseRate, baseP99 := run("/trivial", b.N)
	b.ReportMetric(rate, "req/s")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(baseRate, "trivial-req/s")
	b.ReportMetric(float64(baseP99.Microseconds()), "trivial-p99-µs")
	b.ReportMetric(rate/baseRate, "x-trivial")
}
