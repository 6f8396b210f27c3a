package controller

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

// Helpers. Everything observable is read straight from the API server (k8sClient is uncached), the way a user
// with kubectl would see it.

func newNamespace() string {
	name := "ks-" + rand.String(6)
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	return name
}

func createTokenSecret(ns, name, value string, optedIn bool) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{"token": []byte(value)},
	}
	if optedIn {
		s.Labels = map[string]string{kilov1alpha1.TokenSourceLabel: "true"}
	}
	Expect(k8sClient.Create(ctx, s)).To(Succeed())
	return s
}

func defaultTargets() kilov1alpha1.Targets {
	return kilov1alpha1.Targets{
		BackendBaseURL:       "https://api.kilo.ai",
		ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
		SessionIngestBaseURL: "https://ingest.kilosessions.ai",
	}
}

func newSession(ns, name, tokenSecret string, mutate ...func(*kilov1alpha1.KiloSession)) *kilov1alpha1.KiloSession {
	s := &kilov1alpha1.KiloSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: kilov1alpha1.KiloSessionSpec{
			UserID:             "user-1",
			KiloSessionID:      "ses_" + name,
			UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: tokenSecret, Key: "token"},
			Targets:            defaultTargets(),
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func createSession(ns, name, tokenSecret string, mutate ...func(*kilov1alpha1.KiloSession)) *kilov1alpha1.KiloSession {
	s := newSession(ns, name, tokenSecret, mutate...)
	Expect(k8sClient.Create(ctx, s)).To(Succeed())
	return s
}

func createPod(ns, name string, lbls map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: new(bool),
			Containers:                   []corev1.Container{{Name: "agent", Image: "busybox:1.37"}},
		},
	}
	Expect(k8sClient.Create(ctx, p)).To(Succeed())
	Expect(p.UID).NotTo(BeEmpty())
	return p
}

func sessionPod(ns, name, session string) *corev1.Pod {
	return createPod(ns, name, map[string]string{kilov1alpha1.SessionLabel: session})
}

func getSecret(ns, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	return s, k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s)
}

// capabilityOf waits for pod's capability Secret and returns it.
func capabilityOf(pod *corev1.Pod) *corev1.Secret {
	var s *corev1.Secret
	Eventually(func() error {
		var err error
		s, err = getSecret(pod.Namespace, DerivedCapabilitySecretName(pod.Name))
		return err
	}).Should(Succeed())
	return s
}

func currentRing() *capability.KeyRing {
	s, err := getSecret(operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
	Expect(err).NotTo(HaveOccurred())
	r, err := capability.ParseKeyRing(s.Data[kilov1alpha1.KeyRingSecretKey])
	Expect(err).NotTo(HaveOccurred())
	return r
}

func decode(s *corev1.Secret) *capability.Claims {
	c, err := capability.Decode(currentRing(), string(s.Data[kilov1alpha1.CapabilitySecretKey]), testClock.Now())
	Expect(err).NotTo(HaveOccurred())
	return c
}

func getSession(ns, name string) *kilov1alpha1.KiloSession {
	s := &kilov1alpha1.KiloSession{}
	Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s)).To(Succeed())
	return s
}

// readyReason is "<status>/<reason>" of a condition, for readable Eventually assertions.
func conditionOf(ns, name, condType string) string {
	c := meta.FindStatusCondition(getSession(ns, name).Status.Conditions, condType)
	if c == nil {
		return ""
	}
	return string(c.Status) + "/" + c.Reason
}

func eventReasons(ns string) []string {
	var list eventsv1.EventList
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Type+"/"+e.Reason)
	}
	return out
}

func capabilitySecretsIn(ns string) []corev1.Secret {
	var list corev1.SecretList
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns), client.HasLabels{kilov1alpha1.PodUIDLabel})).To(Succeed())
	return list.Items
}

