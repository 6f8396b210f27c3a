package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

const canary = "kka1.CANARY-capability-must-never-be-printed"

func demoSession() *kilov1alpha1.KiloSession {
	return &kilov1alpha1.KiloSession{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "demo", Generation: 2},
		Spec: kilov1alpha1.KiloSessionSpec{
			UserID:             "user-123",
			KiloSessionID:      "ses_demo_0001",
			UserTokenSecretRef: kilov1alpha1.SecretKeyRef{Name: "kilo-user-token", Key: "token"},
			Targets: kilov1alpha1.Targets{
				BackendBaseURL:       "https://api.kilo.ai",
				ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
				SessionIngestBaseURL: "https://ingest.kilosessions.ai",
			},
		},
		Status: kilov1alpha1.KiloSessionStatus{
			ObservedGeneration: 2,
			SelectedPods:       2,
			IssuedPods:         1,
			Conditions: []metav1.Condition{{
				Type: kilov1alpha1.ReadyCondition, Status: metav1.ConditionTrue, Reason: kilov1alpha1.ReasonIssued,
				Message: "every selected pod holds a capability", LastTransitionTime: metav1.Now(),
			}},
		},
	}
}

func TestStatusShowsPodsAndExpiryWithoutSecrets(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	_ = kilov1alpha1.AddToScheme(scheme)
	expires := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	objs := []runtime.Object{
		demoSession(),
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "agent-1", UID: "uid-1",
			Labels:      map[string]string{kilov1alpha1.SessionLabel: "demo"},
			Annotations: map[string]string{kilov1alpha1.CapabilitySecretAnnotation: "kilo-cap-1"}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7"}},
		// The second pod's Secret is left over from an earlier pod of the same name: not this pod's capability.
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "agent-2", UID: "uid-2",
			Labels:      map[string]string{kilov1alpha1.SessionLabel: "demo"},
			Annotations: map[string]string{kilov1alpha1.CapabilitySecretAnnotation: "kilo-cap-2"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "unrelated", UID: "uid-3"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "kilo-cap-1",
			Labels:      map[string]string{kilov1alpha1.PodUIDLabel: "uid-1", kilov1alpha1.SessionLabel: "demo"},
			Annotations: map[string]string{kilov1alpha1.ExpiresAtAnnotation: expires.Format(time.RFC3339)}},
			Data: map[string][]byte{kilov1alpha1.CapabilitySecretKey: []byte(canary)}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "kilo-cap-2",
			Labels: map[string]string{kilov1alpha1.PodUIDLabel: "uid-old", kilov1alpha1.SessionLabel: "demo"}},
			Data: map[string][]byte{kilov1alpha1.CapabilitySecretKey: []byte(canary)}},
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithRuntimeObjects(objs...).Build()

	rep, err := buildSessionReport(context.Background(), c, "team-a", "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ready || len(rep.Pods) != 2 {
		t.Fatalf("want a Ready session with its 2 labelled pods, got ready=%v pods=%+v", rep.Ready, rep.Pods)
	}
	p1, p2 := rep.Pods[0], rep.Pods[1]
	if !p1.SecretPresent || !p1.SecretBoundToPod || p1.ExpiresAt == nil || !p1.ExpiresAt.Time.Equal(expires) {
		t.Errorf("agent-1: want an issued capability expiring at %s, got %+v", expires, p1)
	}
	if !p2.SecretPresent || p2.SecretBoundToPod {
		t.Errorf("agent-2: want its Secret flagged as bound to another pod, got %+v", p2)
	}

	var text bytes.Buffer
	printSessionReport(&text, rep, time.Now())
	js, _ := json.Marshal(rep)
	for name, out := range map[string]string{"text": text.String(), "json": string(js)} {
		if strings.Contains(out, "CANARY") {
			t.Errorf("%s output contains capability Secret data", name)
		}
	}
	for _, want := range []string{"agent-1", "issued", "agent-2", "bound to another pod", "CapabilitiesIssued", "ses_demo_0001", "in 3h0m0s"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}
	if strings.Contains(text.String(), "unrelated") {
		t.Errorf("a pod without the session label is listed:\n%s", text.String())
	}
}

