package webhook

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/controller"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

const operatorNS = "kilo-system"

// Certificate windows for the rotation story, in fake time. The fake clock starts servingValidity-10m before real
// time, so that every certificate the writer issues during the story is valid for the real API server (NotBefore
// is backdated by pki.Backdate = 1h): serving renewal at +2h, CA announce at +3h, promotion 10m later.
const (
	servingValidity = 3 * time.Hour
	servingRenew    = time.Hour
	caValidity      = 6 * time.Hour
	caRotateBefore  = 3 * time.Hour
	caPromoteAfter  = 10 * time.Minute
)

// suiteEnv is a real API server with the webhook registered from config/webhook, a manager serving it with
// self-managed certificates on a fake clock, and the KiloSession controller. The Ginkgo suite and the benchmark
// share it.
type suiteEnv struct {
	testEnv *envtest.Environment
	cfg     *rest.Config
	client  client.Client
	clock   *clocktesting.FakeClock
	certs   *pki.WebhookCertManager
	handler *Handler
	addr    string
	cancel  context.CancelFunc

	mu       sync.Mutex
	timings  []time.Duration
	warnings []string
}

func (e *suiteEnv) record(_ string, d time.Duration) {
	e.mu.Lock()
	e.timings = append(e.timings, d)
	e.mu.Unlock()
}

func (e *suiteEnv) takeTimings() []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.timings
	e.timings = nil
	return t
}

// HandleWarningHeaderWithContext collects admission warnings that reach the client.
func (e *suiteEnv) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	e.mu.Lock()
	e.warnings = append(e.warnings, text)
	e.mu.Unlock()
}

func (e *suiteEnv) takeWarnings() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.warnings
	e.warnings = nil
	return w
}

func repoPath(p ...string) string { return filepath.Join(append([]string{"..", ".."}, p...)...) }

func startSuiteEnv(quiet bool) (*suiteEnv, error) {
	if !quiet {
		logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = repoPath("bin", "k8s")
	}
	e := &suiteEnv{}
	e.testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{repoPath("config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		WebhookInstallOptions: envtest.WebhookInstallOptions{Paths: []string{repoPath("config", "webhook", "manifests.yaml")}},
	}
	cfg, err := e.testEnv.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	cfg.QPS, cfg.Burst = -1, 0
	e.cfg = cfg

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := kiloai.AddToScheme(scheme); err != nil {
		return nil, err
	}
	clientCfg := rest.CopyConfig(cfg)
	clientCfg.WarningHandlerWithContext = e
	if e.client, err = client.New(clientCfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	if err := e.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNS}}); err != nil {
		return nil, err
	}
	// The controller's key ring, present before it starts.
	if err := e.client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: kiloai.DefaultKeyRingSecret},
		Data:       map[string][]byte{kiloai.KeyRingSecretKey: []byte(base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n")},
	}); err != nil {
		return nil, err
	}

	e.clock = clocktesting.NewFakeClock(time.Now().Add(-servingValidity + 10*time.Minute))
	wio := &e.testEnv.WebhookInstallOptions
	e.certs, err = pki.NewWebhookCertManager(cfg, pki.WebhookCertOptions{
		Namespace:          operatorNS,
		WebhookConfigName:  pki.DefaultWebhookConfiguration,
		Hosts:              []string{wio.LocalServingHost, "localhost"},
		CA:                 pki.CAOptions{Validity: caValidity, RotateBefore: caRotateBefore, PromoteAfter: caPromoteAfter},
		ServingValidity:    servingValidity,
		ServingRenewBefore: servingRenew,
		Clock:              e.clock,
	})
	if err != nil {
		return nil, err
	}
	cacheOpts := controller.CacheOptions()
	controller.ConfigureTrustBundleCache(&cacheOpts, operatorNS)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: wio.LocalServingHost, Port: wio.LocalServingPort,
			// Only the certificate manager's GetCertificate: envtest's own certificate in CertDir is never used, so
			// admission working at all proves the self-managed Secret and caBundle are right.
			TLSOpts: []func(*tls.Config){e.certs.ConfigureTLS, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
		}),
	})
	if err != nil {
		return nil, err
	}
	if err := e.certs.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if e.handler, err = setup(mgr, Options{NoProxy: []string{"10.96.0.0/12"}}); err != nil {
		return nil, err
	}
	inner := e.handler.observe
	e.handler.observe = func(o string, d time.Duration) { inner(o, d); e.record(o, d) }

	keyRing, err := controller.NewKeyRingSource(mgr, operatorNS, kiloai.DefaultKeyRingSecret)
	if err != nil {
		return nil, err
	}
	allow, err := policy.ParseAllowList(policy.DefaultAllowList)
	if err != nil {
		return nil, err
	}
	if err := (&controller.KiloSessionReconciler{KeyRing: keyRing, AllowList: allow}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	go func() { _ = mgr.Start(ctx) }()
	e.addr = net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort))
	return e, nil
}

func (e *suiteEnv) stop() error {
	if e.cancel != nil {
		e.cancel()
	}
	return e.testEnv.Stop()
}

// servedSerial is the serial of the certificate the webhook presents right now.
func (e *suiteEnv) servedSerial() (*big.Int, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", e.addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reading the presented certificate
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// newSessionNamespace makes a namespace with a KiloSession, its token Secret and the CA bundle, ready for pods.
func (e *suiteEnv) newSessionNamespace(ctx context.Context, session string, suspend bool) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "inject-"}}
	if err := e.client.Create(ctx, ns); err != nil {
		return "", err
	}
	objs := []client.Object{
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "kilo-token", Labels: map[string]string{kiloai.TokenSourceLabel: "true"}},
			Data:       map[string][]byte{"token": []byte("user-token-canary")},
		},
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: kiloai.CABundleConfigMap},
			Data:       map[string]string{kiloai.CABundleKey: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"},
		},
	}
	if session != "" {
		ks := testSession(session, suspend)
		ks.Namespace = ns.Name
		objs = append(objs, ks)
	}
	for _, o := range objs {
		if err := e.client.Create(ctx, o); err != nil {
			return "", err
		}
	}
	return ns.Name, nil
}

func sessionPod(ns, session string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "agent-", Namespace: ns, Labels: map[string]string{kiloai.SessionLabel: session}},
		Spec: corev1.PodSpec{
			Containers:                   []corev1.Container{{Name: "agent", Image: "ghcr.io/kilo-org/agent:1.0"}},
			AutomountServiceAccountToken: new(false),
		},
	}
}

var (
	env *suiteEnv
	ctx context.Context
)

func TestWebhook(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Webhook Suite")
}

var _ = BeforeSuite(func() {
	ctx = context.Background()
	var err error
	env, err = startSuiteEnv(false)
	Expect(err).NotTo(HaveOccurred())
	// Ready when a session pod is admitted: the writer has created the Secret, the reader serves it and the API
	// server trusts it through the applied caBundle.
	ns, err := env.newSessionNamespace(ctx, "warmup", false)
	Expect(err).NotTo(HaveOccurred())
	Eventually(func() error { return env.client.Create(ctx, sessionPod(ns, "warmup")) }).WithTimeout(30 * time.Second).Should(Succeed())
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(env.stop()).To(Succeed())
	}
})
