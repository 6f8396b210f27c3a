package controller

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

var planNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func planRing(t *testing.T, b byte) *capability.KeyRing {
	t.Helper()
	key := make([]byte, 32)
	key[0] = b
	r, err := capability.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func planSubject(token string) capability.Subject {
	return capability.Subject{
		UserID: "u", CloudAgentSessionID: "cas", KiloSessionID: "ks", UserToken: capability.Secret(token),
		Targets: capability.Targets{BackendBaseURL: "https://api.kilo.ai", ProviderBaseURL: "https://api.kilo.ai/api/openrouter", SessionIngestBaseURL: "https://ingest.kilosessions.ai"},
	}
}

func planPod(name, uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(uid)}}
}

// capSecret is the Secret the controller would have written for pod with in, issued at issuedAt.
func capSecret(pod *corev1.Pod, session string, in *issueInputs, issuedAt time.Time) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: DerivedCapabilitySecretName(pod.Name), Namespace: "ns", UID: types.UID("s-" + pod.UID),
			Labels: map[string]string{kilov1alpha1.SessionLabel: session, kilov1alpha1.PodUIDLabel: string(pod.UID)},
			Annotations: map[string]string{
				kilov1alpha1.IssuedAtAnnotation:   formatTime(issuedAt),
				kilov1alpha1.ExpiresAtAnnotation:  formatTime(issuedAt.Add(in.lifetime)),
				kilov1alpha1.SourceHashAnnotation: in.sourceHash(pod.UID),
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Type: kilov1alpha1.CapabilitySecretType,
	}
}