func requestReconcile(ns, name string) {
	s := getSession(ns, name)
	patch := client.MergeFrom(s.DeepCopy())
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[kilov1alpha1.ReconcileRequestedAnnotation] = rand.String(8)
	Expect(k8sClient.Patch(ctx, s, patch)).To(Succeed())
}

func updateSession(ns, name string, mutate func(*kilov1alpha1.KiloSession)) {
	Eventually(func() error {
		s := getSession(ns, name)
		mutate(s)
		return k8sClient.Update(ctx, s)
	}).Should(Succeed())
}

var _ = Describe("KiloSession controller", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("issues one pod-bound capability Secret per session pod, with claims from the session", func() {
		createTokenSecret(ns, "user-token", "user-token-value-1", true)
		session := createSession(ns, "s1", "user-token")
		podA := sessionPod(ns, "agent-a", "s1")
		podB := sessionPod(ns, "agent-b", "s1")
		createPod(ns, "bystander", map[string]string{"app": "other"})

		for _, pod := range []*corev1.Pod{podA, podB} {
			sec := capabilityOf(pod)
			Expect(string(sec.Type)).To(Equal(kilov1alpha1.CapabilitySecretType))
			Expect(sec.Labels).To(HaveKeyWithValue(kilov1alpha1.SessionLabel, "s1"))
			Expect(sec.Labels).To(HaveKeyWithValue(kilov1alpha1.PodUIDLabel, string(pod.UID)))
			Expect(sec.OwnerReferences).To(ConsistOf(HaveField("UID", pod.UID)))
			Expect(sec.Annotations).To(HaveKey(kilov1alpha1.IssuedAtAnnotation))
			Expect(sec.Annotations).To(HaveKey(kilov1alpha1.ExpiresAtAnnotation))
			Expect(sec.Annotations).To(HaveKeyWithValue(kilov1alpha1.KeyFingerprintAnnotation, currentRing().Fingerprint()))

			c := decode(sec)
			Expect(c.OutboundContainerID).To(Equal(string(pod.UID)), "the capability is bound to its pod")
			Expect(c.CloudAgentSessionID).To(Equal(string(session.UID)))
			Expect(c.KiloSessionID).To(Equal("ses_s1"))
			Expect(c.UserID).To(Equal("user-1"))
			Expect(c.UserToken.Reveal()).To(Equal("user-token-value-1"))
			Expect(c.ProviderToken).To(BeEmpty())
			Expect(c.Targets.ProviderBaseURL).To(Equal("https://api.kilo.ai/api/openrouter"))
			Expect(c.ExpiresTime().Sub(c.IssuedTime())).To(Equal(4*time.Hour), "default lifetime")
		}
		Expect(capabilitySecretsIn(ns)).To(HaveLen(2), "no capability for a pod outside the selector")

		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("True/" + kilov1alpha1.ReasonIssued))
		s := getSession(ns, "s1")
		Expect(s.Status.SelectedPods).To(BeEquivalentTo(2))
		Expect(s.Status.IssuedPods).To(BeEquivalentTo(2))
		Expect(s.Status.ObservedGeneration).To(Equal(s.Generation))
		Expect(s.Status.NextRenewal).NotTo(BeNil())
		Expect(s.Status.Pods).To(HaveLen(2))
		Expect(s.Finalizers).To(ContainElement(kilov1alpha1.CapabilitiesFinalizer))
		Expect(conditionOf(ns, "s1", kilov1alpha1.TokenSourceReadyCondition)).To(Equal("True/Valid"))
		Expect(conditionOf(ns, "s1", kilov1alpha1.TargetsValidCondition)).To(Equal("True/Valid"))
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Normal/" + eventIssued))

		// The expiry gauge counts down to the earliest expiry of any session's capabilities.
		Expect(testutil.CollectAndCount(earliestExpiry)).To(Equal(1))
		Expect(testutil.ToFloat64(earliestExpiry)).To(And(BeNumerically(">", 0), BeNumerically("<=", (4*time.Hour).Seconds())))
	})

	It("uses the Secret name the webhook recorded on the pod", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		pod := createPod(ns, "agent", map[string]string{kilov1alpha1.SessionLabel: "s1"})
		patch := client.MergeFrom(pod.DeepCopy())
		pod.Annotations = map[string]string{kilov1alpha1.CapabilitySecretAnnotation: "chosen-at-admission"}
		Expect(k8sClient.Patch(ctx, pod, patch)).To(Succeed())
		Eventually(func() error { _, err := getSecret(ns, "chosen-at-admission"); return err }).Should(Succeed())
		Eventually(func() error { _, err := getSecret(ns, DerivedCapabilitySecretName("agent")); return err }).
			Should(Satisfy(apierrors.IsNotFound), "the derived-name Secret is revoked once the pod names another")
	})

	It("renews before expiry, and leaves an unchanged capability alone", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.CapabilityLifetime = &metav1.Duration{Duration: time.Hour}
			s.Spec.RenewBefore = &metav1.Duration{Duration: 15 * time.Minute}
		})
		pod := sessionPod(ns, "agent", "s1")
		first := capabilityOf(pod)
		c := decode(first)
		Expect(c.ExpiresTime().Sub(c.IssuedTime())).To(Equal(time.Hour))
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
		next := getSession(ns, "s1").Status.NextRenewal.Time
		Expect(next).To(BeTemporally("<=", c.ExpiresTime().Add(-15*time.Minute)))
		Expect(next).To(BeTemporally(">=", c.ExpiresTime().Add(-15*time.Minute-90*time.Second)), "jitter is at most a tenth of renewBefore")

		// Not due: a forced reconcile must not rewrite the Secret.
		requestReconcile(ns, "s1")
		Consistently(func() string { s, _ := getSecret(ns, first.Name); return s.ResourceVersion }).
			WithTimeout(time.Second).Should(Equal(first.ResourceVersion))

		renewed0 := testutil.ToFloat64(capabilitiesIssued.WithLabelValues(causeRenewal))
		testClock.Step(46 * time.Minute) // past expiry - renewBefore - max jitter
		requestReconcile(ns, "s1")
		Eventually(func() string {
			s, _ := getSecret(ns, first.Name)
			return s.Annotations[kilov1alpha1.IssuedAtAnnotation]
		}).ShouldNot(Equal(first.Annotations[kilov1alpha1.IssuedAtAnnotation]))
		renewed := capabilityOf(pod)
		Expect(decode(renewed).IssuedTime()).To(BeTemporally("==", testClock.Now().Truncate(time.Millisecond)))
		Expect(testutil.ToFloat64(capabilitiesIssued.WithLabelValues(causeRenewal)) - renewed0).To(BeNumerically(">=", 1))
	})

	It("re-issues at once when the token Secret's value or the targets change", func() {
		tok := createTokenSecret(ns, "user-token", "old-value", true)
		createSession(ns, "s1", "user-token")
		pod := sessionPod(ns, "agent", "s1")
		Expect(decode(capabilityOf(pod)).UserToken.Reveal()).To(Equal("old-value"))

		tok.Data["token"] = []byte("rotated-value")
		Expect(k8sClient.Update(ctx, tok)).To(Succeed())
		Eventually(func() string { return decode(capabilityOf(pod)).UserToken.Reveal() }).Should(Equal("rotated-value"))

		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) {
			s.Spec.Targets.ProviderBaseURL = "https://api.kilo.ai/api/gateway"
		})
		Eventually(func() string { return decode(capabilityOf(pod)).Targets.ProviderBaseURL }).
			Should(Equal("https://api.kilo.ai/api/gateway"))
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Normal/" + eventReissued))
	})

	It("revokes the capability of a pod that stops matching or finishes", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		keep := sessionPod(ns, "keep", "s1")
		moved := sessionPod(ns, "moved", "s1")
		done := sessionPod(ns, "done", "s1")
		keepSecret := capabilityOf(keep)
		capabilityOf(moved)
		capabilityOf(done)

		patch := client.MergeFrom(moved.DeepCopy())
		moved.Labels[kilov1alpha1.SessionLabel] = "another-session"
		Expect(k8sClient.Patch(ctx, moved, patch)).To(Succeed())
		done.Status.Phase = corev1.PodSucceeded
		Expect(k8sClient.Status().Update(ctx, done)).To(Succeed())

		for _, name := range []string{"moved", "done"} {
			Eventually(func() error { _, err := getSecret(ns, DerivedCapabilitySecretName(name)); return err }).
				Should(Satisfy(apierrors.IsNotFound))
		}
		s, err := getSecret(ns, keepSecret.Name)
		Expect(err).NotTo(HaveOccurred())
		Expect(s.ResourceVersion).To(Equal(keepSecret.ResourceVersion), "the remaining pod's capability is untouched")
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Normal/" + eventRevoked))
	})

	It("revokes everything on suspend and issues again on resume", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		capabilityOf(sessionPod(ns, "a", "s1"))
		capabilityOf(sessionPod(ns, "b", "s1"))

		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) { s.Spec.Suspend = true })
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(BeEmpty())
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonSuspended))
		Expect(getSession(ns, "s1").Status.IssuedPods).To(BeZero())

		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) { s.Spec.Suspend = false })
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(HaveLen(2))
	})

	It("revokes everything when the session is deleted, then lets it go", func() {
		createTokenSecret(ns, "user-token", "v", true)
		s := createSession(ns, "s1", "user-token")
		capabilityOf(sessionPod(ns, "a", "s1"))
		Expect(k8sClient.Delete(ctx, s)).To(Succeed())
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(BeEmpty())
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &kilov1alpha1.KiloSession{})
		}).Should(Satisfy(apierrors.IsNotFound))
	})

	It("reports a missing token Secret, and issues as soon as it appears", func() {
		createSession(ns, "s1", "later")
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.TokenSourceReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonTokenSecretMissing))
		Expect(conditionOf(ns, "s1", kilov1alpha1.ReadyCondition)).To(Equal("False/" + kilov1alpha1.ReasonTokenSecretMissing))
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Warning/" + kilov1alpha1.ReasonTokenSecretMissing))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())

		createTokenSecret(ns, "later", "v", true)
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(HaveLen(1))
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
	})

	It("reports a token Secret without the key", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) { s.Spec.UserTokenSecretRef.Key = "nope" })
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonTokenSecretKeyMissing))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())
	})

	It("neither caches nor issues from a Secret that is not opted in", func() {
		const canary = "unlabelled-canary-7Qz3"
		createTokenSecret(ns, "plain", canary, false)
		createSession(ns, "s1", "plain")
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonTokenSecretNotAllowed))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())
		// The manager's cache does not hold it: nothing in the manager could read its value.
		err := mgr.GetCache().Get(ctx, types.NamespacedName{Namespace: ns, Name: "plain"}, &corev1.Secret{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "got %v", err)
		Expect(logs.String()).NotTo(ContainSubstring(canary))

		// The owner opts in: issued without a restart.
		sec, err := getSecret(ns, "plain")
		Expect(err).NotTo(HaveOccurred())
		sec.Labels = map[string]string{kilov1alpha1.TokenSourceLabel: "true"}
		Expect(k8sClient.Update(ctx, sec)).To(Succeed())
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(HaveLen(1))
	})

	It("refuses targets outside the upstream allow-list", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.Targets.BackendBaseURL = "https://attacker.example.com"
		})
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.TargetsValidCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonInvalidTargets))
		Expect(conditionOf(ns, "s1", kilov1alpha1.ReadyCondition)).To(Equal("False/" + kilov1alpha1.ReasonInvalidTargets))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())

		// An origin the administrator did allow works.
		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) { s.Spec.Targets.BackendBaseURL = "https://backend.example.test" })
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(HaveLen(1))
	})

	It("reports an invalid backend deny rule", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.BackendDenyRules = []kilov1alpha1.DenyRule{{Path: "/a/%3A"}}
		})
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.TargetsValidCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonInvalidDenyRule))
	})

	It("never overwrites a foreign Secret under a capability Secret's name", func() {
		createTokenSecret(ns, "user-token", "v", true)
		foreign := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: DerivedCapabilitySecretName("agent")},
			Data:       map[string][]byte{"mine": []byte("do not touch")},
		}
		Expect(k8sClient.Create(ctx, foreign)).To(Succeed())
		createSession(ns, "s1", "user-token")
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonSecretConflict))
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Warning/" + kilov1alpha1.ReasonSecretConflict))
		got, err := getSecret(ns, foreign.Name)
		Expect(err).NotTo(HaveOccurred())
		Expect(got.Data).To(Equal(foreign.Data))
		Expect(got.ResourceVersion).To(Equal(foreign.ResourceVersion))
	})

	It("reports failing writes for many pods in a bounded condition and a Warning event", func() {
		createTokenSecret(ns, "user-token", "v", true)
		// A ResourceQuota that is already full: every capability Secret create is forbidden by the API server.
		// envtest runs no quota controller, so the status is set by hand, as the controller would.
		quota := &corev1.ResourceQuota{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "secrets"},
			Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"count/secrets": resource.MustParse("1")}},
		}
		Expect(k8sClient.Create(ctx, quota)).To(Succeed())
		quota.Status = corev1.ResourceQuotaStatus{Hard: quota.Spec.Hard, Used: corev1.ResourceList{"count/secrets": resource.MustParse("1")}}
		Expect(k8sClient.Status().Update(ctx, quota)).To(Succeed())

		// Pods first, so that the session's first pass, the one that emits the Warning, sees every failure.
		const pods = 12
		for i := range pods {
			sessionPod(ns, fmt.Sprintf("agent-%02d", i), "s1")
		}
		createSession(ns, "s1", "user-token")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonIssuanceFailed))
		Eventually(func() int32 { return getSession(ns, "s1").Status.SelectedPods }).Should(BeEquivalentTo(pods))
		ready := meta.FindStatusCondition(getSession(ns, "s1").Status.Conditions, kilov1alpha1.ReadyCondition)
		Expect(ready.Message).To(ContainSubstring("exceeded quota"))
		Expect(ready.Message).To(ContainSubstring("and %d more", pods-1), "one failure in full, the rest counted")
		// events.k8s.io refuses a note over 1 KiB, which a list of every failure would exceed: the user would
		// then see no event at all.
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Warning/" + kilov1alpha1.ReasonIssuanceFailed))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())
	})

	It("validates the spec in the API server with messages a user understands", func() {
		tooLong := newSession(ns, "s1", "t", func(s *kilov1alpha1.KiloSession) {
			s.Spec.CapabilityLifetime = &metav1.Duration{Duration: 5 * time.Hour}
		})
		err := k8sClient.Create(ctx, tooLong)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("capabilityLifetime must be between 10m and 4h"))

		inverted := newSession(ns, "s2", "t", func(s *kilov1alpha1.KiloSession) {
			s.Spec.CapabilityLifetime = &metav1.Duration{Duration: 30 * time.Minute}
			s.Spec.RenewBefore = &metav1.Duration{Duration: time.Hour}
		})
		err = k8sClient.Create(ctx, inverted)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("renewBefore must be shorter than capabilityLifetime"))

		plainHTTP := newSession(ns, "s3", "t", func(s *kilov1alpha1.KiloSession) {
			s.Spec.Targets.BackendBaseURL = "http://api.kilo.ai"
		})
		err = k8sClient.Create(ctx, plainHTTP)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("target URLs must use https"))

		// A session id the policy could never match in an ingest path (it would be percent-encoded into %2F or a
		// dot segment, both refused) is rejected up front instead of yielding a session that cannot ingest.
		for _, id := range []string{"a/b", "..", ".hidden", "a;b", "ses 1"} {
			badID := newSession(ns, "s5", "t", func(s *kilov1alpha1.KiloSession) { s.Spec.KiloSessionID = id })
			err = k8sClient.Create(ctx, badID)
			Expect(err).To(HaveOccurred(), "kiloSessionId %q", id)
			Expect(err.Error()).To(ContainSubstring("kiloSessionId may contain only"))
		}

		createSession(ns, "s4", "t")
		// Retried only past write conflicts with the controller (it adds its finalizer meanwhile).
		Eventually(func() error {
			s := getSession(ns, "s4")
			s.Spec.KiloSessionID = "ses_other"
			err := k8sClient.Update(ctx, s)
			if apierrors.IsConflict(err) {
				return nil
			}
			return err
		}).Should(MatchError(ContainSubstring("kiloSessionId is immutable")))
	})

	It("re-issues every capability with the new sealing key when the key ring rotates", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		pod := sessionPod(ns, "agent", "s1")
		before := capabilityOf(pod)
		oldFP := before.Annotations[kilov1alpha1.KeyFingerprintAnnotation]

		ringSecret, err := getSecret(operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
		Expect(err).NotTo(HaveOccurred())
		newKey := strings.Repeat("Q", 43) + "=" // 32 bytes of standard base64
		ringSecret.Data[kilov1alpha1.KeyRingSecretKey] = append([]byte(newKey+"\n"), ringSecret.Data[kilov1alpha1.KeyRingSecretKey]...)
		Expect(k8sClient.Update(ctx, ringSecret)).To(Succeed())
		newFP := currentRing().Fingerprint()
		Expect(newFP).NotTo(Equal(oldFP))

		Eventually(func() string { return capabilityOf(pod).Annotations[kilov1alpha1.KeyFingerprintAnnotation] }).Should(Equal(newFP))
		Expect(decode(capabilityOf(pod)).OutboundContainerID).To(Equal(string(pod.UID)))
	})

	It("pauses issuance and says why while the key ring cannot be loaded", func() {
		ringSecret, err := getSecret(operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
		Expect(err).NotTo(HaveOccurred())
		good := ringSecret.Data[kilov1alpha1.KeyRingSecretKey]
		ringSecret.Data[kilov1alpha1.KeyRingSecretKey] = []byte("c2hvcnQ=\n") // 5 bytes: not an AES-256 key
		Expect(k8sClient.Update(ctx, ringSecret)).To(Succeed())
		DeferCleanup(func() {
			s, err := getSecret(operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
			Expect(err).NotTo(HaveOccurred())
			s.Data[kilov1alpha1.KeyRingSecretKey] = good
			Expect(k8sClient.Update(ctx, s)).To(Succeed())
			Eventually(func() error { _, err := keyRing.KeyRing(); return err }).Should(Succeed())
		})
		Eventually(func() error { _, err := keyRing.KeyRing(); return err }).Should(HaveOccurred())

		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonKeyRingUnavailable))
		Expect(capabilitySecretsIn(ns)).To(BeEmpty())

		// Repaired: the ring's change event re-enqueues the session, no restart or session edit needed.
		s, err := getSecret(operatorNamespace, kilov1alpha1.DefaultKeyRingSecret)
		Expect(err).NotTo(HaveOccurred())
		s.Data[kilov1alpha1.KeyRingSecretKey] = good
		Expect(k8sClient.Update(ctx, s)).To(Succeed())
		Eventually(func() []corev1.Secret { return capabilitySecretsIn(ns) }).Should(HaveLen(1))
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
	})

	It("keeps tokens and capabilities out of logs, events and status", func() {
		userCanary := "kilo-user-canary-" + rand.String(12)
		providerCanary := "kilo-provider-canary-" + rand.String(12)
		createTokenSecret(ns, "user-token", userCanary, true)
		createTokenSecret(ns, "provider-token", providerCanary, true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.ProviderTokenSecretRef = &kilov1alpha1.SecretKeyRef{Name: "provider-token", Key: "token"}
		})
		pod := sessionPod(ns, "agent", "s1")
		sec := capabilityOf(pod)
		Expect(decode(sec).ProviderToken.Reveal()).To(Equal(providerCanary))
		token := string(sec.Data[kilov1alpha1.CapabilitySecretKey])

		// Drive a failure path too: the token Secret loses a key, then comes back.
		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) { s.Spec.ProviderTokenSecretRef.Key = "missing" })
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).
			Should(Equal("False/" + kilov1alpha1.ReasonTokenSecretKeyMissing))
		Eventually(func() []string { return eventReasons(ns) }).Should(ContainElement("Warning/" + kilov1alpha1.ReasonTokenSecretKeyMissing))

		var events eventsv1.EventList
		Expect(k8sClient.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
		var coreEvents corev1.EventList
		Expect(k8sClient.List(ctx, &coreEvents, client.InNamespace(ns))).To(Succeed())
		eventsJSON, err := json.Marshal([]any{events, coreEvents})
		Expect(err).NotTo(HaveOccurred())
		statusJSON, err := json.Marshal(getSession(ns, "s1"))
		Expect(err).NotTo(HaveOccurred())
		meta, err := json.Marshal(capabilityOf(pod).ObjectMeta)
		Expect(err).NotTo(HaveOccurred())

		for what, text := range map[string]string{
			"logs": logs.String(), "events": string(eventsJSON), "KiloSession": string(statusJSON), "capability Secret metadata": string(meta),
		} {
			for _, secret := range []string{userCanary, providerCanary, token, token[5:30]} {
				Expect(text).NotTo(ContainSubstring(secret), fmt.Sprintf("%s leak a secret", what))
			}
		}
		Expect(logs.String()).To(ContainSubstring("Issued capabilities"), "the capture works")
	})
})

