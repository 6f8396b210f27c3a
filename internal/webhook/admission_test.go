package webhook

import (
	"encoding/json"
	"math/big"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
)

var _ = Describe("Pod injection through the API server", func() {
	var ns string
	BeforeEach(func() {
		var err error
		ns, err = env.newSessionNamespace(ctx, "demo", false)
		Expect(err).NotTo(HaveOccurred())
	})

	It("wires a labelled pod to its capability, the egress and the CA", func() {
		pod := sessionPod(ns, "demo")
		Expect(env.client.Create(ctx, pod)).To(Succeed())

		secret := pod.Annotations[kiloai.CapabilitySecretAnnotation]
		Expect(secret).To(HavePrefix(SecretNamePrefix))
		Expect(pod.Annotations).To(HaveKey(kiloai.InjectedAnnotation))
		var vols []string
		for _, v := range pod.Spec.Volumes {
			vols = append(vols, v.Name)
			if v.Name == CapabilityVolume {
				Expect(v.Secret.SecretName).To(Equal(secret))
			}
		}
		Expect(vols).To(ContainElements(CapabilityVolume, CAVolume))
		env := map[string]corev1.EnvVar{}
		for _, e := range pod.Spec.Containers[0].Env {
			env[e.Name] = e
		}
		Expect(env[EnvToken].ValueFrom.SecretKeyRef.Name).To(Equal(secret))
		Expect(env["HTTPS_PROXY"].Value).To(Equal(DefaultProxyURL))
		Expect(env["no_proxy"].Value).To(ContainSubstring("10.96.0.0/12"))
		Expect(pod.Spec.Containers[0].VolumeMounts).To(ContainElement(HaveField("MountPath", kiloai.CapabilityMountPath)))
	})

	It("leaves a pod without the session label alone", func() {
		pod := sessionPod(ns, "demo")
		pod.Labels = map[string]string{"app": "plain"}
		Expect(env.client.Create(ctx, pod)).To(Succeed())
		Expect(pod.Annotations).NotTo(HaveKey(kiloai.InjectedAnnotation))
		Expect(pod.Spec.Volumes).To(BeEmpty())
		Expect(pod.Spec.Containers[0].Env).To(BeEmpty())
	})

	It("refuses a pod whose KiloSession does not exist, naming namespace and session", func() {
		err := env.client.Create(ctx, sessionPod(ns, "ghost"))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring(`KiloSession "ghost" not found in namespace "` + ns + `"`))
	})

	It("refuses a pod of a suspended KiloSession", func() {
		// A merge patch: the controller writes the same object (status, finalizer) concurrently.
		ks := &kiloai.KiloSession{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo"}}
		Expect(env.client.Patch(ctx, ks, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"suspend":true}}`)))).To(Succeed())
		Eventually(func() string {
			err := env.client.Create(ctx, sessionPod(ns, "demo"))
			if err == nil {
				return ""
			}
			return err.Error()
		}).WithTimeout(5 * time.Second).Should(ContainSubstring(`KiloSession "demo" in namespace "` + ns + `" is suspended`))
	})

	It("refuses a pod of a KiloSession that is being deleted", func() {
		// Its capability would never be issued (the controller only revokes for a deleted session), and the
		// non-optional Secret volume would hold the pod in ContainerCreating with no explanation.
		ks := &kiloai.KiloSession{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo"}}
		Expect(env.client.Patch(ctx, ks, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":["test.kilo.ai/hold"]}}`)))).To(Succeed())
		DeferCleanup(func() {
			Expect(env.client.Patch(ctx, ks, client.RawPatch(types.JSONPatchType, []byte(`[{"op":"remove","path":"/metadata/finalizers"}]`)))).To(Succeed())
		})
		Expect(env.client.Delete(ctx, ks)).To(Succeed())
		Eventually(func() string {
			err := env.client.Create(ctx, sessionPod(ns, "demo"))
			if err == nil {
				return ""
			}
			return err.Error()
		}).WithTimeout(5 * time.Second).Should(ContainSubstring(`KiloSession "demo" in namespace "` + ns + `" is being deleted`))
	})

	It("refuses a hostNetwork session pod", func() {
		pod := sessionPod(ns, "demo")
		pod.Spec.HostNetwork = true
		err := env.client.Create(ctx, pod)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("hostNetwork"))
	})

	It("refuses a pod when the CA bundle is not in its namespace", func() {
		Expect(env.client.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: kiloai.CABundleConfigMap}})).To(Succeed())
		err := env.client.Create(ctx, sessionPod(ns, "demo"))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring(kiloai.CABundleConfigMap))
	})

	It("keeps a container's own proxy setting and tells the client", func() {
		env.takeWarnings()
		pod := sessionPod(ns, "demo")
		pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "HTTPS_PROXY", Value: "http://corp:8080"}}
		Expect(env.client.Create(ctx, pod)).To(Succeed())
		Expect(pod.Spec.Containers[0].Env[0]).To(Equal(corev1.EnvVar{Name: "HTTPS_PROXY", Value: "http://corp:8080"}))
		Expect(pod.Spec.Containers[0].Env).NotTo(ContainElement(HaveField("Name", "https_proxy")))
		Expect(env.takeWarnings()).To(ContainElement(And(ContainSubstring(`container "agent"`), ContainSubstring("HTTPS_PROXY"))))
	})

	It("mutates server-side dry runs the same way (sideEffects None)", func() {
		pod := sessionPod(ns, "demo")
		Expect(env.client.Create(ctx, pod, client.DryRunAll)).To(Succeed())
		Expect(pod.Annotations).To(HaveKey(kiloai.CapabilitySecretAnnotation))
	})

	It("gets the annotated capability Secret issued by the controller", func() {
		pod := sessionPod(ns, "demo")
		Expect(env.client.Create(ctx, pod)).To(Succeed())
		name := pod.Annotations[kiloai.CapabilitySecretAnnotation]
		Eventually(func() (string, error) {
			s := &corev1.Secret{}
			if err := env.client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
				return "", err
			}
			return s.Labels[kiloai.PodUIDLabel], nil
		}).WithTimeout(15 * time.Second).Should(Equal(string(pod.UID)))
	})
})

