package webhook

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAdmission50Concurrent creates waves of 50 session pods at once against envtest, through the registered
// webhook, and reports p50/p99 of the end-to-end create latency and of the handler's own time (decode to
// response). The baseline, measured in the same run and environment, is a wave of 50 pods without the session
// label (the API server skips the webhook for them): x-baseline-p50 is how much slower a session pod's create is.
// Budget (docs/DESIGN.md §9): handler p99 ≤ 10 ms.
func BenchmarkAdmission50Concurrent(b *testing.B) {
	const concurrency = 50
	e := env
	if e == nil {
		var err error
		if e, err = startSuiteEnv(true); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = e.stop() }()
	}
	ctx := context.Background()
	ns, err := e.newSessionNamespace(ctx, "demo", false)
	if err != nil {
		b.Fatal(err)
	}
	wave := func(labelled bool) ([]time.Duration, error) {
		lat := make([]time.Duration, concurrency)
		errs := make(chan error, concurrency)
		var wg sync.WaitGroup
		for i := range concurrency {
			wg.Go(func() {
				pod := sessionPod(ns, "demo")
				if !labelled {
					pod.Labels = map[string]string{"app": "baseline"}
				}
				start := time.Now()
				if err := e.client.Create(ctx, pod); err != nil {
					errs <- err
				}
				lat[i] = time.Since(start)
			})
		}
		wg.Wait()
		close(errs)
		return lat, <-errs
	}
	// Warm the caches, the connections and the webhook's TLS sessions.
	for _, labelled := range []bool{true, false} {
		if _, err := wave(labelled); err != nil {
			b.Fatal(err)
		}
	}
	e.takeTimings()

	var withHook, without []time.Duration
	b.ResetTimer()
	for b.Loop() {
		lat, err := wave(true)
		if err != nil {
			b.Fatal(err)
		}
		withHook = append(withHook, lat...)
		b.StopTimer()
		lat, err = wave(false)
		if err != nil {
			b.Fatal(err)
		}
		without = append(without, lat...)
		b.StartTimer()
	}
	handler := e.takeTimings()
	if len(handler) == 0 {
		b.Fatal("the handler recorded no admissions: the webhook was not called")
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(pct(withHook, 50)), "e2e-p50-ms")
	b.ReportMetric(ms(pct(withHook, 99)), "e2e-p99-ms")
	b.ReportMetric(ms(pct(handler, 50)), "handler-p50-ms")
	b.ReportMetric(ms(pct(handler, 99)), "handler-p99-ms")
	b.ReportMetric(ms(pct(without, 50)), "baseline-e2e-p50-ms")
	b.ReportMetric(float64(pct(withHook, 50))/float64(pct(without, 50)), "x-baseline-p50")
	b.ReportMetric(ms(pct(handler, 99))/10, "x-budget-handler-p99")
	if testing.Verbose() {
		fmt.Printf("admissions=%d pods=%d\n", len(handler), len(withHook))
	}
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}