var _ = Describe("Key ring source", func() {
	It("generates the key ring Secret on first start and loads it", func() {
		ns := newNamespace()
		src, err := NewKeyRingSource(mgr, ns, "generated-keys")
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { _, err := src.KeyRing(); return err }).Should(Succeed())
		sec, err := getSecret(ns, "generated-keys")
		Expect(err).NotTo(HaveOccurred())
		ring, err := capability.ParseKeyRing(sec.Data[kilov1alpha1.KeyRingSecretKey])
		Expect(err).NotTo(HaveOccurred())
		got, _ := src.KeyRing()
		Expect(got.Fingerprint()).To(Equal(ring.Fingerprint()))

		// A broken ring pauses issuance instead of sealing with something else.
		sec.Data[kilov1alpha1.KeyRingSecretKey] = []byte("not-a-key\n")
		Expect(k8sClient.Update(ctx, sec)).To(Succeed())
		Eventually(func() error { _, err := src.KeyRing(); return err }).Should(MatchError(ContainSubstring("parsing key ring Secret")))
		_, err = src.KeyRing()
		Expect(err.Error()).NotTo(ContainSubstring("not-a-key"))
	})
})

var _ = Describe("Samples", func() {
	It("apply as they are and give the sample pod a capability", func() {
		ns := newNamespace()
		for _, file := range []string{"kilo_v1alpha1_token_secret.yaml", "kilo_v1alpha1_kilosession.yaml", "kilo_v1alpha1_session_pod.yaml"} {
			data, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", file))
			Expect(err).NotTo(HaveOccurred())
			obj := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal(data, &obj.Object)).To(Succeed(), file)
			obj.SetNamespace(ns)
			Expect(k8sClient.Create(ctx, obj)).To(Succeed(), file)
		}
		pod := &corev1.Pod{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo-agent"}, pod)).To(Succeed())
		Expect(decode(capabilityOf(pod)).KiloSessionID).To(Equal("ses_demo_0001"))
		Eventually(func() string { return conditionOf(ns, "demo", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
	})
})
