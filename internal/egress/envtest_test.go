package egress

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// The envtest suite runs the egress's real cluster wiring — the restricted informer cache, the pod-IP caller
// index, the session target set, the key ring watcher and the informer-backed redeem State — against a real
// kube-apiserver, with the proxy and a recording TLS upstream on loopback. There is no kubelet: the spec writes a
// pod's status.podIP itself, which is exactly what the egress reads.

func TestEgressEnvtest(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set; run through make test (bin/k8s)")
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "Egress envtest Suite")
}

const (
	etOperatorNS = "kilo-system"
	etNS         = "sessions"
)

var (
	etEnv    *envtest.Environment
	etClient client.Client
	etCancel context.CancelFunc
	etUp     *upstream
	etProxy  *url.URL
	etCA     *testCA
	etKey    []byte
	etLogs   = &logSink{}
)

var _ = BeforeSuite(func() {
	etEnv = &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := etEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(kilov1alpha1.AddToScheme(scheme)).To(Succeed())
	etClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	var ctx context.Context
	ctx, etCancel = context.WithCancel(context.Background())

	for _, ns := range []string{etOperatorNS, etNS} {
		Expect(etClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	}
	etKey = make([]byte, 32)
	_, _ = rand.Read(etKey)
	Expect(etClient.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: etOperatorNS, Name: kilov1alpha1.DefaultKeyRingSecret},
		Data:       map[string][]byte{kilov1alpha1.KeyRingSecretKey: []byte(base64.StdEncoding.EncodeToString(etKey) + "\n")},
	})).To(Succeed())

	etUp = &upstream{sseStep: make(chan struct{}), block: make(chan struct{})}
	etUp.srv = httptest.NewTLSServer(http.HandlerFunc(etUp.handler))
	allow, err := policy.ParseAllowList([]string{etUp.srv.URL})
	Expect(err).NotTo(HaveOccurred())

	c, err := cache.New(cfg, CacheOptions(cache.Options{Scheme: scheme}, etOperatorNS, kilov1alpha1.DefaultKeyRingSecret))
	Expect(err).NotTo(HaveOccurred())
	log := etLogs.logger()
	state, err := redeem.NewInformerState(ctx, c, redeem.InformerStateOptions{Logger: log})
	Expect(err).NotTo(HaveOccurred())
	keys := redeem.NewKeyRingHolder(nil)
	_, err = NewKeyRingWatcher(ctx, c, types.NamespacedName{Namespace: etOperatorNS, Name: kilov1alpha1.DefaultKeyRingSecret}, keys, log)
	Expect(err).NotTo(HaveOccurred())
	dec, err := redeem.NewDecider(redeem.Config{Keys: keys, State: state, AllowList: allow, Logger: log})
	Expect(err).NotTo(HaveOccurred())
	callers, err := NewPodCallers(ctx, c)
	Expect(err).NotTo(HaveOccurred())
	targets, err := NewSessionTargets(ctx, c, allow.Allows, log)
	Expect(err).NotTo(HaveOccurred())
	go func() { _ = c.Start(ctx) }()
	Expect(c.WaitForCacheSync(ctx)).To(BeTrue())

	etCA = newTestCA(GinkgoT())
	roots := x509.NewCertPool()
	roots.AddCert(etUp.srv.Certificate())
	// Blind tunnels refused: a CONNECT is only answered if the KiloSession informer made the host a target.
	p, err := New(Config{UpstreamRoots: roots, Blind: BlindRefuse}, Deps{
		Redeemer: dec, Callers: callers, Targets: targets, CA: staticCA{etCA}, Log: log,
	})
	Expect(err).NotTo(HaveOccurred())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	go func() { _ = p.runOn(ctx, ln, 5*time.Second) }()
	etProxy = &url.URL{Scheme: "http", Host: ln.Addr().String()}
})

var _ = AfterSuite(func() {
	if etCancel != nil {
		etCancel()
	}
	if etUp != nil {
		etUp.srv.Close()
	}
	if etEnv != nil {
		Expect(etEnv.Stop()).To(Succeed())
	}
})

