package webhook

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ from the current output")

const testNS = "team-a"

func testScheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := kiloai.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func testSession(name string, suspend bool) *kiloai.KiloSession {
	return &kiloai.KiloSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Spec: kiloai.KiloSessionSpec{
			UserID: "user-1", KiloSessionID: "ses_1", Suspend: suspend,
			UserTokenSecretRef: kiloai.SecretKeyRef{Name: "kilo-token", Key: "token"},
			Targets: kiloai.Targets{BackendBaseURL: "https://api.kilo.ai", ProviderBaseURL: "https://api.kilo.ai/api/openrouter",
				SessionIngestBaseURL: "https://ingest.kilosessions.ai"},
		},
	}
}

func testCABundle() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: kiloai.CABundleConfigMap},
		Data:       map[string]string{kiloai.CABundleKey: "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n"},
	}
}

// newTestHandler serves from a fake client holding objs, with a fixed Secret name so that outputs are stable.
func newTestHandler(t testing.TB, objs ...client.Object) *Handler {
	t.Helper()
	s := testScheme(t)
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
	h, err := NewHandler(c, nil, admission.NewDecoder(s), Options{NoProxy: []string{"10.96.0.0/12"}})
	if err != nil {
		t.Fatal(err)
	}
	h.newSecretName = func() (string, error) { return "kilo-cap-x7k2m9q4tz", nil }
	return h
}

func podRequest(t testing.TB, raw []byte) admission.Request {
	t.Helper()
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       "req-1",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: testNS,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}}
}

// admit runs the handler and applies its patch to raw, as the API server would.
func admit(t testing.TB, h *Handler, raw []byte) (admission.Response, []byte) {
	t.Helper()
	resp := h.Handle(context.Background(), podRequest(t, raw))
	if !resp.Allowed || len(resp.Patches) == 0 {
		return resp, raw
	}
	for _, op := range resp.Patches {
		if op.Operation != "add" {
			t.Fatalf("patch operation %q at %s: the webhook must only add", op.Operation, op.Path)
		}
	}
	pj, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(pj)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("applying the webhook's patch: %v\npatch: %s", err, pj)
	}
	return resp, out
}

// TestGolden feeds each testdata/<case>.in.yaml through the handler and compares the patched pod, preceded by the
// admission warnings as comments, with testdata/<case>.out.yaml. Run with -update to rewrite the expectations.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			h := newTestHandler(t, testSession("demo", false), testCABundle())
			inYAML, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := yaml.YAMLToJSON(inYAML)
			if err != nil {
				t.Fatal(err)
			}
			resp, out := admit(t, h, raw)
			if !resp.Allowed {
				t.Fatalf("refused: %s", resp.Result.Message)
			}
			outYAML, err := yaml.JSONToYAML(out)
			if err != nil {
				t.Fatal(err)
			}
			var got strings.Builder
			for _, w := range resp.Warnings {
				got.WriteString("# warning: " + w + "\n")
			}
			got.Write(outYAML)

			golden := strings.TrimSuffix(in, ".in.yaml") + ".out.yaml"
			if *update {
				if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("reading %s (run with -update to create it): %v", golden, err)
			}
			if got.String() != string(want) {
				t.Errorf("patched pod differs from %s (run with -update after checking the change):\n--- got\n%s\n--- want\n%s", golden, got.String(), want)
			}

			// Idempotency: the patched pod, admitted again (re-invocation), is left exactly as it is.
			again, out2 := admit(t, h, out)
			if !again.Allowed || len(again.Patches) != 0 || string(out2) != string(out) {
				t.Errorf("second pass changed the pod: allowed=%v patches=%v", again.Allowed, again.Patches)
			}
			if len(again.Warnings) != 0 {
				t.Errorf("second pass warned again: %v", again.Warnings)
			}
		})
	}
}

// TestGoldenWiring checks, on the default case, the properties the golden text encodes implicitly, so that an
// -update that breaks them cannot slip through review.
func TestGoldenWiring(t *testing.T) {
	h := newTestHandler(t, testSession("demo", false), testCABundle())
	raw, _ := yaml.YAMLToJSON(must(os.ReadFile("testdata/generate-name.in.yaml")))
	resp, out := admit(t, h, raw)
	if !resp.Allowed {
		t.Fatal(resp.Result.Message)
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(out, pod); err != nil {
		t.Fatal(err)
	}
	secret := pod.Annotations[kiloai.CapabilitySecretAnnotation]
	if secret != "kilo-cap-x7k2m9q4tz" {
		t.Fatalf("capability Secret annotation = %q", secret)
	}
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == CapabilityVolume {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != secret || vol.Secret.Optional == nil || *vol.Secret.Optional {
		t.Fatalf("capability volume must be the annotated, non-optional Secret: %+v", vol)
	}
	c := pod.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if ref := env[EnvToken].ValueFrom; ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != secret || ref.SecretKeyRef.Key != "token" {
		t.Errorf("KILOCODE_TOKEN must reference the annotated Secret's token key: %+v", env[EnvToken])
	}
	if env[EnvTokenFile].Value != kiloai.CapabilityMountPath+"/token" || env[EnvNodeExtraCA].Value != kiloai.CAMountPath+"/ca.crt" {
		t.Errorf("file env vars point at the wrong paths: %v / %v", env[EnvTokenFile].Value, env[EnvNodeExtraCA].Value)
	}
	for _, n := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		if env[n].Value != DefaultProxyURL {
			t.Errorf("%s = %q, want %q", n, env[n].Value, DefaultProxyURL)
		}
	}
	if !strings.Contains(env["NO_PROXY"].Value, ".svc") || !strings.Contains(env["NO_PROXY"].Value, "10.96.0.0/12") {
		t.Errorf("NO_PROXY = %q", env["NO_PROXY"].Value)
	}
	if _, ok := env["SSL_CERT_FILE"]; ok {
		t.Error("SSL_CERT_FILE replaces the system roots and must not be injected")
	}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" || !m.ReadOnly {
			t.Errorf("mount %s must be read-only without subPath", m.MountPath)
		}
	}
	if env["LOG_LEVEL"].Value != "debug" || pod.Annotations["team"] != "a" {
		t.Error("the pod's own env and annotations must survive")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

var _ = time.Second
