package controller

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

// This file holds the controller's decisions as pure functions over gathered input: which pods get a capability,
// which Secrets are renewed, re-issued, left alone or revoked, and when to come back. The reconciler gathers the
// input and carries the plan out; it does not decide.

const (
	// DefaultCapabilityLifetime is the lifetime when spec.capabilityLifetime is unset: the token format's maximum.
	DefaultCapabilityLifetime = 4 * time.Hour
	// maxRenewJitter caps the per-pod spread of renewals.
	maxRenewJitter = 5 * time.Minute
	// lifetimeSlack tolerates clock and rounding differences before a capability counts as longer-lived than the
	// current spec allows.
	lifetimeSlack = time.Minute
)

// lifetimes returns the effective lifetime and renew-before window of a session. The CRD's CEL rules keep them in
// range; the clamps here only make sure an object that slipped past (an old CRD, a direct etcd write) still yields
// a sane schedule instead of renewing in a tight loop.
func lifetimes(spec *kilov1alpha1.KiloSessionSpec) (lifetime, renewBefore time.Duration) {
	lifetime = DefaultCapabilityLifetime
	if spec.CapabilityLifetime != nil {
		lifetime = spec.CapabilityLifetime.Duration
	}
	if lifetime < 10*time.Minute || lifetime > DefaultCapabilityLifetime {
		lifetime = DefaultCapabilityLifetime
	}
	renewBefore = lifetime / 4
	if spec.RenewBefore != nil {
		renewBefore = spec.RenewBefore.Duration
	}
	if renewBefore < time.Minute || renewBefore >= lifetime {
		renewBefore = lifetime / 4
	}
	return lifetime, renewBefore
}

// renewAt is when the capability of pod podUID that expires at expiresAt is renewed: renewBefore ahead of expiry,
// and a little earlier by a per-pod amount (up to a tenth of renewBefore, at most 5m) derived from the pod UID.
// The jitter is deterministic, so a resync computes the same instant, and it only ever renews earlier, so a pod
// never holds less than renewBefore. Thousands of pods started together spread their renewals over the window.
func renewAt(expiresAt time.Time, renewBefore time.Duration, podUID types.UID) time.Time {
	window := min(renewBefore/10, maxRenewJitter)
	at := expiresAt.Add(-renewBefore)
	if window <= 0 {
		return at
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(podUID))
	return at.Add(-time.Duration(h.Sum64() % uint64(window)))
}

// issueInputs is everything a session's capabilities are made of, gathered once per reconcile. It exists only
// when issuance is possible (key ring loaded, token Secrets usable, targets valid).
type issueInputs struct {
	ring        *capability.KeyRing
	subject     capability.Subject // OutboundContainerID is filled in per pod
	lifetime    time.Duration
	renewBefore time.Duration
	// baseHash digests the session-level inputs (see newIssueInputs); sourceHash adds the pod UID.
	baseHash [sha256.Size]byte
}

func newIssueInputs(ring *capability.KeyRing, subject capability.Subject, lifetime, renewBefore time.Duration) *issueInputs {
	// Length-prefixed fields under a version tag: no two input tuples share an encoding, and a future change of
	// what is hashed (v2) re-issues everything once instead of silently comparing unlike digests.
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("kilo.ai/capability-source/v1")
	field(subject.UserID)
	field(subject.KiloSessionID)
	field(subject.CloudAgentSessionID)
	field(string(subject.UserToken))
	if subject.ProviderToken != "" {
		field("provider")
		field(string(subject.ProviderToken))
	} else {
		field("no-provider")
	}
	field(subject.Targets.BackendBaseURL)
	field(subject.Targets.ProviderBaseURL)
	field(subject.Targets.SessionIngestBaseURL)
	field(ring.Fingerprint())
	in := &issueInputs{ring: ring, subject: subject, lifetime: lifetime, renewBefore: renewBefore}
	h.Sum(in.baseHash[:0])
	return in
}