func TestPlanCapabilities(t *testing.T) {
	ring := planRing(t, 1)
	in := newIssueInputs(ring, planSubject("tok"), time.Hour, 15*time.Minute)
	pod := planPod("agent", "uid-1")
	fresh := capSecret(pod, "s", in, planNow.Add(-time.Minute))

	tests := []struct {
		name        string
		secrets     []*corev1.Secret
		inputs      *issueInputs
		now         time.Time
		wantIssue   bool
		wantCause   string
		wantConflct string
		wantRevoke  int
	}{
		{name: "A pod without a Secret gets a new capability", inputs: in, wantIssue: true, wantCause: causeNew},
		{name: "A current capability is left alone", secrets: []*corev1.Secret{fresh}, inputs: in},
		{name: "A capability inside the renew window is renewed", secrets: []*corev1.Secret{fresh}, inputs: in,
			now: planNow.Add(46 * time.Minute), wantIssue: true, wantCause: causeRenewal},
		{name: "An expired capability is renewed", secrets: []*corev1.Secret{fresh}, inputs: in,
			now: planNow.Add(2 * time.Hour), wantIssue: true, wantCause: causeRenewal},
		{name: "A rotated token re-issues at once",
			secrets: []*corev1.Secret{fresh}, inputs: newIssueInputs(ring, planSubject("rotated"), time.Hour, 15*time.Minute),
			wantIssue: true, wantCause: causeSourceChange},
		{name: "A new sealing key re-issues at once",
			secrets: []*corev1.Secret{fresh}, inputs: newIssueInputs(planRing(t, 2), planSubject("tok"), time.Hour, 15*time.Minute),
			wantIssue: true, wantCause: causeSourceChange},
		{name: "A shortened lifetime re-issues at once",
			secrets: []*corev1.Secret{capSecret(pod, "s", newIssueInputs(ring, planSubject("tok"), 4*time.Hour, time.Hour), planNow)},
			inputs:  newIssueInputs(ring, planSubject("tok"), 30*time.Minute, 5*time.Minute), wantIssue: true, wantCause: causeSourceChange},
		{name: "A Secret detached from its pod is re-issued",
			secrets: []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) { s.OwnerReferences = nil })},
			inputs:  in, wantIssue: true, wantCause: causeSourceChange},
		{name: "Unreadable annotations are re-issued",
			secrets: []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) { s.Annotations[kilov1alpha1.ExpiresAtAnnotation] = "soon" })},
			inputs:  in, wantIssue: true, wantCause: causeSourceChange},
		{name: "Blocked issuance keeps a current capability and issues nothing", secrets: []*corev1.Secret{fresh}},
		{name: "Blocked issuance issues nothing to a pod without a Secret"},
		{name: "A Secret of another session under the name is a conflict",
			secrets:     []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) { s.Labels[kilov1alpha1.SessionLabel] = "other" })},
			inputs:      in,
			wantConflct: "not this session's capability Secret"},
		{name: "A Secret of the wrong type under the name is a conflict",
			secrets:     []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) { s.Type = corev1.SecretTypeOpaque })},
			inputs:      in,
			wantConflct: "not this session's capability Secret"},
		{name: "Our Secret left by a gone pod of the same name is taken over",
			secrets: []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) {
				s.Labels[kilov1alpha1.PodUIDLabel] = "old-uid"
				s.OwnerReferences[0].UID = "old-uid"
			})},
			inputs: in, wantIssue: true, wantCause: causeNew},
		{name: "Look-alike labels without the owner reference are a conflict, not a takeover",
			secrets:     []*corev1.Secret{withSecret(fresh, func(s *corev1.Secret) { s.Labels[kilov1alpha1.PodUIDLabel] = "old-uid" })},
			inputs:      in,
			wantConflct: "not this session's capability Secret"},
		{name: "Our Secret for a pod that no longer matches is revoked",
			secrets: []*corev1.Secret{fresh, capSecret(planPod("gone", "uid-2"), "s", in, planNow)},
			inputs:  in, wantRevoke: 1},
		{name: "Another session's Secrets are never revoked",
			secrets: []*corev1.Secret{fresh, capSecret(planPod("theirs", "uid-3"), "other", in, planNow)},
			inputs:  in},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = planNow
			}
			plan := planCapabilities(planInput{
				now: now, sessionName: "s", pods: []*corev1.Pod{pod}, secrets: tc.secrets, inputs: tc.inputs,
				lifetime: time.Hour, renewBefore: 15 * time.Minute,
			})
			if len(plan.pods) != 1 {
				t.Fatalf("got %d pod decisions, want 1", len(plan.pods))
			}
			d := plan.pods[0]
			if d.issue != tc.wantIssue || d.cause != tc.wantCause {
				t.Errorf("issue=%v cause=%q, want issue=%v cause=%q", d.issue, d.cause, tc.wantIssue, tc.wantCause)
			}
			if !strings.Contains(d.conflict, tc.wantConflct) || (tc.wantConflct == "") != (d.conflict == "") {
				t.Errorf("conflict %q, want one containing %q", d.conflict, tc.wantConflct)
			}
			if !d.issue && d.conflict == "" && len(tc.secrets) > 0 && tc.secrets[0] == fresh && d.expiresAt.IsZero() {
				t.Errorf("a kept capability must report its expiry")
			}
			if len(plan.revoke) != tc.wantRevoke {
				t.Errorf("revoke %d Secrets, want %d", len(plan.revoke), tc.wantRevoke)
			}
		})
	}
}

func TestPlanSuspendRevokesOnlyTheSessionsSecrets(t *testing.T) {
	in := newIssueInputs(planRing(t, 1), planSubject("tok"), time.Hour, 15*time.Minute)
	a, b := planPod("a", "uid-a"), planPod("b", "uid-b")
	plan := planCapabilities(planInput{
		now: planNow, sessionName: "s", pods: []*corev1.Pod{a, b}, inputs: in, revokeAll: true,
		secrets: []*corev1.Secret{capSecret(a, "s", in, planNow), capSecret(b, "s", in, planNow), capSecret(planPod("c", "uid-c"), "other", in, planNow)},
	})
	if len(plan.pods) != 0 || len(plan.revoke) != 2 {
		t.Fatalf("got %d decisions and %d revocations, want 0 and 2", len(plan.pods), len(plan.revoke))
	}
}

