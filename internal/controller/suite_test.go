package controller

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
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

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// The suite runs one real manager — restricted cache, key ring source, the KiloSession reconciler — against a
// real kube-apiserver and etcd. Each spec works in its own namespace. There is no kubelet: pods are created
// directly and stay Pending, which is all the controller looks at.

const operatorNamespace = "kilo-system"

var (
	cfg       *rest.Config
	k8sClient client.Client
	testEnv   *envtest.Environment
	mgr       ctrl.Manager
	testClock *clocktesting.FakeClock
	keyRing   *KeyRingSource
	ctx       context.Context
	cancel    context.CancelFunc

	// logs captures every line the manager logs, for the canary spec.
	logs = &lockedBuffer{}

	// suiteSetup lets other specs in this package (the trust-bundle reconciler's) register with the shared
	// manager before it starts: append from an init function.
	suiteSetup []func(ctrl.Manager) error

	// initialKey is the sealing key the suite's key ring Secret starts with.
	initialKey = bytes.Repeat([]byte{0x42}, 32)

	// allowList is the upstream allow-list the suite's reconciler runs with.
	allowList *policy.AllowList
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestController(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Controller Suite")
}

func envtestAssets() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	return filepath.Join("..", "..", "bin", "k8s")
}

func testScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(s)).To(Succeed())
	Expect(kilov1alpha1.AddToScheme(s)).To(Succeed())
	return s
}

var _ = BeforeSuite(func() {
	// Debug level: the canary spec must see every line the controller could write.
	logf.SetLogger(zap.New(zap.WriteTo(io.MultiWriter(logs, GinkgoWriter)), zap.UseDevMode(true), zap.Level(zapcore.DebugLevel)))
	ctx, cancel = context.WithCancel(context.Background())

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: envtestAssets(),
	}
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling against a private API server

	scheme := testScheme()
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	// The key ring Secret exists before the manager starts (the "already there" path of EnsureKeyRing).
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}})).To(Succeed())
	Expect(k8sClient.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: kilov1alpha1.DefaultKeyRingSecret},
		Data:       map[string][]byte{kilov1alpha1.KeyRingSecretKey: []byte(base64.StdEncoding.EncodeToString(initialKey) + "\n")},
	})).To(Succeed())

	testClock = clocktesting.NewFakeClock(time.Now().Truncate(time.Second))

	mgr, err = ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	Expect(err).NotTo(HaveOccurred())

	keyRing, err = NewKeyRingSource(mgr, operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
	Expect(err).NotTo(HaveOccurred())

	allowList, err = policy.ParseAllowList(append([]string{"https://backend.example.test"}, policy.DefaultAllowList...))
	Expect(err).NotTo(HaveOccurred())
	Expect((&KiloSessionReconciler{
		KeyRing:   keyRing,
		AllowList: allowList,
		Clock:     testClock,
	}).SetupWithManager(mgr)).To(Succeed())
	for _, setup := range suiteSetup {
		Expect(setup(mgr)).To(Succeed())
	}

	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	Eventually(func() error { _, err := keyRing.KeyRing(); return err }).WithTimeout(20 * time.Second).Should(Succeed())
})

// directReconciler is a second reconciler over the same API server and key ring, for specs that need to see what
// one pass returns (its requeue and its error), which the manager's controller does not expose. It reads capability
// Secrets straight from the API server instead of a private cache; only metadata matters to the plan.
func directReconciler() *KiloSessionReconciler {
	return &KiloSessionReconciler{
		Client:           mgr.GetClient(),
		APIReader:        mgr.GetAPIReader(),
		Scheme:           mgr.GetScheme(),
		Recorder:         mgr.GetEventRecorder("direct-test"),
		KeyRing:          keyRing,
		AllowList:        allowList,
		Clock:            testClock,
		WriteConcurrency: 4,
		capabilities:     k8sClient,
	}
}

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})