// sourceHash is the value of the kilo.ai/source-hash annotation for the pod with podUID: 128 bits of a SHA-256
// over the session inputs and the pod UID. It changes exactly when the token would.
func (in *issueInputs) sourceHash(podUID types.UID) string {
	h := sha256.New()
	h.Write(in.baseHash[:])
	h.Write([]byte(podUID))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// podDecision is what happens to one selected pod's capability in this pass.
type podDecision struct {
	pod        *corev1.Pod
	secretName string
	// existing is the Secret currently under secretName from the capability cache (data stripped), or nil.
	existing *corev1.Secret
	// issue: seal a new capability and write it (create when existing is nil, else update existing in place).
	issue bool
	cause string
	// conflict explains why nothing is written for this pod: the name is taken by a Secret that is not this
	// session's capability for this pod, or the pod names an invalid Secret.
	conflict string
	// expiresAt and renewAt describe the capability the pod keeps when issue is false (zero when it has none).
	expiresAt, renewAt time.Time
}

// capabilityPlan is the outcome of planCapabilities.
type capabilityPlan struct {
	pods   []podDecision // selected pods, sorted by name
	revoke []*corev1.Secret
}

// capabilityMeta is what the annotations of a capability Secret say.
type capabilityMeta struct {
	issuedAt, expiresAt time.Time
	sourceHash          string
}

func readCapabilityMeta(s *corev1.Secret) (capabilityMeta, bool) {
	var m capabilityMeta
	var err error
	if m.issuedAt, err = time.Parse(time.RFC3339, s.Annotations[kilov1alpha1.IssuedAtAnnotation]); err != nil {
		return m, false
	}
	if m.expiresAt, err = time.Parse(time.RFC3339, s.Annotations[kilov1alpha1.ExpiresAtAnnotation]); err != nil {
		return m, false
	}
	m.sourceHash = s.Annotations[kilov1alpha1.SourceHashAnnotation]
	return m, m.sourceHash != "" && m.expiresAt.After(m.issuedAt)
}

// isCapabilityFor reports whether s is sessionName's capability Secret for the pod with podUID.
func isCapabilityFor(s *corev1.Secret, sessionName string, podUID types.UID) bool {
	return s.Type == kilov1alpha1.CapabilitySecretType &&
		s.Labels[kilov1alpha1.SessionLabel] == sessionName &&
		s.Labels[kilov1alpha1.PodUIDLabel] == string(podUID)
}

// revocable reports whether s is a capability Secret sessionName's controller wrote, so that deleting it can
// never destroy someone else's Secret that merely carries look-alike labels.
func revocable(s *corev1.Secret, sessionName string) bool {
	return s.Type == kilov1alpha1.CapabilitySecretType && issuedBy(s, sessionName)
}

// issuedBy is the metadata signature of a capability Secret: the session label, and an owner reference to the
// pod its pod-uid label names. It is what the deletion path checks, which sees metadata only.
func issuedBy(obj metav1.Object, sessionName string) bool {
	labels := obj.GetLabels()
	uid := labels[kilov1alpha1.PodUIDLabel]
	if labels[kilov1alpha1.SessionLabel] != sessionName || uid == "" {
		return false
	}
	for _, ref := range obj.GetOwnerReferences() {
		if ref.Kind == "Pod" && string(ref.UID) == uid {
			return true
		}
	}
	return false
}

func ownedByPod(s *corev1.Secret, podUID types.UID) bool {
	for _, ref := range s.OwnerReferences {
		if ref.UID == podUID && ref.Kind == "Pod" {
			return true
		}
	}
	return false
}

// planInput is what planCapabilities decides over.
type planInput struct {
	now         time.Time
	sessionName string
	// pods are the selected pods: matching, with a UID, neither finished nor being deleted.
	pods []*corev1.Pod
	// secrets are every capability Secret (by label) in the namespace, of any session.
	secrets []*corev1.Secret
	// inputs is nil when issuance is blocked; pods then keep what they hold, and nothing new is issued.
	inputs *issueInputs
	// renewBefore applies to existing capabilities even when inputs is nil (for their renewAt).
	renewBefore, lifetime time.Duration
	// revokeAll: the session is suspended.
	revokeAll bool
}

// planCapabilities decides, for every selected pod, whether its capability is kept, issued or blocked by a
// conflicting Secret, and which of the session's capability Secrets are revoked. Order of the checks matters: the
// ownership checks come first (never write a Secret that is not ours), then change detection (a changed input is
// re-issued at once, whatever the schedule), then the schedule.
func planCapabilities(in planInput) capabilityPlan {
	var plan capabilityPlan
	byName := make(map[string]*corev1.Secret, len(in.secrets))
	for _, s := range in.secrets {
		byName[s.Name] = s
	}
	if in.revokeAll {
		for _, s := range in.secrets {
			if revocable(s, in.sessionName) {
				plan.revoke = append(plan.revoke, s)
			}
		}
		sortSecrets(plan.revoke)
		return plan
	}

	// Pods that already hold the Secret their name points at are decided first, so that a second pod naming the
	// same Secret (the annotation is the pod author's to set) cannot take it from its holder, whatever the names.
	type namedPod struct {
		pod   *corev1.Pod
		name  string
		err   error
		holds bool
	}
	pods := make([]namedPod, len(in.pods))
	for i, p := range in.pods {
		name, err := CapabilitySecretName(p)
		pods[i] = namedPod{pod: p, name: name, err: err,
			holds: err == nil && byName[name] != nil && isCapabilityFor(byName[name], in.sessionName, p.UID)}
	}
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].holds != pods[j].holds {
			return pods[i].holds
		}
		return pods[i].pod.Name < pods[j].pod.Name
	})
	selectedUIDs := make(map[string]bool, len(pods))
	for _, p := range in.pods {
		selectedUIDs[string(p.UID)] = true
	}
	claimed := make(map[string]bool, len(pods)) // Secret names given to a pod earlier in this pass

	for _, np := range pods {
		pod, name := np.pod, np.name
		d := podDecision{pod: pod}
		if np.err != nil {
			d.conflict = np.err.Error()
			plan.pods = append(plan.pods, d)
			continue
		}
		d.secretName = name
		if claimed[name] {
			d.conflict = fmt.Sprintf("Pod %s names capability Secret %s, which another pod of the session already uses", pod.Name, name)
			plan.pods = append(plan.pods, d)
			continue
		}
		existing := byName[name]
		d.existing = existing

		switch {
		case existing == nil:
			// Absent from the capability cache. A Secret of that name without the capability labels may still
			// exist; the create will find out, and the reconciler reports it as a conflict then.
			d.issue, d.cause = true, causeNew
		case isCapabilityFor(existing, in.sessionName, pod.UID):
			decideExisting(&d, existing, in)
		case revocable(existing, in.sessionName) && !selectedUIDs[existing.Labels[kilov1alpha1.PodUIDLabel]]:
			// Our own Secret, left by an earlier pod of the same name (a re-created pod, a StatefulSet replica)
			// that is gone: it is this pod's now. It is rewritten in place, owner and label included.
			d.issue, d.cause = true, causeNew
		default:
			d.conflict = fmt.Sprintf("Secret %s already exists and is not this session's capability Secret for Pod %s; it is left untouched", name, pod.Name)
		}
		if d.conflict == "" {
			claimed[name] = true
		}
		if d.issue && in.inputs == nil {
			// Blocked: nothing new is issued. The pod keeps whatever valid capability it has.
			d.issue, d.cause = false, ""
			if existing != nil && isCapabilityFor(existing, in.sessionName, pod.UID) {
				if m, ok := readCapabilityMeta(existing); ok && m.expiresAt.After(in.now) {
					d.expiresAt, d.renewAt = m.expiresAt, renewAt(m.expiresAt, in.renewBefore, pod.UID)
				}
			}
		}
		plan.pods = append(plan.pods, d)
	}

	// Revoke the session's Secrets that no selected pod holds: pods that stopped matching, finished, are being
	// deleted, or are gone.
	for _, s := range in.secrets {
		if !revocable(s, in.sessionName) || claimed[s.Name] {
			continue
		}
		plan.revoke = append(plan.revoke, s)
	}
	sortSecrets(plan.revoke)
	sort.Slice(plan.pods, func(i, j int) bool { return plan.pods[i].pod.Name < plan.pods[j].pod.Name })
	return plan
}

