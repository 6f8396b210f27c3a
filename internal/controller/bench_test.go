package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

const (
	benchPods = 1000
	// benchWriters is how many creates the test client keeps in flight, for the baseline Secrets and for the
	// pods alike, so both sides of the ratio load the API server the same way.
	benchWriters = 8
)

// BenchmarkIssue1000Pods measures, on a real API server, the time from the first of 1,000 session pods being
// created until every one of them has its capability Secret, against the time the same client takes to create
// 1,000 plain Secrets in the same run (docs/DESIGN.md §9: budget 2×). The ratio is reported as x-baseline.
func BenchmarkIssue1000Pods(b *testing.B) {
	logf.SetLogger(logr.Discard())
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: envtestAssets(),
	}
	cfg, err := env.Start()
	if err != nil {
		b.Fatalf("starting envtest: %v", err)
	}
	defer func() { _ = env.Stop() }()
	// No client-side throttling, for the test client and the manager alike: the default 5 QPS would measure
	// the rate limiter, not the controller.
	cfg.QPS, cfg.Burst = -1, 0

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = kilov1alpha1.AddToScheme(scheme)
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	ring, err := capability.NewKeyRing(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptrTo(true)},
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := (&KiloSessionReconciler{KeyRing: StaticKeyRing{Ring: ring}}).SetupWithManager(m); err != nil {
		b.Fatal(err)
	}
	go func() { _ = m.Start(ctx) }()
	if !m.GetCache().WaitForCacheSync(ctx) {
		b.Fatal("manager cache did not sync")
	}

	// Warm the API server up (etcd, admission, the watch cache) so the first timed batch is not the one paying
	// for it; a cold baseline would flatter the ratio.
	warm := benchNamespace(b, ctx, c, "bench-warmup")
	createAll(b, ctx, c, func(j int) client.Object {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: warm, Name: fmt.Sprintf("warm-%d", j)}}
	})

	var baseline, issue, e2e time.Duration
	for i := 0; b.Loop(); i++ {
		// Baseline: the same client creates 1,000 plain Secrets.
		base := benchNamespace(b, ctx, c, fmt.Sprintf("bench-base-%d", i))
		start := time.Now()
		createAll(b, ctx, c, func(j int) client.Object {
			return &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: base, Name: fmt.Sprintf("plain-%d", j)},
				Data:       map[string][]byte{"token": []byte("x")},
			}
		})
		baseline += time.Since(start)

		// Issuance: 1,000 session pods exist (and the manager has seen them); the session appears, and the
		// clock runs until the last of its 1,000 capability Secrets exists. Both sides write 1,000 Secrets, so
		// the ratio is what the controller adds: listing, sealing, planning, status and events.
		caps := benchNamespace(b, ctx, c, fmt.Sprintf("bench-caps-%d", i))
		benchTokenSecret(b, ctx, c, caps)
		createAll(b, ctx, c, benchPod(caps))
		waitForCachedPods(b, ctx, m, caps)
		start = time.Now()
		wait := watchCapabilities(b, ctx, c, caps)
		if err := c.Create(ctx, newBenchSession(caps)); err != nil {
			b.Fatal(err)
		}
		wait()
		issue += time.Since(start)

		// End to end, for information: the session exists first and the pods arrive one after another, so the
		// API server serves the pod creates and the controller's Secret creates at once.
		e2eNS := benchNamespace(b, ctx, c, fmt.Sprintf("bench-e2e-%d", i))
		benchTokenSecret(b, ctx, c, e2eNS)
		if err := c.Create(ctx, newBenchSession(e2eNS)); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		wait = watchCapabilities(b, ctx, c, e2eNS)
		createAll(b, ctx, c, benchPod(e2eNS))
		wait()
		e2e += time.Since(start)
	}
	n := float64(b.N)
	b.ReportMetric(reconcileCount()/n, "reconciles")
	b.ReportMetric(float64(baseline.Milliseconds())/n, "baseline-ms")
	b.ReportMetric(float64(issue.Milliseconds())/n, "issue-ms")
	b.ReportMetric(float64(issue)/float64(baseline), "x-baseline")
	b.ReportMetric(float64(e2e.Milliseconds())/n, "e2e-ms")
	b.ReportMetric(float64(e2e)/float64(baseline), "e2e-x-baseline")
}

func benchTokenSecret(b *testing.B, ctx context.Context, c client.Client, ns string) {
	if err := c.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "user-token", Labels: map[string]string{kilov1alpha1.TokenSourceLabel: "true"}},
		Data:       map[string][]byte{"token": []byte("bench-token")},
	}); err != nil {
		b.Fatal(err)
	}
}

func benchPod(ns string) func(int) client.Object {
	return func(j int) client.Object {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("agent-%d", j),
				Labels: map[string]string{kilov1alpha1.SessionLabel: "bench"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "busybox:1.37"}}},
		}
	}
}

func waitForCachedPods(b *testing.B, ctx context.Context, m ctrl.Manager, ns string) {
	deadline := time.Now().Add(time.Minute)
	for {
		var pods corev1.PodList
		if err := m.GetCache().List(ctx, &pods, client.InNamespace(ns)); err != nil {
			b.Fatal(err)
		}
		if len(pods.Items) == benchPods {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the manager saw %d of %d pods", len(pods.Items), benchPods)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watchCapabilities starts watching ns for capability Secrets holding a token and returns a function that
// blocks until all benchPods of them have been seen.
func watchCapabilities(b *testing.B, ctx context.Context, c client.WithWatch, ns string) func() {
	w, err := c.Watch(ctx, &corev1.SecretList{}, client.InNamespace(ns), client.HasLabels{kilov1alpha1.PodUIDLabel})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		seen := map[string]bool{}
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*corev1.Secret); ok && len(s.Data[kilov1alpha1.CapabilitySecretKey]) > 0 {
				seen[s.Name] = true
			}
			if len(seen) == benchPods {
				return
			}
		}
	}()
	return func() {
		defer w.Stop()
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			b.Fatal("capability Secrets did not all appear within 5 minutes")
		}
	}
}

func newBenchSession(ns string) *kilov1alpha1.KiloSession {
	return &kilov1alpha1.KiloSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bench"},
		Spec: kilov1alpha1.KiloSessionSpec{
			UserID:             "user-1",
			KiloSessionID:      "ses_bench",
			UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: "user-token", Key: "token"},
			Targets:            defaultTargetsBench(),
		},
	}
}

func defaultTargetsBench() kilov1alpha1.Targets {
	return kilov1alpha1.Targets{
		BackendBaseURL:       "https://api.kilo.ai",
		ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
		SessionIngestBaseURL: "https://ingest.kilosessions.ai",
	}
}

func benchNamespace(b *testing.B, ctx context.Context, c client.Client, name string) string {
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		b.Fatal(err)
	}
	return name
}

// createAll creates benchPods objects with benchWriters creates in flight.
func createAll(b *testing.B, ctx context.Context, c client.Client, mk func(int) client.Object) {
	var wg sync.WaitGroup
	next := make(chan int)
	errs := make(chan error, benchWriters)
	for range benchWriters {
		wg.Go(func() {
			for j := range next {
				if err := c.Create(ctx, mk(j)); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for j := range benchPods {
		next <- j
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func ptrTo[T any](v T) *T { return &v }

// reconcileCount is how many times the KiloSession controller reconciled in this process.
func reconcileCount() float64 {
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}