func TestPlanTwoPodsNamingOneSecret(t *testing.T) {
	in := newIssueInputs(planRing(t, 1), planSubject("tok"), time.Hour, 15*time.Minute)
	a, b := planPod("a", "uid-a"), planPod("b", "uid-b")
	for _, p := range []*corev1.Pod{a, b} {
		p.Annotations = map[string]string{kilov1alpha1.CapabilitySecretAnnotation: "shared"}
	}
	plan := planCapabilities(planInput{now: planNow, sessionName: "s", pods: []*corev1.Pod{b, a}, inputs: in})
	if !plan.pods[0].issue || plan.pods[0].pod.Name != "a" {
		t.Errorf("the first pod by name gets the Secret")
	}
	if plan.pods[1].conflict == "" {
		t.Errorf("the second pod naming the same Secret is a conflict")
	}

	// b already holds it: a, first by name, must not take it away.
	held := capSecret(b, "s", in, planNow)
	held.Name = "shared"
	plan = planCapabilities(planInput{now: planNow, sessionName: "s", pods: []*corev1.Pod{a, b}, inputs: in, secrets: []*corev1.Secret{held}})
	if plan.pods[0].pod.Name != "a" || plan.pods[0].conflict == "" {
		t.Errorf("a pod naming another pod's Secret is a conflict, got %+v", plan.pods[0])
	}
	if plan.pods[1].conflict != "" || plan.pods[1].issue || plan.pods[1].expiresAt.IsZero() {
		t.Errorf("the holder keeps its capability, got %+v", plan.pods[1])
	}
	if len(plan.revoke) != 0 {
		t.Errorf("the holder's Secret must not be revoked")
	}
}

func TestRenewAtSpreadsPodsWithinTheWindow(t *testing.T) {
	exp := planNow.Add(4 * time.Hour)
	seen := map[time.Time]bool{}
	for i := range 200 {
		uid := types.UID("pod-" + string(rune('a'+i%26)) + strings.Repeat("x", i))
		at := renewAt(exp, time.Hour, uid)
		if at.After(exp.Add(-time.Hour)) || at.Before(exp.Add(-time.Hour-5*time.Minute)) {
			t.Fatalf("renewAt %v outside [expiry-1h-5m, expiry-1h]", at)
		}
		if at != renewAt(exp, time.Hour, uid) {
			t.Fatalf("renewAt is not deterministic")
		}
		seen[at] = true
	}
	if len(seen) < 150 {
		t.Errorf("only %d distinct renewal instants for 200 pods: no spread", len(seen))
	}
}

func TestLifetimesDefaultAndClamp(t *testing.T) {
	d := func(x time.Duration) *metav1.Duration { return &metav1.Duration{Duration: x} }
	for _, tc := range []struct {
		name              string
		spec              kilov1alpha1.KiloSessionSpec
		lifetime, renewBy time.Duration
	}{
		{"Defaults are 4h and a quarter of it", kilov1alpha1.KiloSessionSpec{}, 4 * time.Hour, time.Hour},
		{"renewBefore defaults to a quarter of a set lifetime", kilov1alpha1.KiloSessionSpec{CapabilityLifetime: d(time.Hour)}, time.Hour, 15 * time.Minute},
		{"Explicit values are used", kilov1alpha1.KiloSessionSpec{CapabilityLifetime: d(time.Hour), RenewBefore: d(10 * time.Minute)}, time.Hour, 10 * time.Minute},
		{"An out-of-range lifetime falls back to the default", kilov1alpha1.KiloSessionSpec{CapabilityLifetime: d(5 * time.Hour)}, 4 * time.Hour, time.Hour},
		{"renewBefore not shorter than the lifetime falls back", kilov1alpha1.KiloSessionSpec{CapabilityLifetime: d(time.Hour), RenewBefore: d(time.Hour)}, time.Hour, 15 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, r := lifetimes(&tc.spec)
			if l != tc.lifetime || r != tc.renewBy {
				t.Errorf("got %v/%v, want %v/%v", l, r, tc.lifetime, tc.renewBy)
			}
		})
	}
}

