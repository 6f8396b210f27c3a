package redeem

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// The suite runs the informer-backed State and the redeem API against a real kube-apiserver and etcd. envtest's
// API server (controller-runtime v0.25.3) already runs with --service-account-issuer, --service-account-key-file
// and --service-account-signing-key-file from its generated certificate directory, so TokenRequest and
// TokenReview work as in a cluster; no extra flags are needed. There is no kubelet: pods stay Pending, and an
// unscheduled pod is deleted at once.

var (
	envCtx     context.Context
	envCancel  context.CancelFunc
	testEnv    *envtest.Environment
	k8sClient  client.Client
	clientset  *kubernetes.Clientset
	envState   *InformerState
	envRing    *capability.KeyRing
	envDecider *Decider
	envServer  *httptest.Server
)

func TestEnvtest(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(20 * time.Millisecond)
	RunSpecs(t, "Redeem envtest suite")
}

var _ = BeforeSuite(func() {
	envCtx, envCancel = context.WithCancel(context.Background())
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := testEnv.Start()
	Expect(err).NotTo(HaveOccurred())

	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(kilov1alpha1.AddToScheme(scheme)).To(Succeed())
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	clientset, err = kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())

	c, err := cache.New(cfg, CacheOptions(cache.Options{Scheme: scheme}))
	Expect(err).NotTo(HaveOccurred())
	envState, err = NewInformerState(envCtx, c, InformerStateOptions{
		DenyRules: []policy.DenyRule{{Path: "/api/operator-denied/**"}}, Logger: GinkgoLogr,
	})
	Expect(err).NotTo(HaveOccurred())
	go func() {
		defer GinkgoRecover()
		Expect(c.Start(envCtx)).To(Succeed())
	}()
	Eventually(envState.HasSynced).Should(BeTrue())

	envRing, err = capability.NewKeyRing(testKey(7))
	Expect(err).NotTo(HaveOccurred())
	envDecider, err = NewDecider(Config{Keys: NewKeyRingHolder(envRing), State: envState, Logger: GinkgoLogr})
	Expect(err).NotTo(HaveOccurred())
	auth, err := NewTokenReviewAuthenticator(TokenReviewConfig{
		Reviewer: clientset.AuthenticationV1().TokenReviews(),
		Allowed:  []string{"redeem-gw/gateway"},
		IsSessionPod: func(uid string) bool {
			_, ok := envState.Pod(uid)
			return ok
		},
	})
	Expect(err).NotTo(HaveOccurred())
	api, err := NewAPIHandler(APIConfig{Redeemer: envDecider, Authenticator: auth, Logger: GinkgoLogr})
	Expect(err).NotTo(HaveOccurred())
	envServer = httptest.NewServer(NewMux(MuxConfig{API: api, Ready: ReadyCheck(envState, envDecider)}))
})

var _ = AfterSuite(func() {
	if envServer != nil {
		envServer.Close()
	}
	if envCancel != nil {
		envCancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})

func createNamespace(name string) {
	err := k8sClient.Create(envCtx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
}

func createSession(ns, name string) *kilov1alpha1.KiloSession {
	ks := &kilov1alpha1.KiloSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: kilov1alpha1.KiloSessionSpec{
			UserID: "user-1", KiloSessionID: kiloSessID,
			UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: "kilo-token", Key: "token"},
			Targets: kilov1alpha1.Targets{
				BackendBaseURL:       "https://api.kilo.ai",
				ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
				SessionIngestBaseURL: "https://ingest.kilosessions.ai",
			},
		},
	}
	Expect(k8sClient.Create(envCtx, ks)).To(Succeed())
	return ks
}

func createPod(ns, name, session, serviceAccount string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			Containers:         []corev1.Container{{Name: "agent", Image: "example.invalid/agent:1"}},
		},
	}
	if session != "" {
		pod.Labels = map[string]string{kilov1alpha1.SessionLabel: session}
	}
	Expect(k8sClient.Create(envCtx, pod)).To(Succeed())
	return pod
}

func issueFor(pod *corev1.Pod, ks *kilov1alpha1.KiloSession) string {
	s := testSubject()
	s.OutboundContainerID = string(pod.UID)
	s.CloudAgentSessionID = string(ks.UID)
	tok, _, err := capability.Issue(envRing, s, time.Now(), time.Hour)
	Expect(err).NotTo(HaveOccurred())
	return tok
}