// etRequest sends GET path to the upstream through the proxy from src with the capability, and returns the status
// and the refusal reason (if any).
func etRequest(src netip.Addr, path, capability string) (int, string) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	tr := &http.Transport{Proxy: http.ProxyURL(etProxy), DialContext: d.DialContext, TLSClientConfig: &tls.Config{RootCAs: etCA.pool()}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", etUp.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+capability)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error() // a refused CONNECT surfaces here
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var v struct{ Reason string }
	_ = json.Unmarshal(body, &v)
	return resp.StatusCode, v.Reason
}

var _ = Describe("The egress on a real API server", Ordered, func() {
	var (
		ks  *kilov1alpha1.KiloSession
		pod *corev1.Pod
		tok string
		src = netip.MustParseAddr("127.0.0.5")
	)
	ctx := context.Background()

	BeforeAll(func() {
		ks = &kilov1alpha1.KiloSession{
			ObjectMeta: metav1.ObjectMeta{Namespace: etNS, Name: "ks"},
			Spec: kilov1alpha1.KiloSessionSpec{
				UserID: "user-1", KiloSessionID: "ses_env_1",
				UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: "tok", Key: "token"},
				Targets: kilov1alpha1.Targets{
					BackendBaseURL: etUp.srv.URL, ProviderBaseURL: etUp.srv.URL + "/api", SessionIngestBaseURL: etUp.srv.URL + "/ingest",
				},
			},
		}
		Expect(etClient.Create(ctx, ks)).To(Succeed())
		pod = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: etNS, Name: "agent", Labels: map[string]string{kilov1alpha1.SessionLabel: ks.Name},
				Finalizers: []string{"kilo.ai/test-hold"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent"}}},
		}
		Expect(etClient.Create(ctx, pod)).To(Succeed())

		ring, err := capability.NewKeyRing(etKey)
		Expect(err).NotTo(HaveOccurred())
		tok, _, err = capability.Issue(ring, capability.Subject{
			UserID: ks.Spec.UserID, CloudAgentSessionID: string(ks.UID), KiloSessionID: ks.Spec.KiloSessionID,
			OutboundContainerID: string(pod.UID), UserToken: capability.Secret(realToken),
			Targets: capability.Targets(ks.Spec.Targets),
		}, time.Now(), time.Hour)
		Expect(err).NotTo(HaveOccurred())
	})

	It("identifies the caller only once the pod informer reports the pod's IP", func() {
		Eventually(func() string { _, r := etRequest(src, "/api/x", tok); return r }).Should(Equal("unknown_caller"))
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: src.String(), PodIPs: []corev1.PodIP{{IP: src.String()}}}
		Expect(etClient.Status().Update(ctx, pod)).To(Succeed())
		Eventually(func() int { s, _ := etRequest(src, "/api/x", tok); return s }).Should(Equal(200))
		etUp.mu.Lock()
		seen := etUp.reqs[len(etUp.reqs)-1].Header.Get("Authorization")
		etUp.mu.Unlock()
		Expect(seen).To(Equal("Bearer " + realToken))
	})

	It("refuses the capability from another address, even a known one", func() {
		status, reason := etRequest(netip.MustParseAddr("127.0.0.6"), "/api/x", tok)
		Expect(status).To(Equal(403))
		Expect(reason).To(Equal("unknown_caller"))
	})

	It("reloads the key ring when its Secret changes", func() {
		setRing := func(keys ...[]byte) {
			var data []byte
			for _, k := range keys {
				data = append(data, base64.StdEncoding.EncodeToString(k)+"\n"...)
			}
			s := &corev1.Secret{}
			Expect(etClient.Get(ctx, types.NamespacedName{Namespace: etOperatorNS, Name: kilov1alpha1.DefaultKeyRingSecret}, s)).To(Succeed())
			s.Data[kilov1alpha1.KeyRingSecretKey] = data
			Expect(etClient.Update(ctx, s)).To(Succeed())
		}
		other := make([]byte, 32)
		_, _ = rand.Read(other)
		// Rotation: a new sealing key first, the old one kept to open live tokens — tok still redeems.
		setRing(other, etKey)
		Consistently(func() int { s, _ := etRequest(src, "/api/x", tok); return s }, time.Second, 100*time.Millisecond).Should(Equal(200))
		// The old key removed (say it leaked): tok stops working without a restart.
		setRing(other)
		Eventually(func() string { _, r := etRequest(src, "/api/x", tok); return r }, 5*time.Second, 20*time.Millisecond).
			Should(Equal("invalid_capability"))
		setRing(etKey)
		Eventually(func() int { s, _ := etRequest(src, "/api/x", tok); return s }, 5*time.Second, 20*time.Millisecond).Should(Equal(200))
	})

	It("revokes as soon as the pod is being deleted", func() {
		before := etUp.count()
		Expect(etClient.Delete(ctx, pod)).To(Succeed()) // the finalizer keeps it terminating, IP still reported
		Eventually(func() string { _, r := etRequest(src, "/api/x", tok); return r }, 5*time.Second, 20*time.Millisecond).
			Should(Equal("capability_revoked"))
		Expect(etUp.count()).To(Equal(before))
	})

	It("forgets the caller when the pod is gone", func() {
		Expect(etClient.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
		pod.Finalizers = nil
		Expect(etClient.Update(ctx, pod)).To(Succeed())
		Eventually(func() string { _, r := etRequest(src, "/api/x", tok); return r }, 5*time.Second, 20*time.Millisecond).
			Should(Equal("unknown_caller"))
	})

	It("stops intercepting a session's hosts when the session is deleted", func() {
		Expect(etClient.Delete(ctx, ks)).To(Succeed())
		// With blind tunnels refused, the CONNECT itself is now answered 403.
		Eventually(func() int { s, _ := etRequest(src, "/api/x", tok); return s }, 5*time.Second, 20*time.Millisecond).Should(Equal(0))
	})

	It("never logs a capability or a token", func() {
		logs := etLogs.String()
		Expect(logs).NotTo(BeEmpty())
		Expect(logs).NotTo(ContainSubstring(tok[5:40]))
		Expect(logs).NotTo(ContainSubstring(realToken))
		Expect(logs).NotTo(ContainSubstring("kka1."))
	})
})

