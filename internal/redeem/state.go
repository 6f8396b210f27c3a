package redeem

import (
	"sync"

	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// PodState is what the revocation check needs to know about a session pod.
type PodState struct {
	Namespace string
	// SessionName is the value of the pod's kilo.ai/session label: the KiloSession it belongs to.
	SessionName string
	// Live is false once the pod is being deleted or has terminated (phase Succeeded or Failed): a capability
	// bound to it is revoked from that moment, not only when the object finally disappears.
	Live bool
}

// SessionState is what the revocation check and the classifier need to know about a KiloSession.
type SessionState struct {
	Namespace string
	Name      string
	Suspended bool
	// Policy is the session's backendDenyRules compiled together with the operator-wide deny rules. It is nil
	// only when PolicyErr is set: the rules did not compile, and redemption then fails closed.
	Policy    *policy.Policy
	PolicyErr error
}

// State answers revocation questions from memory. Implementations must be safe for concurrent use and must not
// make an API call per lookup: they are on the redeem hot path.
type State interface {
	// Pod returns the state of the session pod with that UID, or false when no such pod exists. A pod
	// recreated under the same name has a new UID, so a capability bound to the old one finds nothing.
	Pod(uid string) (PodState, bool)
	// Session returns the state of the KiloSession with that UID, or false when none exists.
	Session(uid string) (SessionState, bool)
}

// MemoryState is a State held in maps. The informer-backed State feeds one from watch events; tests and other
// front doors can set it directly.
type MemoryState struct {
	mu       sync.RWMutex
	pods     map[string]PodState
	sessions map[string]SessionState
}

// NewMemoryState returns an empty MemoryState.
func NewMemoryState() *MemoryState {
	return &MemoryState{pods: map[string]PodState{}, sessions: map[string]SessionState{}}
}

// Pod implements State.
func (s *MemoryState) Pod(uid string) (PodState, bool) {
	s.mu.RLock()
	p, ok := s.pods[uid]
	s.mu.RUnlock()
	return p, ok
}

// Session implements State.
func (s *MemoryState) Session(uid string) (SessionState, bool) {
	s.mu.RLock()
	ss, ok := s.sessions[uid]
	s.mu.RUnlock()
	return ss, ok
}

// SetPod records or replaces the pod with that UID.
func (s *MemoryState) SetPod(uid string, p PodState) {
	s.mu.Lock()
	s.pods[uid] = p
	s.mu.Unlock()
}

// DeletePod forgets the pod with that UID.
func (s *MemoryState) DeletePod(uid string) {
	s.mu.Lock()
	delete(s.pods, uid)
	s.mu.Unlock()
}

// SetSession records or replaces the KiloSession with that UID.
func (s *MemoryState) SetSession(uid string, ss SessionState) {
	s.mu.Lock()
	s.sessions[uid] = ss
	s.mu.Unlock()
}

// DeleteSession forgets the KiloSession with that UID.
func (s *MemoryState) DeleteSession(uid string) {
	s.mu.Lock()
	delete(s.sessions, uid)
	s.mu.Unlock()
}

// CompilePolicy compiles a session's deny rules together with the operator-wide ones. Operator rules come
// first; the set is a union, so the order does not change a decision.
func CompilePolicy(operator, session []policy.DenyRule) (*policy.Policy, error) {
	rules := make([]policy.DenyRule, 0, len(operator)+len(session))
	rules = append(rules, operator...)
	rules = append(rules, session...)
	return policy.New(rules)
}
