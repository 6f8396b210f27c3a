package controller

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

func init() {
	suiteSetup = append(suiteSetup, func(m ctrl.Manager) error {
		return (&TrustBundleReconciler{OperatorNamespace: operatorNamespace}).SetupWithManager(m)
	})
}

var _ = Describe("Trust bundle", Ordered, func() {
	const pemV1 = "-----BEGIN CERTIFICATE-----\nMIIB-v1\n-----END CERTIFICATE-----\n"
	const pemV2 = pemV1 + "-----BEGIN CERTIFICATE-----\nMIIB-v2\n-----END CERTIFICATE-----\n"
	var nsA, nsB string

	// copyIn reads the namespace's copy; "" when it does not exist.
	copyIn := func(ns string) func() string {
		return func() string {
			cm := &corev1.ConfigMap{}
			if err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: kilov1alpha1.CABundleConfigMap}, cm); err != nil {
				Expect(apierrors.IsNotFound(err)).To(BeTrue(), "reading the copy: %v", err)
				return ""
			}
			return cm.Data[kilov1alpha1.CABundleKey]
		}
	}
	newNamespace := func() string {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "trust-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())
		return ns.Name
	}
	newSession := func(ns, name string) *kilov1alpha1.KiloSession {
		ks := &kilov1alpha1.KiloSession{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: kilov1alpha1.KiloSessionSpec{
				UserID: "u", KiloSessionID: "ses_" + name,
				UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: "token", Key: "token"},
				Targets: kilov1alpha1.Targets{BackendBaseURL: "https://api.kilo.ai", ProviderBaseURL: "https://api.kilo.ai/api/openrouter",
					SessionIngestBaseURL: "https://ingest.kilosessions.ai"},
			},
		}
		Expect(k8sClient.Create(ctx, ks)).To(Succeed())
		return ks
	}

	BeforeAll(func() {
		nsA, nsB = newNamespace(), newNamespace()
	})

	It("publishes the bundle into a namespace once the egress has published the source", func() {
		newSession(nsA, "a1")
		// No source yet: nothing to copy, and no error loop.
		Consistently(copyIn(nsA)).WithTimeout(500 * time.Millisecond).Should(BeEmpty())

		Expect(k8sClient.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: kilov1alpha1.CABundleConfigMap},
			Data:       map[string]string{kilov1alpha1.CABundleKey: pemV1},
		})).To(Succeed())
		Eventually(copyIn(nsA)).WithTimeout(10 * time.Second).Should(Equal(pemV1))
	})

	It("publishes into a namespace when its first KiloSession appears, and only then", func() {
		Consistently(copyIn(nsB)).WithTimeout(300 * time.Millisecond).ShouldNot(Equal(pemV1))
		newSession(nsB, "b1")
		Eventually(copyIn(nsB)).WithTimeout(10 * time.Second).Should(Equal(pemV1))
	})

	It("follows a rotation of the source into every session namespace", func() {
		src := &corev1.ConfigMap{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: kilov1alpha1.CABundleConfigMap}, src)).To(Succeed())
		src.Data[kilov1alpha1.CABundleKey] = pemV2
		Expect(k8sClient.Update(ctx, src)).To(Succeed())
		Eventually(copyIn(nsA)).WithTimeout(10 * time.Second).Should(Equal(pemV2))
		Eventually(copyIn(nsB)).WithTimeout(10 * time.Second).Should(Equal(pemV2))
	})

	It("repairs an edited or deleted copy", func() {
		cm := &corev1.ConfigMap{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: nsA, Name: kilov1alpha1.CABundleConfigMap}, cm)).To(Succeed())
		cm.Data[kilov1alpha1.CABundleKey] = "tampered"
		Expect(k8sClient.Update(ctx, cm)).To(Succeed())
		Eventually(copyIn(nsA)).WithTimeout(10 * time.Second).Should(Equal(pemV2))

		Expect(k8sClient.Delete(ctx, cm)).To(Succeed())
		Eventually(copyIn(nsA)).WithTimeout(10 * time.Second).Should(Equal(pemV2))
	})

	It("removes its copy when the namespace's last KiloSession is deleted", func() {
		Expect(k8sClient.Delete(ctx, &kilov1alpha1.KiloSession{ObjectMeta: metav1.ObjectMeta{Namespace: nsB, Name: "b1"}})).To(Succeed())
		Eventually(func() bool {
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: nsB, Name: kilov1alpha1.CABundleConfigMap}, &corev1.ConfigMap{})
			return apierrors.IsNotFound(err)
		}).WithTimeout(10 * time.Second).Should(BeTrue())
		// The other namespace keeps its copy.
		Expect(copyIn(nsA)()).To(Equal(pemV2))
	})
})
