package webhook

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

func podJSON(t testing.TB, mutate func(*corev1.Pod)) []byte {
	t.Helper()
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: testNS, Labels: map[string]string{kiloai.SessionLabel: "demo"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent"}}},
	}
	if mutate != nil {
		mutate(pod)
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		name     string
		objs     []client.Object
		pod      func(*corev1.Pod)
		wantText []string
	}{
		{"Missing KiloSession is refused naming namespace and session", []client.Object{testCABundle()}, nil,
			[]string{`KiloSession "demo" not found in namespace "team-a"`}},
		{"Suspended KiloSession is refused", []client.Object{testSession("demo", true), testCABundle()}, nil,
			[]string{`KiloSession "demo" in namespace "team-a" is suspended`}},
		{"Suspended KiloSession is refused even for an already injected pod", []client.Object{testSession("demo", true), testCABundle()},
			func(p *corev1.Pod) { p.Annotations = map[string]string{kiloai.InjectedAnnotation: "{}"} },
			[]string{"is suspended"}},
		{"KiloSession being deleted is refused", []client.Object{deletingSession("demo"), testCABundle()}, nil,
			[]string{`KiloSession "demo" in namespace "team-a" is being deleted`}},
		{"hostNetwork pod is refused", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) { p.Spec.HostNetwork = true },
			[]string{"hostNetwork", `"demo"`, `"team-a"`}},
		{"hostNetwork cannot be smuggled past with the injected annotation", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) {
				p.Spec.HostNetwork = true
				p.Annotations = map[string]string{kiloai.InjectedAnnotation: "{}"}
			},
			[]string{"hostNetwork"}},
		{"Missing CA ConfigMap is refused", []client.Object{testSession("demo", false)}, nil,
			[]string{kiloai.CABundleConfigMap, `"team-a"`, "retry"}},
		{"CA ConfigMap without the bundle key is refused", []client.Object{testSession("demo", false),
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: kiloai.CABundleConfigMap}}}, nil,
			[]string{kiloai.CABundleConfigMap}},
		{"Unknown container in the narrowing annotation is refused", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) {
				p.Annotations = map[string]string{kiloai.InjectContainersAnnotation: "agent,agnet"}
			},
			[]string{`"agnet"`}},
		{"Narrowing annotation naming nothing is refused", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) { p.Annotations = map[string]string{kiloai.InjectContainersAnnotation: " , "} },
			[]string{"names no container"}},
		{"A foreign volume under kilo's reserved name is refused", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: CAVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			},
			[]string{`volume named "kilo-ca"`}},
		{"An invalid preset capability Secret name is refused", []client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) { p.Annotations = map[string]string{kiloai.CapabilitySecretAnnotation: "Not_Valid"} },
			[]string{kiloai.CapabilitySecretAnnotation}},
		{"A pod without containers is refused instead of patched (mutation runs before validation)",
			[]client.Object{testSession("demo", false), testCABundle()},
			func(p *corev1.Pod) { p.Spec = corev1.PodSpec{} },
			[]string{"no containers"}},
		{"A session label that cannot name a KiloSession is refused", []client.Object{testCABundle()},
			func(p *corev1.Pod) { p.Labels[kiloai.SessionLabel] = "" },
			[]string{kiloai.SessionLabel}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHandler(t, tc.objs...)
			resp, _ := admit(t, h, podJSON(t, tc.pod))
			if resp.Allowed {
				t.Fatalf("pod was admitted")
			}
			if resp.Result == nil || resp.Result.Code != 403 {
				t.Fatalf("want a 403 denial, got %+v", resp.Result)
			}
			for _, want := range tc.wantText {
				if !strings.Contains(resp.Result.Message, want) {
					t.Errorf("message %q does not mention %q", resp.Result.Message, want)
				}
			}
		})
	}
}

// A KiloSession created a moment before its pod may not be in the informer cache yet; the handler must confirm
// the miss against the API before refusing.
func TestCacheMissIsConfirmedAgainstTheAPI(t *testing.T) {
	s := testScheme(t)
	cached := fake.NewClientBuilder().WithScheme(s).Build()
	live := fake.NewClientBuilder().WithScheme(s).WithObjects(testSession("demo", false), testCABundle()).Build()
	h, err := NewHandler(cached, live, admission.NewDecoder(s), Options{})
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := admit(t, h, podJSON(t, nil))
	if !resp.Allowed || len(resp.Patches) == 0 {
		t.Fatalf("want the pod mutated after a confirmed cache miss, got allowed=%v %v", resp.Allowed, resp.Result)
	}
}

func TestOnlyPodCreateIsMutated(t *testing.T) {
	h := newTestHandler(t, testSession("demo", false), testCABundle())
	req := podRequest(t, podJSON(t, nil))
	req.Operation = admissionv1.Update
	if resp := h.Handle(context.Background(), req); !resp.Allowed || len(resp.Patches) != 0 {
		t.Fatalf("UPDATE must pass untouched, got %+v", resp)
	}
	req = podRequest(t, podJSON(t, func(p *corev1.Pod) { p.Labels = nil }))
	if resp := h.Handle(context.Background(), req); !resp.Allowed || len(resp.Patches) != 0 {
		t.Fatalf("an unlabelled pod must pass untouched, got %+v", resp)
	}
}

func TestSecretNamesAreFreshAndValid(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		n, err := randomSecretName()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(n, SecretNamePrefix) || len(n) != len(SecretNamePrefix)+10 || strings.Trim(n[len(SecretNamePrefix):], "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
			t.Fatalf("bad name %q", n)
		}
		if seen[n] {
			t.Fatalf("name %q repeated", n)
		}
		seen[n] = true
	}
}

func TestOptionsAreValidated(t *testing.T) {
	for _, o := range []Options{
		{ProxyURL: "socks5://x:1080"}, {ProxyURL: "http://user:pw@egress:3128"}, {ProxyURL: "http://egress:3128/path"},
		{NoProxy: []string{"a,b"}}, {NoProxy: []string{"10.0.0.0/33"}},
	} {
		if _, err := o.config(); err == nil {
			t.Errorf("options %+v accepted", o)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("error echoes proxy credentials: %v", err)
		}
	}
}

// FuzzHandle: whatever pod arrives, the handler neither panics nor emits anything but "add" operations, its
// patch applies, and a second pass over the result is a no-op.
func FuzzHandle(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/*.in.yaml")
	for _, in := range inputs {
		raw, err := yaml.YAMLToJSON(must(os.ReadFile(in)))
		if err == nil {
			f.Add(raw)
		}
	}
	f.Add([]byte(`{"metadata":{"labels":{"kilo.ai/session":"demo"},"annotations":{"kilo.ai/inject-containers":"a,,b"}},"spec":{"containers":[{"name":"a"},{"name":"b","env":[]}]}}`))
	f.Add([]byte(`{"metadata":{"labels":{"kilo.ai/session":"demo"}},"spec":{"containers":null}}`))
	h := newTestHandler(f, testSession("demo", false), testCABundle())
	f.Fuzz(func(t *testing.T, raw []byte) {
		resp, out := admit(t, h, raw)
		if !resp.Allowed || len(resp.Patches) == 0 {
			return
		}
		again, _ := admit(t, h, out)
		if len(again.Patches) != 0 {
			t.Fatalf("second pass patched again: %v", again.Patches)
		}
	})
}

func deletingSession(name string) *kiloai.KiloSession {
	s := testSession(name, false)
	s.Finalizers = []string{kiloai.CapabilitiesFinalizer}
	s.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	return s
}
