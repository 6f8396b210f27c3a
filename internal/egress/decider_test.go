package egress

import (
	"crypto/rand"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// realStack is the real redeem decision (codec, binding, revocation, policy, allow-list) over a MemoryState.
type realStack struct {
	keys  *redeem.KeyRingHolder
	ring  *capability.KeyRing
	state *redeem.MemoryState
	dec   *redeem.Decider
}

const sessionUID = "ks-uid-1"

func newRealStack(t testing.TB, e *env, origins ...string) *realStack {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	ring, err := capability.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := policy.ParseAllowList(origins)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := redeem.CompilePolicy(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &realStack{keys: redeem.NewKeyRingHolder(ring), ring: ring, state: redeem.NewMemoryState()}
	s.state.SetSession(sessionUID, redeem.SessionState{Namespace: "ns", Name: "ks", Policy: pol})
	for _, uid := range []string{"uid-a", "uid-b"} {
		s.state.SetPod(uid, redeem.PodState{Namespace: "ns", SessionName: "ks", Live: true})
	}
	s.dec, err = redeem.NewDecider(redeem.Config{Keys: s.keys, State: s.state, AllowList: allow, Logger: e.logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// issue seals a capability for pod uid whose three targets are origin.
func (s *realStack) issue(t testing.TB, uid, origin string) string {
	t.Helper()
	tok, _, err := capability.Issue(s.ring, capability.Subject{
		UserID: "user-1", CloudAgentSessionID: sessionUID, KiloSessionID: "ses_1", OutboundContainerID: uid,
		UserToken: capability.Secret(realToken),
		Targets:   capability.Targets{BackendBaseURL: origin, ProviderBaseURL: origin + "/api", SessionIngestBaseURL: origin + "/ingest"},
	}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestWithTheRealDecision(t *testing.T) {
	var s *realStack
	e := newEnvWith(t, Config{}, func(e *env) (Redeemer, CallerResolver) {
		s = newRealStack(t, e, e.tlsUp.srv.URL, e.plainUp.srv.URL)
		return s.dec, nil
	})
	tokA := s.issue(t, "uid-a", e.tlsUp.srv.URL)
	base := e.tlsUp.srv.URL

	t.Run("allowed: the upstream sees the user's token", func(t *testing.T) {
		resp, _ := e.do(addrA, "POST", base+"/api/openrouter/chat/completions", bearer(tokA))
		if resp.StatusCode != 200 || e.tlsUp.last(t).Header.Get("Authorization") != "Bearer "+realToken {
			t.Fatalf("got %d", resp.StatusCode)
		}
		if v := e.proxy.m.requests.WithLabelValues(string(policy.RouteProviderModel), outcomeForwarded); v == nil {
			t.Fatal("no metric")
		}
	})
	refused := func(t *testing.T, src netip.Addr, u, reason string, status int, tok string) {
		t.Helper()
		before := e.tlsUp.count()
		resp, body := e.do(src, "GET", u, bearer(tok))
		if _, r := refusalReason(t, body); resp.StatusCode != status || r != reason || e.tlsUp.count() != before {
			t.Fatalf("got %d %s (upstream +%d), want %d %s", resp.StatusCode, body, e.tlsUp.count()-before, status, reason)
		}
	}
	t.Run("another pod's capability is container_mismatch", func(t *testing.T) {
		refused(t, addrB, base+"/api/x", "container_mismatch", 403, tokA)
	})
	t.Run("a traversal is invalid_upstream_url", func(t *testing.T) {
		refused(t, addrA, base+"/api/openrouter/%2e%2e/%2e%2e/api/organizations/o/user-tokens", "invalid_upstream_url", 403, tokA)
	})
	t.Run("a host outside the targets is upstream_not_allowed", func(t *testing.T) {
		refused(t, addrA, e.plainUp.srv.URL+"/api/x", "upstream_not_allowed", 403, tokA)
	})
	t.Run("a tampered capability is invalid_capability", func(t *testing.T) {
		i := strings.LastIndexByte(tokA, ':') + 2
		bad := tokA[:i] + string(rune('A'+('B'-tokA[i])%2)) + tokA[i+1:]
		refused(t, addrA, base+"/api/x", "invalid_capability", 403, bad)
	})
	t.Run("a deleted pod is revoked at once", func(t *testing.T) {
		s.state.DeletePod("uid-a")
		refused(t, addrA, base+"/api/x", "capability_revoked", 403, tokA)
		s.state.SetPod("uid-a", redeem.PodState{Namespace: "ns", SessionName: "ks", Live: true})
	})
	t.Run("no key ring loaded is a 502, not the capability's fault", func(t *testing.T) {
		s.keys.Store(nil)
		refused(t, addrA, base+"/api/x", "capability_configuration_error", 502, tokA)
		s.keys.Store(s.ring)
	})
	t.Run("no capability, token or Authorization value in any log line", func(t *testing.T) {
		logs := e.logs.String()
		if !strings.Contains(logs, "container_mismatch") {
			t.Fatalf("refusals were not logged; the canary proves nothing:\n%s", logs)
		}
		for _, canary := range []string{tokA, tokA[5:40], realToken, "kka1."} {
			if strings.Contains(logs, canary) {
				t.Fatalf("logs contain %q", canary)
			}
		}
	})
}
