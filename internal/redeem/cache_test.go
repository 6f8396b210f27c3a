package redeem

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

func TestKeyRingRotation(t *testing.T) {
	f := newFixture(t, logr.Discard())
	ctx := context.Background()
	if _, err := f.decider.Decide(ctx, f.req(backendURL)); err != nil {
		t.Fatalf("first redemption refused: %v", err)
	}

	// A ring that no longer holds the sealing key (it leaked and was removed): the cached claims must go.
	f.keys.Store(mustRing(t, testKey(2)))
	if _, err := f.decider.Decide(ctx, f.req(backendURL)); reasonOf(err) != ReasonInvalid {
		t.Fatalf("after removing the key: reason %q, want %q", reasonOf(err), ReasonInvalid)
	}

	// Rotation proper: a new sealing key first, the old one kept to open live tokens.
	f.keys.Store(mustRing(t, testKey(2), testKey(1)))
	if _, err := f.decider.Decide(ctx, f.req(backendURL)); err != nil {
		t.Fatalf("after rotation with the old key kept: %v", err)
	}
	if n := f.decider.cache.len(); n != 1 {
		t.Fatalf("cache holds %d entries after rotation, want the one re-decoded", n)
	}
}

func TestExpiryWhileCached(t *testing.T) {
	f := newFixture(t, logr.Discard())
	f.token = f.issue(testSubject(), 10*time.Minute)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := f.decider.Decide(ctx, f.req(backendURL)); err != nil {
			t.Fatalf("redemption %d refused: %v", i, err)
		}
	}
	if hits := testutil.ToFloat64(f.decider.metrics.cacheHit); hits != 2 {
		t.Fatalf("cache hits = %v, want 2 (decode once, redeem many)", hits)
	}
	f.clock.Step(10*time.Minute - time.Millisecond)
	if _, err := f.decider.Decide(ctx, f.req(backendURL)); err != nil {
		t.Fatalf("one millisecond before expiry: %v", err)
	}
	f.clock.Step(time.Millisecond) // a token is expired at exactly expiresAt
	if _, err := f.decider.Decide(ctx, f.req(backendURL)); reasonOf(err) != ReasonExpired {
		t.Fatalf("at expiry: reason %q, want %q", reasonOf(err), ReasonExpired)
	}
	if n := f.decider.cache.len(); n != 0 {
		t.Fatalf("expired claims still cached (%d entries)", n)
	}
}

func TestMetricsCountEveryOutcome(t *testing.T) {
	f := newFixture(t, logr.Discard())
	ctx := context.Background()
	_, _ = f.decider.Decide(ctx, f.req(backendURL))
	_, _ = f.decider.Decide(ctx, f.req(backendURL))
	_, _ = f.decider.Decide(ctx, f.req("https://evil.example/"))
	r := f.req(backendURL)
	r.CallerPodUID = "x"
	_, _ = f.decider.Decide(ctx, r)

	want := `
# HELP kilo_redeem_total Capability redemptions by outcome, route class (allowed) and reason (refused).
# TYPE kilo_redeem_total counter
`
	var lines []string
	for _, rc := range routeClasses {
		n := 0
		if rc == "backend_api" {
			n = 2
		}
		lines = append(lines, fmt.Sprintf(`kilo_redeem_total{outcome="allowed",reason="",route_class=%q} %d`, rc, n))
	}
	lines = append(lines, `kilo_redeem_total{outcome="allowed",reason="",route_class="other"} 0`)
	for _, r := range refusalReasons {
		n := 0
		if r == ReasonUpstreamNotAllowed || r == ReasonContainerMismatch {
			n = 1
		}
		lines = append(lines, fmt.Sprintf(`kilo_redeem_total{outcome="refused",reason=%q,route_class=""} %d`, r, n))
	}
	lines = append(lines, `kilo_redeem_total{outcome="refused",reason="other",route_class=""} 0`)
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want+strings.Join(lines, "\n")+"\n"),
		"kilo_redeem_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(f.reg, "kilo_redeem_duration_seconds"); n != 2 {
		t.Fatalf("latency series = %d, want allowed and refused", n)
	}
}

func TestBoundedCacheStaysBoundedAndKeepsHotEntries(t *testing.T) {
	c := newBoundedCache[int](64) // 4 per shard
	c.put("hot", 1)
	for i := 0; i < 10000; i++ {
		c.put(fmt.Sprint("k", i), i)
		if _, ok := c.get("hot"); !ok {
			t.Fatalf("a constantly used entry was evicted after %d inserts", i)
		}
	}
	if n := c.len(); n > 64 {
		t.Fatalf("cache grew to %d entries, bound is 64", n)
	}
	c.remove("hot")
	if _, ok := c.get("hot"); ok {
		t.Fatal("removed entry still present")
	}
	c.clear()
	if n := c.len(); n != 0 {
		t.Fatalf("cleared cache holds %d", n)
	}
}

func TestBoundedCacheConcurrentUse(t *testing.T) {
	c := newBoundedCache[string](128)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := fmt.Sprint(i % 300)
				if v, ok := c.get(k); ok && v != k {
					t.Errorf("key %q maps to %q", k, v)
					return
				}
				c.put(k, k)
				if i%97 == 0 {
					c.remove(k)
				}
				if i%991 == 0 {
					c.clear()
				}
			}
		}()
	}
	wg.Wait()
	if n := c.len(); n > 128 {
		t.Fatalf("cache grew to %d", n)
	}
}

func TestDeciderIsSafeForConcurrentUse(t *testing.T) {
	f := newFixture(t, logr.Discard())
	other := f.issue(testSubject(), time.Hour)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				r := f.req(backendURL)
				if i%2 == 1 {
					r.Capability = other
				}
				if i%50 == 0 {
					f.keys.Store(mustRing(t, testKey(1)))
				}
				if res, err := f.decider.Decide(context.Background(), r); err != nil ||
					res.Authorization != capability.Secret("Bearer "+userTokenCanary) {
					t.Errorf("redemption %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