func TestLiveCheckFollowsTheEgressOrder(t *testing.T) {
	allow, err := policy.ParseAllowList(policy.DefaultAllowList)
	if err != nil {
		t.Fatal(err)
	}
	ok := demoSession()
	suspended := demoSession()
	suspended.Spec.Suspend = true
	rejected := demoSession()
	rejected.Status.Conditions = append(rejected.Status.Conditions, metav1.Condition{
		Type: kilov1alpha1.TargetsValidCondition, Status: metav1.ConditionFalse, Reason: kilov1alpha1.ReasonInvalidTargets})
	withProvider := demoSession()
	withProvider.Spec.ProviderTokenSecretRef = &kilov1alpha1.SecretKeyRef{Name: "p", Key: "token"}

	cases := []struct {
		name    string
		ks      *kilov1alpha1.KiloSession
		url     string
		allow   *policy.AllowList
		allowed bool
		reason  string
		cred    string
	}{
		{"A model call is allowed with the user token", ok, "https://api.kilo.ai/api/openrouter/chat/completions", allow, true, "", "user"},
		{"A provider token is used when the session has one", withProvider, "https://api.kilo.ai/api/openrouter/chat/completions", allow, true, "", "provider"},
		{"This session's export is allowed", ok, "https://ingest.kilosessions.ai/api/session/ses_demo_0001/export", nil, true, "", "user"},
		{"Another session's export is refused", ok, "https://ingest.kilosessions.ai/api/session/ses_other/export", nil, false, "upstream_not_allowed", ""},
		{"Traversal is refused", ok, "https://api.kilo.ai/api/openrouter/%2e%2e/x", nil, false, "invalid_upstream_url", ""},
		{"A suspended session is revoked before the URL is looked at", suspended, "https://api.kilo.ai/api/openrouter/chat/completions", nil, false, "capability_revoked", ""},
		{"Targets the operator rejected allow nothing", rejected, "https://api.kilo.ai/api/openrouter/chat/completions", nil, false, "upstream_not_allowed", ""},
		{"An allow-list without the origin refuses", ok, "https://api.kilo.ai/api/openrouter/chat/completions", mustAllow(t, "https://example.com"), false, "upstream_not_allowed", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := liveCheck(tc.ks, tc.url, "GET", "", tc.allow)
			if a.Allowed != tc.allowed || a.Reason != tc.reason || (tc.allowed && a.Credential != tc.cred) {
				t.Errorf("got %+v, want allowed=%v reason=%q credential=%q", a, tc.allowed, tc.reason, tc.cred)
			}
		})
	}
}

func mustAllow(t *testing.T, origins ...string) *policy.AllowList {
	t.Helper()
	a, err := policy.ParseAllowList(origins)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCheckFormIsChosenByTargetsFile(t *testing.T) {
	cases := []struct {
		args []string
		live bool
	}{
		{[]string{"-n", "ns", "demo", "https://api.kilo.ai/"}, true},
		{[]string{"demo", "https://api.kilo.ai/"}, true},
		{[]string{"--targets-file", "t.json", "--session", "s", "https://api.kilo.ai/"}, false},
		{[]string{"--targets-file=t.json", "--session", "s", "https://api.kilo.ai/"}, false},
		{[]string{"-targets-file", "t.json", "--session", "s", "https://api.kilo.ai/"}, false},
		// After "--" everything is the URL: it cannot switch the form.
		{[]string{"-n", "ns", "demo", "--", "--targets-file"}, true},
	}
	for _, tc := range cases {
		if got := isLiveCheck(tc.args); got != tc.live {
			t.Errorf("isLiveCheck(%q) = %v, want %v", tc.args, got, tc.live)
		}
	}
}

func TestFlagsMayFollowPositionalArguments(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var kf kubeFlags
	kf.register(fs)
	pos, err := parseInterleaved(fs, []string{"demo", "-n", "team-a", "--", "-not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if kf.namespace != "team-a" || len(pos) != 2 || pos[0] != "demo" || pos[1] != "-not-a-flag" {
		t.Errorf("got namespace %q positional %q", kf.namespace, pos)
	}
}