// decideReason redeems tok for the pod's UID against the backend and returns the refusal reason, "" if allowed.
func decideReason(tok string, podUID types.UID) func() Reason {
	return func() Reason {
		_, err := envDecider.Decide(envCtx, Request{Capability: tok, CallerPodUID: string(podUID), URL: backendURL, Method: "GET"})
		return reasonOf(err)
	}
}

var _ = Describe("Informer-backed revocation", func() {
	const ns = "revocation"

	BeforeEach(func() { createNamespace(ns) })

	It("revokes on suspend, pod delete, pod recreation, termination and session recreation", func() {
		ks := createSession(ns, "s1")
		pod := createPod(ns, "agent", "s1", "")
		tok := issueFor(pod, ks)
		Eventually(decideReason(tok, pod.UID)).Should(BeEmpty())

		By("suspending the session")
		patch := client.MergeFrom(ks.DeepCopy())
		ks.Spec.Suspend = true
		Expect(k8sClient.Patch(envCtx, ks, patch)).To(Succeed())
		Eventually(decideReason(tok, pod.UID)).Should(Equal(ReasonRevoked))
		patch = client.MergeFrom(ks.DeepCopy())
		ks.Spec.Suspend = false
		Expect(k8sClient.Patch(envCtx, ks, patch)).To(Succeed())
		Eventually(decideReason(tok, pod.UID)).Should(BeEmpty())

		By("adding a session deny rule")
		patch = client.MergeFrom(ks.DeepCopy())
		ks.Spec.BackendDenyRules = []kilov1alpha1.DenyRule{{Path: "/api/profile"}}
		Expect(k8sClient.Patch(envCtx, ks, patch)).To(Succeed())
		Eventually(decideReason(tok, pod.UID)).Should(Equal(ReasonUpstreamNotAllowed))

		By("deleting the pod and recreating it under the same name")
		Expect(k8sClient.Delete(envCtx, pod)).To(Succeed())
		Eventually(decideReason(tok, pod.UID)).Should(Equal(ReasonRevoked))
		pod2 := createPod(ns, "agent", "s1", "")
		Expect(pod2.UID).NotTo(Equal(pod.UID))
		tok2 := issueFor(pod2, ks)
		Eventually(func() Reason {
			_, err := envDecider.Decide(envCtx, Request{Capability: tok2, CallerPodUID: string(pod2.UID),
				URL: "https://api.kilo.ai/api/organizations/o/models", Method: "GET"})
			return reasonOf(err)
		}).Should(BeEmpty())
		Expect(decideReason(tok, pod.UID)()).To(Equal(ReasonRevoked), "the old pod's capability stays revoked")
		Expect(decideReason(tok, pod2.UID)()).To(Equal(ReasonContainerMismatch), "the new pod cannot use it either")

		By("the pod terminating")
		pod2.Status.Phase = corev1.PodFailed
		Expect(k8sClient.Status().Update(envCtx, pod2)).To(Succeed())
		Eventually(func() Reason {
			_, err := envDecider.Decide(envCtx, Request{Capability: tok2, CallerPodUID: string(pod2.UID),
				URL: "https://api.kilo.ai/api/organizations/o/models", Method: "GET"})
			return reasonOf(err)
		}).Should(Equal(ReasonRevoked))

		By("deleting the session and recreating it under the same name")
		pod3 := createPod(ns, "agent-3", "s1", "")
		tok3 := issueFor(pod3, ks)
		Eventually(decideReason(tok3, pod3.UID)).Should(Equal(ReasonUpstreamNotAllowed)) // the deny rule still holds
		Expect(k8sClient.Delete(envCtx, ks)).To(Succeed())
		Eventually(decideReason(tok3, pod3.UID)).Should(Equal(ReasonRevoked))
		ks2 := createSession(ns, "s1")
		Expect(ks2.UID).NotTo(Equal(ks.UID))
		Consistently(decideReason(tok3, pod3.UID), "300ms").Should(Equal(ReasonRevoked))
		Eventually(decideReason(issueFor(pod3, ks2), pod3.UID)).Should(BeEmpty())
	})
})

