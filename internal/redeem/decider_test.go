package redeem

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

const (
	podUID     = "6a1d0c3e-0000-4000-8000-000000000001"
	sessionUID = "9b2e1f4a-0000-4000-8000-000000000002"
	kiloSessID = "ses_abc123"
	// Canary values: tests grep every log line, error and metric for them.
	userTokenCanary     = "user-CANARY-7f3a9c2e51"
	providerTokenCanary = "provider-CANARY-1b8d4e6f02"
)

var epoch = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func mustRing(t testing.TB, keys ...[]byte) *capability.KeyRing {
	t.Helper()
	r, err := capability.NewKeyRing(keys...)
	if err != nil {
		t.Fatalf("building key ring: %v", err)
	}
	return r
}

func testSubject() capability.Subject {
	return capability.Subject{
		UserID:              "user-1",
		CloudAgentSessionID: sessionUID,
		KiloSessionID:       kiloSessID,
		OutboundContainerID: podUID,
		UserToken:           userTokenCanary,
		ProviderToken:       providerTokenCanary,
		Targets: capability.Targets{
			BackendBaseURL:       "https://api.kilo.ai",
			ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
			SessionIngestBaseURL: "https://ingest.kilosessions.ai",
		},
	}
}

// fixture is one decider over a live pod and session, with a valid capability for them.
type fixture struct {
	t       testing.TB
	clock   *clocktesting.FakeClock
	ring    *capability.KeyRing
	keys    *KeyRingHolder
	state   *MemoryState
	reg     *prometheus.Registry
	decider *Decider
	token   string
}

func newFixture(t testing.TB, log logr.Logger) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(epoch), ring: mustRing(t, testKey(1)),
		state: NewMemoryState(), reg: prometheus.NewRegistry()}
	f.keys = NewKeyRingHolder(f.ring)
	f.state.SetPod(podUID, PodState{Namespace: "team", SessionName: "s1", Live: true})
	f.setSession(sessionUID, SessionState{Namespace: "team", Name: "s1"}, nil)
	d, err := NewDecider(Config{Keys: f.keys, State: f.state, Now: f.clock.Now, Metrics: f.reg, Logger: log})
	if err != nil {
		t.Fatalf("NewDecider: %v", err)
	}
	f.decider = d
	f.token = f.issue(testSubject(), time.Hour)
	return f
}

func (f *fixture) issue(s capability.Subject, lifetime time.Duration) string {
	f.t.Helper()
	tok, _, err := capability.Issue(f.ring, s, f.clock.Now(), lifetime)
	if err != nil {
		f.t.Fatalf("issuing a capability: %v", err)
	}
	return tok
}

func (f *fixture) setSession(uid string, ss SessionState, rules []policy.DenyRule) {
	f.t.Helper()
	p, err := CompilePolicy([]policy.DenyRule{{Path: "/api/operator-denied/**"}}, rules)
	if err != nil {
		f.t.Fatalf("compiling deny rules: %v", err)
	}
	ss.Policy = p
	f.state.SetSession(uid, ss)
}

func (f *fixture) req(url string) Request {
	return Request{Capability: f.token, CallerPodUID: podUID, URL: url, Method: "GET"}
}

func reasonOf(err error) Reason {
	var ref *Refusal
	if errors.As(err, &ref) {
		return ref.Reason
	}
	return ""
}

const (
	backendURL  = "https://api.kilo.ai/api/profile"
	providerURL = "https://api.kilo.ai/api/openrouter/chat/completions"
)

