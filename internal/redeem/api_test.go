package redeem

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	gatewayToken = "gateway-sa-token-CANARY-4d2c"
	strangerTok  = "stranger-sa-token-CANARY-8e1f"
)

// fakeReviewer answers TokenReviews like the API server would for two ServiceAccount tokens.
type fakeReviewer struct {
	calls atomic.Int32
	fail  atomic.Bool
	// boundPod, when set, is the pod-uid extra of the gateway's token.
	boundPod string
}

func (r *fakeReviewer) Create(_ context.Context, tr *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	r.calls.Add(1)
	if r.fail.Load() {
		return nil, errors.New("connection refused")
	}
	out := tr.DeepCopy()
	aud := tr.Spec.Audiences
	switch tr.Spec.Token {
	case gatewayToken:
		out.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: aud,
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:gw:gateway"}}
		if r.boundPod != "" {
			out.Status.User.Extra = map[string]authenticationv1.ExtraValue{podUIDExtra: {r.boundPod}}
		}
	case strangerTok:
		out.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: aud,
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:gw:stranger"}}
	default:
		out.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
	}
	return out, nil
}

type apiFixture struct {
	*fixture
	reviewer *fakeReviewer
	auth     *TokenReviewAuthenticator
	server   *httptest.Server
}

func newAPIFixture(t *testing.T, log logr.Logger) *apiFixture {
	t.Helper()
	f := &apiFixture{fixture: newFixture(t, log), reviewer: &fakeReviewer{}}
	var err error
	f.auth, err = NewTokenReviewAuthenticator(TokenReviewConfig{
		Reviewer: f.reviewer, Allowed: []string{"gw/gateway"}, Now: f.clock.Now,
		IsSessionPod: func(uid string) bool { _, ok := f.state.Pod(uid); return ok },
	})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewAPIHandler(APIConfig{Redeemer: f.decider, Authenticator: f.auth, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.server = httptest.NewServer(NewMux(MuxConfig{API: h, Gatherer: f.reg,
		Ready: ReadyCheck(nil, f.decider)}))
	t.Cleanup(f.server.Close)
	return f
}

func (f *apiFixture) body(url string) string {
	b, _ := json.Marshal(map[string]string{
		"capability": f.token, "outboundContainerId": podUID, "requestUrl": url, "requestMethod": "GET",
	})
	return string(b)
}

type apiAnswer struct {
	status int
	header http.Header
	body   map[string]any
}

func (f *apiFixture) post(t *testing.T, bearer, contentType, body string) apiAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.server.URL+RedeemPath, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := f.server.Client().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", RedeemPath, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("response is not JSON: %v", err)
	}
	return apiAnswer{status: resp.StatusCode, header: resp.Header, body: out}
}

func TestRedeemAPI(t *testing.T) {
	f := newAPIFixture(t, logr.Discard())

	a := f.post(t, gatewayToken, "application/json", f.body(backendURL))
	if a.status != 200 || a.body["success"] != true || a.body["authorization"] != "Bearer "+userTokenCanary ||
		a.body["routeClass"] != "backend_api" {
		t.Fatalf("allowed redemption: status %d, success %v, routeClass %v", a.status, a.body["success"],
			a.body["routeClass"])
	}
	if a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control = %q on a response holding a credential", a.header.Get("Cache-Control"))
	}

	a = f.post(t, gatewayToken, "application/json; charset=UTF-8", f.body("https://evil.example/"))
	if a.status != 403 || a.body["success"] != false || a.body["reason"] != "upstream_not_allowed" {
		t.Fatalf("refused redemption: %d %v", a.status, a.body)
	}
	if _, ok := a.body["authorization"]; ok {
		t.Fatal("a refusal carries an authorization field")
	}

	for name, bearer := range map[string]string{
		"no token":                       "",
		"a token the API server rejects": "garbage",
		"a ServiceAccount not allowed":   strangerTok,
	} {
		a = f.post(t, bearer, "application/json", f.body(backendURL))
		if a.status != 401 || a.body["reason"] != "unauthenticated" {
			t.Fatalf("%s: %d %v", name, a.status, a.body)
		}
	}

	// Reviews are cached by token hash: the gateway's second and later calls cost no TokenReview.
	calls := f.reviewer.calls.Load()
	f.post(t, gatewayToken, "application/json", f.body(backendURL))
	if f.reviewer.calls.Load() != calls {
		t.Fatal("a cached caller was reviewed again")
	}
	f.clock.Step(31 * time.Second)
	f.post(t, gatewayToken, "application/json", f.body(backendURL))
	if f.reviewer.calls.Load() != calls+1 {
		t.Fatal("an expired review was not repeated")
	}

	// TokenReview unavailable and nothing cached: the caller may retry, so 503 rather than 401.
	f.reviewer.fail.Store(true)
	f.clock.Step(31 * time.Second)
	a = f.post(t, gatewayToken, "application/json", f.body(backendURL))
	if a.status != 503 || a.body["reason"] != "unauthenticated" {
		t.Fatalf("TokenReview down: %d %v", a.status, a.body)
	}
}

func TestRedeemAPIRefusesTokensBoundToSessionPods(t *testing.T) {
	f := newAPIFixture(t, logr.Discard())
	f.reviewer.boundPod = podUID // the allow-listed ServiceAccount, but its token lives in a session pod
	if a := f.post(t, gatewayToken, "application/json", f.body(backendURL)); a.status != 401 {
		t.Fatalf("token bound to a session pod: %d %v", a.status, a.body)
	}
	f.reviewer.boundPod = "some-gateway-pod"
	f.clock.Step(time.Minute)
	if a := f.post(t, gatewayToken, "application/json", f.body(backendURL)); a.status != 200 {
		t.Fatalf("token bound to a gateway pod: %d %v", a.status, a.body)
	}
}