var _ = Describe("Redeem API with TokenReview", func() {
	const gwNS = "redeem-gw"
	var (
		pod *corev1.Pod
		tok string
	)

	BeforeEach(func() {
		createNamespace(gwNS)
		for _, sa := range []string{"gateway", "stranger"} {
			err := k8sClient.Create(envCtx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: gwNS, Name: sa}})
			Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
		}
		ks := createSession(gwNS, "sess-"+randSuffix())
		// The session pod runs as the allow-listed ServiceAccount on purpose: its own token must still not redeem.
		pod = createPod(gwNS, "session-pod-"+randSuffix(), ks.Name, "gateway")
		tok = issueFor(pod, ks)
		Eventually(decideReason(tok, pod.UID)).Should(BeEmpty())
	})

	saToken := func(sa string, audiences []string, boundPod *corev1.Pod) string {
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: audiences, ExpirationSeconds: ptr.To[int64](600),
		}}
		if boundPod != nil {
			tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: boundPod.Name, UID: boundPod.UID,
			}
		}
		out, err := clientset.CoreV1().ServiceAccounts(gwNS).CreateToken(envCtx, sa, tr, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		return out.Status.Token
	}

	redeem := func(bearer, body string) (int, map[string]any) {
		req, err := http.NewRequest(http.MethodPost, envServer.URL+RedeemPath, strings.NewReader(body))
		Expect(err).NotTo(HaveOccurred())
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Content-Type", "application/json")
		resp, err := envServer.Client().Do(req)
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		var out map[string]any
		Expect(json.NewDecoder(resp.Body).Decode(&out)).To(Succeed())
		return resp.StatusCode, out
	}
	body := func() string {
		b, _ := json.Marshal(map[string]string{"capability": tok, "outboundContainerId": string(pod.UID),
			"requestUrl": providerURL, "requestMethod": "POST"})
		return string(b)
	}

	It("lets an allow-listed ServiceAccount redeem", func() {
		status, out := redeem(saToken("gateway", []string{RedeemAudience}, nil), body())
		Expect(status).To(Equal(http.StatusOK))
		Expect(out).To(HaveKeyWithValue("authorization", "Bearer "+providerTokenCanary))
		Expect(out).To(HaveKeyWithValue("routeClass", "provider_model"))

		By("a token bound to a gateway pod (not a session pod)")
		gw := createPod(gwNS, "gateway-"+randSuffix(), "", "gateway")
		status, _ = redeem(saToken("gateway", []string{RedeemAudience}, gw), body())
		Expect(status).To(Equal(http.StatusOK))
	})

	It("refuses other ServiceAccounts, other audiences and session pods' own tokens", func() {
		status, out := redeem(saToken("stranger", []string{RedeemAudience}, nil), body())
		Expect(status).To(Equal(http.StatusUnauthorized))
		Expect(out).To(HaveKeyWithValue("reason", "unauthenticated"))

		status, _ = redeem(saToken("gateway", nil, nil), body()) // the API server's own audience
		Expect(status).To(Equal(http.StatusUnauthorized))

		status, _ = redeem(saToken("gateway", []string{RedeemAudience}, pod), body())
		Expect(status).To(Equal(http.StatusUnauthorized), "a token bound to a session pod must not redeem")

		status, _ = redeem("not-a-token", body())
		Expect(status).To(Equal(http.StatusUnauthorized))
	})

	It("answers malformed bodies from an authenticated caller with 400", func() {
		bearer := saToken("gateway", []string{RedeemAudience}, nil)
		for _, b := range []string{`{`, `{"capability":1}`, body() + "x", strings.TrimSuffix(body(), "}") + `,"x":"y"}`,
			fmt.Sprintf(`{"capability":%q}`, strings.Repeat("a", MaxRedeemBody))} {
			status, out := redeem(bearer, b)
			Expect(status).To(Equal(http.StatusBadRequest))
			Expect(out).To(HaveKeyWithValue("reason", "invalid_request"))
		}
	})

	It("is ready once informers synced and the key ring is loaded", func() {
		resp, err := envServer.Client().Get(envServer.URL + "/readyz")
		Expect(err).NotTo(HaveOccurred())
		resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
	})
})

var suffixes int

func randSuffix() string {
	suffixes++
	return fmt.Sprint(suffixes)
}