var _ = Describe("The interceptor CA", func() {
	It("is created in its Secret, published as a public-only bundle, and signs interception leaves", func() {
		ctx := context.Background()
		m := &CAManager{
			Client:    etClient,
			Secret:    types.NamespacedName{Namespace: etOperatorNS, Name: kilov1alpha1.DefaultEgressCASecret},
			ConfigMap: types.NamespacedName{Namespace: etOperatorNS, Name: kilov1alpha1.CABundleConfigMap},
			Options:   pki.CAOptions{Validity: 48 * time.Hour, RotateBefore: 12 * time.Hour, PromoteAfter: time.Hour},
			Log:       etLogs.logger(),
		}
		Expect(m.Ready()).NotTo(Succeed())
		_, err := m.Sync(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(m.Ready()).To(Succeed())

		cm := &corev1.ConfigMap{}
		Expect(etClient.Get(ctx, m.ConfigMap, cm)).To(Succeed())
		bundle := cm.Data[kilov1alpha1.CABundleKey]
		Expect(bundle).To(ContainSubstring("BEGIN CERTIFICATE"))
		Expect(bundle).NotTo(ContainSubstring("PRIVATE KEY"))

		leaf, err := m.CA().IssueLeaf([]string{"api.kilo.ai"}, time.Hour, time.Now())
		Expect(err).NotTo(HaveOccurred())
		pool := x509.NewCertPool()
		Expect(pool.AppendCertsFromPEM([]byte(bundle))).To(BeTrue())
		_, err = leaf.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "api.kilo.ai"})
		Expect(err).NotTo(HaveOccurred())

		// A second replica syncing adopts the same CA instead of minting its own.
		m2 := &CAManager{Client: etClient, Secret: m.Secret, ConfigMap: m.ConfigMap, Options: m.Options, Log: etLogs.logger()}
		_, err = m2.Sync(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(m2.signer.Load().Cert.Equal(m.signer.Load().Cert)).To(BeTrue())
	})
})