func TestSourceHashDependsOnEveryInput(t *testing.T) {
	ring := planRing(t, 1)
	base := newIssueInputs(ring, planSubject("tok"), time.Hour, 15*time.Minute).sourceHash("uid")
	variants := map[string]*issueInputs{}
	s := planSubject("tok")
	s.ProviderToken = "p"
	variants["provider token"] = newIssueInputs(ring, s, time.Hour, 15*time.Minute)
	s = planSubject("tok")
	s.Targets.BackendBaseURL = "https://backend.example.test"
	variants["targets"] = newIssueInputs(ring, s, time.Hour, 15*time.Minute)
	s = planSubject("tok")
	s.UserID = "u2"
	variants["user"] = newIssueInputs(ring, s, time.Hour, 15*time.Minute)
	s = planSubject("tok")
	s.CloudAgentSessionID = "cas2"
	variants["session UID"] = newIssueInputs(ring, s, time.Hour, 15*time.Minute)
	for what, in := range variants {
		if in.sourceHash("uid") == base {
			t.Errorf("changing the %s does not change the source hash", what)
		}
	}
	if newIssueInputs(ring, planSubject("tok"), time.Hour, 15*time.Minute).sourceHash("uid2") == base {
		t.Errorf("the pod UID does not change the source hash")
	}
	if strings.Contains(base, "tok") || len(base) != 32 {
		t.Errorf("source hash %q is not a 128-bit hex digest", base)
	}
}

func TestCapabilitySecretName(t *testing.T) {
	long := strings.Repeat("a", 250)
	for _, tc := range []struct {
		name, pod, annotation, want string
		wantErr                     bool
	}{
		{name: "Derived from the pod name", pod: "agent-1", want: "kilo-cap-agent-1"},
		{name: "The webhook's annotation wins", pod: "agent-1", annotation: "chosen", want: "chosen"},
		{name: "An invalid annotation is an error", pod: "agent-1", annotation: "Not_Valid", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planPod(tc.pod, "u")
			if tc.annotation != "" {
				p.Annotations = map[string]string{kilov1alpha1.CapabilitySecretAnnotation: tc.annotation}
			}
			got, err := CapabilitySecretName(p)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("got %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
	a, b := DerivedCapabilitySecretName(long+"-x"), DerivedCapabilitySecretName(long+"-y")
	if a == b || len(a) > 253 || len(validation.IsDNS1123Subdomain(a)) > 0 {
		t.Errorf("long names: %q and %q must be distinct valid Secret names", a, b)
	}
}

// FuzzDerivedCapabilitySecretName: every valid pod name maps to a valid Secret name, deterministically.
func FuzzDerivedCapabilitySecretName(f *testing.F) {
	for _, s := range []string{"a", "agent-0", strings.Repeat("a", 244) + ".b-c", strings.Repeat("ab-.", 63), "x." + strings.Repeat("y", 250)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, pod string) {
		if len(validation.IsDNS1123Subdomain(pod)) > 0 {
			return
		}
		got := DerivedCapabilitySecretName(pod)
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Fatalf("pod %q: derived %q is not a valid Secret name: %v", pod, got, errs)
		}
		if got != DerivedCapabilitySecretName(pod) {
			t.Fatal("not deterministic")
		}
	})
}

func withSecret(s *corev1.Secret, mutate func(*corev1.Secret)) *corev1.Secret {
	c := s.DeepCopy()
	mutate(c)
	return c
}

func TestFailureMessagesFitTheirAPILimits(t *testing.T) {
	r := &KiloSessionReconciler{}
	obs := &observations{selected: 5000}
	for i := range 5000 {
		obs.issueErrors = append(obs.issueErrors, fmt.Errorf("writing capability Secret ns/kilo-cap-agent-%04d: forbidden: exceeded quota", 4999-i))
	}
	c := r.readyCondition(obs, errors.Join(obs.issueErrors...))
	if c.reason != kilov1alpha1.ReasonIssuanceFailed {
		t.Fatalf("reason = %s", c.reason)
	}
	if len(c.message) > 32768 {
		t.Errorf("condition message is %d bytes; the API server refuses more than 32768", len(c.message))
	}
	if !strings.Contains(c.message, "kilo-cap-agent-0000") || !strings.Contains(c.message, "(and 4999 more)") {
		t.Errorf("message should name the first failure in order and count the rest: %q", c.message)
	}

	long := strings.Repeat("é", 2000)
	note := eventNote(long)
	if len(note) > maxEventNote || !utf8.ValidString(note) {
		t.Errorf("event note is %d bytes (limit %d), valid UTF-8: %v", len(note), maxEventNote, utf8.ValidString(note))
	}
	if eventNote("short") != "short" {
		t.Error("a short note must be kept as it is")
	}
}