func TestDecisionTable(t *testing.T) {
	type tc struct {
		name string
		// subject adjusts what the capability is issued for; token replaces it outright.
		subject func(s *capability.Subject)
		token   func(f *fixture) string
		// change alters the world after the capability was issued (and, in the cached run, decoded once).
		change func(f *fixture)
		url    string
		method string
		caller string // "" means the bound pod
		// coldOnly: the capability never decodes, so there is nothing to cache.
		coldOnly   bool
		wantReason Reason
		wantRoute  policy.RouteClass
		wantAuth   string
	}
	cases := []tc{
		{name: "Provider route gets the provider token", url: providerURL, method: "POST",
			wantRoute: policy.RouteProviderModel, wantAuth: "Bearer " + providerTokenCanary},
		{name: "Organization models get the provider token",
			url:       "https://api.kilo.ai/api/organizations/org-1/models",
			wantRoute: policy.RouteOrganizationModels, wantAuth: "Bearer " + providerTokenCanary},
		{name: "Backend API gets the user token", url: backendURL,
			wantRoute: policy.RouteBackendAPI, wantAuth: "Bearer " + userTokenCanary},
		{name: "Session ingest of the bound session gets the user token",
			url:       "https://ingest.kilosessions.ai/api/session/" + kiloSessID + "/ingest",
			wantRoute: policy.RouteSessionIngest, wantAuth: "Bearer " + userTokenCanary},
		{name: "Provider route without a provider token falls back to the user token", url: providerURL,
			subject:   func(s *capability.Subject) { s.ProviderToken = "" },
			wantRoute: policy.RouteProviderModel, wantAuth: "Bearer " + userTokenCanary},
		{name: "Malformed capability is invalid", coldOnly: true, url: backendURL,
			token:      func(*fixture) string { return "kka1.nope" },
			wantReason: ReasonInvalid},
		{name: "Capability sealed with a key outside the ring is invalid", coldOnly: true, url: backendURL,
			token: func(f *fixture) string {
				tok, _, err := capability.Issue(mustRing(t, testKey(9)), testSubject(), f.clock.Now(), time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			wantReason: ReasonInvalid},
		{name: "Expired capability is expired", url: backendURL,
			change:     func(f *fixture) { f.clock.Step(time.Hour) },
			wantReason: ReasonExpired},
		{name: "No key ring loaded is a configuration error", url: backendURL,
			change:     func(f *fixture) { f.keys.Store(nil) },
			wantReason: ReasonConfiguration},
		{name: "Another pod presenting the capability is a container mismatch", url: backendURL,
			caller: "6a1d0c3e-0000-4000-8000-000000000009", wantReason: ReasonContainerMismatch},
		{name: "Binding is checked before the URL", url: "https://api.kilo.ai/a/../b",
			caller: "other-pod", wantReason: ReasonContainerMismatch},
		{name: "Binding is checked before revocation", url: backendURL, caller: "other-pod",
			change: func(f *fixture) { f.state.DeletePod(podUID) }, wantReason: ReasonContainerMismatch},
		{name: "Deleted pod revokes", url: backendURL,
			change: func(f *fixture) { f.state.DeletePod(podUID) }, wantReason: ReasonRevoked},
		{name: "Pod recreated with the same name and a new UID revokes", url: backendURL,
			change: func(f *fixture) {
				f.state.DeletePod(podUID)
				f.state.SetPod("6a1d0c3e-0000-4000-8000-00000000000a",
					PodState{Namespace: "team", SessionName: "s1", Live: true})
			},
			wantReason: ReasonRevoked},
		{name: "Terminating pod revokes", url: backendURL,
			change: func(f *fixture) {
				f.state.SetPod(podUID, PodState{Namespace: "team", SessionName: "s1", Live: false})
			},
			wantReason: ReasonRevoked},
		{name: "Pod moved to another session revokes", url: backendURL,
			change: func(f *fixture) {
				f.state.SetPod(podUID, PodState{Namespace: "team", SessionName: "s2", Live: true})
			},
			wantReason: ReasonRevoked},
		{name: "Deleted session revokes", url: backendURL,
			change: func(f *fixture) { f.state.DeleteSession(sessionUID) }, wantReason: ReasonRevoked},
		{name: "Suspended session revokes", url: backendURL,
			change: func(f *fixture) {
				f.setSession(sessionUID, SessionState{Namespace: "team", Name: "s1", Suspended: true}, nil)
			},
			wantReason: ReasonRevoked},
		{name: "Session recreated with the same name and a new UID revokes", url: backendURL,
			change: func(f *fixture) {
				f.state.DeleteSession(sessionUID)
				f.setSession("9b2e1f4a-0000-4000-8000-00000000000b", SessionState{Namespace: "team", Name: "s1"}, nil)
			},
			wantReason: ReasonRevoked},
		{name: "Session whose deny rules do not compile fails closed", url: backendURL,
			change: func(f *fixture) {
				f.state.SetSession(sessionUID, SessionState{Namespace: "team", Name: "s1", PolicyErr: errors.New("bad")})
			},
			wantReason: ReasonConfiguration},
		{name: "Traversal in the URL is an invalid upstream URL", url: "https://api.kilo.ai/api/%2e%2e/admin",
			wantReason: ReasonInvalidUpstreamURL},
		{name: "URL outside the targets is not allowed", url: "https://evil.example/api/profile",
			wantReason: ReasonUpstreamNotAllowed},
		{name: "Credential-minting route is not allowed",
			url: "https://api.kilo.ai/api/organizations/org-1/user-tokens", wantReason: ReasonUpstreamNotAllowed},
		{name: "Operator deny rule is not allowed", url: "https://api.kilo.ai/api/operator-denied/x",
			wantReason: ReasonUpstreamNotAllowed},
		{name: "Session deny rule is not allowed", url: "https://api.kilo.ai/api/admin/users",
			change: func(f *fixture) {
				f.setSession(sessionUID, SessionState{Namespace: "team", Name: "s1"},
					[]policy.DenyRule{{Path: "/api/admin/**"}})
			},
			wantReason: ReasonUpstreamNotAllowed},
		{name: "Targets wider than the allow-list are cut back to it", url: "https://staging.kilo.ai/api/profile",
			subject:    func(s *capability.Subject) { s.Targets.BackendBaseURL = "https://staging.kilo.ai" },
			wantReason: ReasonUpstreamNotAllowed},
	}
	for _, c := range cases {
		for _, cached := range []bool{false, true} {
			if cached && c.coldOnly {
				continue
			}
			name := c.name
			if cached {
				name += " with cached claims"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, logr.Discard())
				if c.subject != nil {
					s := testSubject()
					c.subject(&s)
					f.token = f.issue(s, time.Hour)
				}
				if c.token != nil {
					f.token = c.token(f)
				}
				if cached {
					// Decoding caches the claims whatever the outcome; the decision below must still re-check
					// expiry, binding, revocation and the URL.
					_, _ = f.decider.Decide(context.Background(), f.req(backendURL))
				}
				if c.change != nil {
					c.change(f)
				}
				req := f.req(c.url)
				if c.method != "" {
					req.Method = c.method
				}
				if c.caller != "" {
					req.CallerPodUID = c.caller
				}
				hitsBefore := testutil.ToFloat64(f.decider.metrics.cacheHit)
				res, err := f.decider.Decide(context.Background(), req)
				if hits := testutil.ToFloat64(f.decider.metrics.cacheHit) - hitsBefore; cached && hits != 1 &&
					c.wantReason != ReasonConfiguration {
					t.Fatalf("the cached run did not hit the claims cache (hits %v)", hits)
				}
				if c.wantReason != "" {
					if got := reasonOf(err); got != c.wantReason {
						t.Fatalf("reason = %q (err %v), want %q", got, err, c.wantReason)
					}
					if res != (Result{}) {
						t.Fatalf("a refusal returned a result: route %q", res.RouteClass)
					}
					return
				}
				if err != nil {
					t.Fatalf("refused: %v (%s)", err, err.(*Refusal).Detail)
				}
				if res.RouteClass != c.wantRoute || string(res.Authorization) != c.wantAuth {
					t.Fatalf("got route %q (authorization matches: %v), want route %q", res.RouteClass,
						string(res.Authorization) == c.wantAuth, c.wantRoute)
				}
			})
		}
	}
}