var _ = Describe("Self-managed webhook certificates", Ordered, func() {
	var (
		ns      string
		created atomic.Int64
		failed  atomic.Int64
		lastErr atomic.Value
		stop    chan struct{}
		done    chan struct{}
	)
	caBundleCerts := func() int {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(env.client.Get(ctx, types.NamespacedName{Name: pki.DefaultWebhookConfiguration}, mwc)).To(Succeed())
		certs, err := pki.ParseCertsPEM(mwc.Webhooks[0].ClientConfig.CABundle)
		Expect(err).NotTo(HaveOccurred())
		return len(certs)
	}
	serial := func() *big.Int {
		s, err := env.servedSerial()
		Expect(err).NotTo(HaveOccurred())
		return s
	}
	// admittedSince waits until n more session pods went through admission.
	admittedSince := func(n int64) {
		base := created.Load()
		Eventually(created.Load).WithTimeout(10 * time.Second).Should(BeNumerically(">=", base+n))
	}

	BeforeAll(func() {
		var err error
		ns, err = env.newSessionNamespace(ctx, "demo", false)
		Expect(err).NotTo(HaveOccurred())
		// Pods are created continuously through the whole rotation; every one must be admitted.
		stop, done = make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := env.client.Create(ctx, sessionPod(ns, "demo")); err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
				} else {
					created.Add(1)
				}
			}
		}()
		admittedSince(3)
	})
	stopCreating := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}
	AfterAll(func() { stopCreating() })

	It("keeps caBundle under its own field manager only", func() {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(env.client.Get(ctx, types.NamespacedName{Name: pki.DefaultWebhookConfiguration}, mwc)).To(Succeed())
		var owned string
		for _, mf := range mwc.ManagedFields {
			if mf.Manager == pki.DefaultFieldManager {
				Expect(mf.Operation).To(Equal(metav1.ManagedFieldsOperationApply))
				owned = string(mf.FieldsV1.Raw)
			}
		}
		var fields map[string]any
		Expect(json.Unmarshal([]byte(owned), &fields)).To(Succeed())
		// Nothing but webhooks[name=…].clientConfig.caBundle (and the list keys it needs).
		Expect(owned).To(ContainSubstring(`"f:caBundle"`))
		for _, other := range []string{"f:rules", "f:failurePolicy", "f:objectSelector", "f:service", "f:sideEffects"} {
			Expect(owned).NotTo(ContainSubstring(other))
		}
	})

	It("picks up a renewed serving certificate without a restart", func() {
		before := serial()
		env.clock.Step(servingValidity - servingRenew + time.Minute)
		Eventually(serial).WithTimeout(10 * time.Second).ShouldNot(Equal(before))
		admittedSince(3)
		Expect(caBundleCerts()).To(Equal(1))
	})

	It("announces the next CA in caBundle before it signs anything", func() {
		before := serial()
		env.clock.Step(time.Hour)
		Eventually(caBundleCerts).WithTimeout(10 * time.Second).Should(Equal(2))
		Expect(serial()).To(Equal(before), "the serving certificate must not change at announcement")
		admittedSince(3)
	})

	It("promotes the next CA and keeps admitting across the switch", func() {
		before := serial()
		env.clock.Step(caPromoteAfter + time.Minute)
		Eventually(serial).WithTimeout(10 * time.Second).ShouldNot(Equal(before))
		admittedSince(3)
		// Old CA retired but still trusted until it expires: the bundle holds both.
		Expect(caBundleCerts()).To(Equal(2))
	})

	It("admitted every pod created during the rotation", func() {
		stopCreating()
		Expect(failed.Load()).To(BeZero(), "last failure: %v", lastErr.Load())
		Expect(created.Load()).To(BeNumerically(">=", 12))
	})

	It("restores a caBundle that someone wiped", func() {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(env.client.Get(ctx, types.NamespacedName{Name: pki.DefaultWebhookConfiguration}, mwc)).To(Succeed())
		mwc.Webhooks[0].ClientConfig.CABundle = nil
		Expect(env.client.Update(ctx, mwc)).To(Succeed())
		Eventually(caBundleCerts).WithTimeout(10 * time.Second).Should(Equal(2))
		Eventually(func() error { return env.client.Create(ctx, sessionPod(ns, "demo")) }).WithTimeout(10 * time.Second).Should(Succeed())
	})
})
