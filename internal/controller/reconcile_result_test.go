package controller

import (
	"errors"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// What one pass returns: the time-driven requeue (renewal and expiry are clock work, not watch work) and the
// error classification. The manager's controller runs alongside; these passes see the same API server.
var _ = Describe("A reconcile pass", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	reconcileOnce := func(name string) (ctrl.Result, error) {
		return directReconciler().Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}})
	}
	expiresAt := func(s *corev1.Secret) time.Time {
		t, err := time.Parse(time.RFC3339, s.Annotations[kilov1alpha1.ExpiresAtAnnotation])
		Expect(err).NotTo(HaveOccurred())
		return t
	}

	It("requeues for the earliest renewal among the session's pods", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.CapabilityLifetime = &metav1.Duration{Duration: time.Hour}
			s.Spec.RenewBefore = &metav1.Duration{Duration: 15 * time.Minute}
		})
		pods := []*corev1.Pod{sessionPod(ns, "a", "s1"), sessionPod(ns, "b", "s1"), sessionPod(ns, "c", "s1")}
		var earliest time.Time
		for _, p := range pods {
			at := renewAt(expiresAt(capabilityOf(p)), 15*time.Minute, p.UID)
			if earliest.IsZero() || at.Before(earliest) {
				earliest = at
			}
		}
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))

		res, err := reconcileOnce("s1")
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(Equal(earliest.Sub(testClock.Now())), "wake up exactly when the first pod is due, not on a poll")
	})

	It("keeps waking for capabilities issued under a valid spec after the spec turns invalid, and stops once they expired", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.CapabilityLifetime = &metav1.Duration{Duration: 10 * time.Minute}
			s.Spec.RenewBefore = &metav1.Duration{Duration: 2 * time.Minute}
		})
		pod := sessionPod(ns, "agent", "s1")
		expiry := expiresAt(capabilityOf(pod))
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
		goodGeneration := getSession(ns, "s1").Status.ObservedGeneration

		updateSession(ns, "s1", func(s *kilov1alpha1.KiloSession) { s.Spec.Targets.BackendBaseURL = "https://attacker.example.com" })
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("False/" + kilov1alpha1.ReasonInvalidTargets))
		s := getSession(ns, "s1")
		Expect(s.Generation).To(BeNumerically(">", goodGeneration))
		Expect(s.Status.ObservedGeneration).To(Equal(goodGeneration), "observedGeneration is only the last generation acted on successfully")

		// The pod keeps its capability (issued for valid targets) until it expires; the status and the expiry
		// gauge must say when that happened, so the pass has to come back then.
		res, err := reconcileOnce("s1")
		Expect(err).NotTo(HaveOccurred())
		Expect(res.RequeueAfter).To(Equal(expiry.Sub(testClock.Now())))
		Expect(getSession(ns, "s1").Status.IssuedPods).To(BeEquivalentTo(1))

		testClock.Step(expiry.Sub(testClock.Now()) + time.Second)
		res, err = reconcileOnce("s1")
		Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeTrue(), "with nothing left to wait for, an invalid spec is terminal: got %v", err)
		Expect(res.RequeueAfter).To(BeZero())
		Expect(getSession(ns, "s1").Status.IssuedPods).To(BeZero(), "an expired capability is not reported as held")
		earliestExpiry.mu.Lock()
		_, tracked := earliestExpiry.byKey[types.NamespacedName{Namespace: ns, Name: "s1"}]
		earliestExpiry.mu.Unlock()
		Expect(tracked).To(BeFalse(), "the expiry gauge forgets capabilities that expired")
	})

	It("is terminal at once for an invalid spec when no capability is live", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token", func(s *kilov1alpha1.KiloSession) {
			s.Spec.Targets.BackendBaseURL = "https://attacker.example.com"
		})
		sessionPod(ns, "agent", "s1")
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("False/" + kilov1alpha1.ReasonInvalidTargets))
		_, err := reconcileOnce("s1")
		Expect(errors.Is(err, reconcile.TerminalError(nil))).To(BeTrue(), "got %v", err)
		Expect(getSession(ns, "s1").Status.ObservedGeneration).To(BeZero())
	})

	It("keeps status.pods within its bound for a large session", func() {
		createTokenSecret(ns, "user-token", "v", true)
		createSession(ns, "s1", "user-token")
		n := kilov1alpha1.MaxPodStatuses + 3
		for i := range n {
			sessionPod(ns, "agent-"+string(rune('a'+i/26))+string(rune('a'+i%26)), "s1")
		}
		Eventually(func() int32 { return getSession(ns, "s1").Status.IssuedPods }).WithTimeout(20 * time.Second).Should(BeEquivalentTo(n))
		Eventually(func() string { return conditionOf(ns, "s1", kilov1alpha1.ReadyCondition) }).Should(Equal("True/" + kilov1alpha1.ReasonIssued))
		s := getSession(ns, "s1")
		Expect(s.Status.SelectedPods).To(BeEquivalentTo(n))
		Expect(s.Status.Pods).To(HaveLen(kilov1alpha1.MaxPodStatuses))
		Expect(capabilitySecretsIn(ns)).To(HaveLen(n))
	})
})