func TestRedeemAPIRejectsMalformedRequests(t *testing.T) {
	f := newAPIFixture(t, logr.Discard())
	valid := f.body(backendURL)
	cases := []struct {
		name, contentType, body string
	}{
		{"Body over 128 KiB", "application/json",
			`{"capability":"` + strings.Repeat("a", MaxRedeemBody) + `","outboundContainerId":"x","requestUrl":"u","requestMethod":"GET"}`},
		{"Wrong content type", "text/plain", valid},
		{"No content type", "", valid},
		{"Content type with a foreign charset", "application/json; charset=latin1", valid},
		{"Unknown field", "application/json", strings.TrimSuffix(valid, "}") + `,"extra":"x"}`},
		{"Non-string field", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":1`, 1)},
		{"Null field", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":null`, 1)},
		{"Object field", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":{}`, 1)},
		{"Missing capability", "application/json", `{"outboundContainerId":"x","requestUrl":"u","requestMethod":"GET"}`},
		{"Empty outboundContainerId", "application/json",
			strings.Replace(valid, `"outboundContainerId":"`+podUID+`"`, `"outboundContainerId":""`, 1)},
		{"Duplicate field", "application/json", strings.TrimSuffix(valid, "}") + `,"requestMethod":"POST"}`},
		{"Duplicate field spelled with an escape", "application/json", strings.TrimSuffix(valid, "}") + `,"request\u004dethod":"POST"}`},
		// A method that is not an HTTP token is no request an upstream would serve; judged as given, "GET\u0000"
		// or "GET " would step around a deny rule written for GET.
		{"Method with a NUL", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":"GET\u0000"`, 1)},
		{"Method with a space", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":"GET "`, 1)},
		{"Method that is a request line", "application/json", strings.Replace(valid, `"requestMethod":"GET"`, `"requestMethod":"GET /x HTTP/1.1"`, 1)},
		{"Trailing data", "application/json", valid + `{}`},
		{"Trailing garbage", "application/json", valid + `x`},
		{"Empty body", "application/json", ``},
		{"Array", "application/json", `[` + valid + `]`},
		{"Truncated", "application/json", valid[:len(valid)/2]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := f.post(t, gatewayToken, c.contentType, c.body)
			if a.status != 400 || a.body["success"] != false || a.body["reason"] != "invalid_request" {
				t.Fatalf("status %d, body %v", a.status, a.body)
			}
		})
	}
	// Trailing whitespace is not data.
	if a := f.post(t, gatewayToken, "application/json", valid+" \n"); a.status != 200 {
		t.Fatalf("valid body with a trailing newline: %d %v", a.status, a.body)
	}
	// Other methods and paths.
	resp, err := f.server.Client().Get(f.server.URL + RedeemPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET %s: %d", RedeemPath, resp.StatusCode)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	f := newAPIFixture(t, logr.Discard())
	get := func(path string) (int, string) {
		resp, err := f.server.Client().Get(f.server.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if s, _ := get("/healthz"); s != 200 {
		t.Fatalf("/healthz %d", s)
	}
	if s, _ := get("/readyz"); s != 200 {
		t.Fatalf("/readyz with a key ring: %d", s)
	}
	f.keys.Store(nil)
	if s, body := get("/readyz"); s != 503 || !strings.Contains(body, "key ring") {
		t.Fatalf("/readyz without a key ring: %d %q", s, body)
	}
	f.post(t, gatewayToken, "application/json", f.body(backendURL))
	if s, body := get("/metrics"); s != 200 || !strings.Contains(body, `kilo_redeem_total{outcome="refused",reason="capability_configuration_error"`) {
		t.Fatalf("/metrics: %d", s)
	}
}

func TestParseRedeemBodyAcceptsTheOriginalShape(t *testing.T) {
	req, ok := parseRedeemBody([]byte(`{"capability":"kka1.a","outboundContainerId":"p","requestUrl":"https://x/\u0041",` +
		`"requestMethod":"POST","bootstrapKiloSessionId":"s"}`))
	want := Request{Capability: "kka1.a", CallerPodUID: "p", URL: "https://x/A", Method: "POST", BootstrapSessionID: "s"}
	if !ok || req != want {
		t.Fatalf("parsed %+v ok=%v", req, ok)
	}
}

func FuzzParseRedeemBody(f *testing.F) {
	for _, s := range []string{
		`{"capability":"kka1.a","outboundContainerId":"p","requestUrl":"u","requestMethod":"GET"}`,
		`{"capability":"a","outboundContainerId":"p","requestUrl":"u","requestMethod":"GET","bootstrapKiloSessionId":"b"}`,
		`{"capability":"a","capability":"b"}`, `{"a":1}`, `[]`, `{}`, `{"capability":"\ud800"}`, `{"capability":"a"}{}`,
		``, `nul`, `{"capability":"a",}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, ok := parseRedeemBody(body)
		if !ok {
			return
		}
		if req.Capability == "" || req.CallerPodUID == "" || req.URL == "" || req.Method == "" {
			t.Fatalf("accepted a body missing a required field: %q", body)
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON: %q", body)
		}
		// What was accepted must mean the same to encoding/json (no duplicate or unknown members).
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil || m["capability"] != req.Capability ||
			m["outboundContainerId"] != req.CallerPodUID || m["requestUrl"] != req.URL {
			t.Fatalf("parsed differently from encoding/json: %q", body)
		}
	})
}