// decideExisting schedules a pod whose Secret is already its capability.
func decideExisting(d *podDecision, existing *corev1.Secret, in planInput) {
	m, ok := readCapabilityMeta(existing)
	if in.inputs == nil {
		if ok && m.expiresAt.After(in.now) {
			d.expiresAt, d.renewAt = m.expiresAt, renewAt(m.expiresAt, in.renewBefore, d.pod.UID)
		}
		return
	}
	switch {
	case !ok, m.sourceHash != in.inputs.sourceHash(d.pod.UID), !ownedByPod(existing, d.pod.UID):
		// Unreadable annotations, a changed input (token value, targets, sealing key, ids) or a Secret someone
		// detached from its pod: re-issue now.
		d.issue, d.cause = true, causeSourceChange
	case m.expiresAt.Sub(in.now) > in.inputs.lifetime+lifetimeSlack:
		// Issued under a longer lifetime than the spec now allows: shortening the lifetime takes effect at once.
		d.issue, d.cause = true, causeSourceChange
	case !in.now.Before(renewAt(m.expiresAt, in.inputs.renewBefore, d.pod.UID)):
		d.issue, d.cause = true, causeRenewal
	default:
		d.expiresAt, d.renewAt = m.expiresAt, renewAt(m.expiresAt, in.inputs.renewBefore, d.pod.UID)
	}
}

func sortSecrets(s []*corev1.Secret) {
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
}

// formatTime is the annotation form of an instant: RFC 3339 in UTC with milliseconds, the token's resolution.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
