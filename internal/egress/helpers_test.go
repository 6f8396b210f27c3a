package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// Shaped like real kka1 tokens (three base64 parts), so the proxy's capability scanner treats them as such.
const (
	capA      = "kka1.QUFBQUFBQUFBQUFBQUFBQQ==:VEFHVEFHVEFHVEFHVEFHVA==:Y2FwYWJpbGl0eS1mb3ItcG9kLWE="
	capB      = "kka1.QkJCQkJCQkJCQkJCQkJCQg==:VEFHVEFHVEFHVEFHVEFHVA==:Y2FwYWJpbGl0eS1mb3ItcG9kLWI="
	realToken = "real-user-token-7d1f0c"
)

// testCA is a minimal LeafIssuer for tests that do not need internal/pki.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	issued atomic.Int32
}

// fataler is what test helpers need of testing.TB and GinkgoT alike.
type fataler interface {
	Helper()
	Fatal(args ...any)
}

func newTestCA(t fataler) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "egress test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) IssueLeaf(hosts []string, validity time.Duration, now time.Time) (*tls.Certificate, error) {
	ca.issued.Add(1)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

type staticCA struct{ ca LeafIssuer }

func (s staticCA) CA() LeafIssuer { return s.ca }

// fakeCallers maps source addresses to pods.
type fakeCallers struct {
	mu sync.Mutex
	m  map[netip.Addr]Caller
}

func (f *fakeCallers) Resolve(_ context.Context, a netip.Addr) (Caller, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.m[a]
	return c, ok
}

type fakeTargets struct {
	mu sync.Mutex
	m  map[string]bool
}

func (f *fakeTargets) IsTarget(hp string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[hp]
}

func (f *fakeTargets) add(hp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[hp] = true
}

// fakeRedeemer stands in for the redeem decision: each capability is bound to a pod UID and allows any URL under
// one origin, like a real one with backend_api targets.
type fakeRedeemer struct {
	mu      sync.Mutex
	binding map[string]string // capability → pod UID
	origin  map[string]string // capability → allowed URL prefix
	fail    error             // when set, Decide returns it (infrastructure failure)
	seen    []redeem.Request
}

func (f *fakeRedeemer) Decide(_ context.Context, r redeem.Request) (redeem.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, r)
	if f.fail != nil {
		return redeem.Result{}, f.fail
	}
	uid, ok := f.binding[r.Capability]
	if !ok {
		return redeem.Result{}, &redeem.Refusal{Reason: redeem.Reason(capability.ReasonInvalid)}
	}
	if uid != r.CallerPodUID {
		return redeem.Result{}, &redeem.Refusal{Reason: redeem.ReasonContainerMismatch}
	}
	if !strings.HasPrefix(r.URL, f.origin[r.Capability]+"/") || strings.Contains(r.URL, "/forbidden") {
		return redeem.Result{}, &redeem.Refusal{Reason: redeem.Reason(policy.ReasonUpstreamNotAllowed)}
	}
	return redeem.Result{RouteClass: policy.RouteBackendAPI, Authorization: capability.Secret("Bearer " + realToken)}, nil
}

func (f *fakeRedeemer) lastURL() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		return ""
	}
	return f.seen[len(f.seen)-1].URL
}

// upstream records what reached it.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []recorded
	// sseStep is closed by the test to let /sse send its second event.
	sseStep chan struct{}
	block   chan struct{} // /block waits on it
}

type recorded struct {
	Method, RequestURI, Host string
	Header                   http.Header
	Body                     string
}

func (u *upstream) handler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, recorded{r.Method, r.RequestURI, r.Host, r.Header.Clone(), string(body)})
	u.mu.Unlock()
	switch {
	case strings.HasPrefix(r.URL.Path, "/sse"):
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		<-u.sseStep
		fmt.Fprint(w, "data: two\n\n")
	case strings.HasPrefix(r.URL.Path, "/redirect"):
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	case strings.HasPrefix(r.URL.Path, "/echo"):
		w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
		w.Header().Set("Proxy-Authenticate", "Basic realm=x")
		w.Header().Set("Proxy-Extra", "1")
		fmt.Fprint(w, "ok")
	case strings.HasPrefix(r.URL.Path, "/trailer-echo"):
		// A debug endpoint that reflects the credential in a trailer, which reaches the client after the body.
		w.Header().Set("Trailer", "X-Echo-Authorization")
		fmt.Fprint(w, "ok")
		http.NewResponseController(w).Flush()
		w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
		w.Header().Set(http.TrailerPrefix+"X-Undeclared-Echo", "token="+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		w.Header().Set(http.TrailerPrefix+"X-Harmless", "kept")
	case strings.HasPrefix(r.URL.Path, "/block"):
		<-u.block
		fmt.Fprint(w, "unblocked")
	default:
		fmt.Fprint(w, "hello from upstream")
	}
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

func (u *upstream) last(t *testing.T) recorded {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("upstream received nothing")
	}
	return u.reqs[len(u.reqs)-1]
}

// env is one proxy with a TLS and a plain upstream on loopback, pods A (127.0.0.2) and B (127.0.0.3).
type env struct {
	t        *testing.T
	proxy    *Proxy
	proxyURL *url.URL
	ca       *testCA
	tlsUp    *upstream
	plainUp  *upstream
	red      *fakeRedeemer
	callers  *fakeCallers
	targets  *fakeTargets
	reg      *prometheus.Registry
	logs     *logSink
}

var (
	addrA = netip.MustParseAddr("127.0.0.2")
	addrB = netip.MustParseAddr("127.0.0.3")
	addrX = netip.MustParseAddr("127.0.0.9") // no pod
)

func newEnv(t *testing.T, cfg Config) *env { return newEnvWith(t, cfg, nil) }

// newEnvWith builds the env with the Redeemer (and CallerResolver, if non-nil) that mk returns once the upstreams
// exist; mk nil keeps the fakes.
func newEnvWith(t *testing.T, cfg Config, mk func(e *env) (Redeemer, CallerResolver)) *env {
	t.Helper()
	e := &env{t: t, ca: newTestCA(t), reg: prometheus.NewRegistry(), logs: &logSink{}}
	for _, up := range []**upstream{&e.tlsUp, &e.plainUp} {
		u := &upstream{sseStep: make(chan struct{}), block: make(chan struct{})}
		*up = u
	}
	e.tlsUp.srv = httptest.NewUnstartedServer(http.HandlerFunc(e.tlsUp.handler))
	e.tlsUp.srv.EnableHTTP2 = true
	e.tlsUp.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the localhost test's failed handshakes are expected
	e.tlsUp.srv.StartTLS()
	e.plainUp.srv = httptest.NewServer(http.HandlerFunc(e.plainUp.handler))
	t.Cleanup(func() {
		for _, u := range []*upstream{e.tlsUp, e.plainUp} {
			closeOnce(u.sseStep)
			closeOnce(u.block)
			u.srv.Close()
		}
	})

	tlsOrigin := e.tlsUp.srv.URL // https://127.0.0.1:PORT
	plainOrigin := e.plainUp.srv.URL
	e.red = &fakeRedeemer{
		binding: map[string]string{capA: "uid-a", capB: "uid-b"},
		origin:  map[string]string{capA: tlsOrigin, capB: tlsOrigin},
	}
	e.callers = &fakeCallers{m: map[netip.Addr]Caller{
		addrA: {Namespace: "ns", Name: "pod-a", UID: "uid-a"},
		addrB: {Namespace: "ns", Name: "pod-b", UID: "uid-b"},
	}}
	e.targets = &fakeTargets{m: map[string]bool{
		strings.TrimPrefix(tlsOrigin, "https://"):  true,
		strings.TrimPrefix(plainOrigin, "http://"): true,
	}}
	if cfg.UpstreamRoots == nil {
		roots := x509.NewCertPool()
		roots.AddCert(e.tlsUp.srv.Certificate())
		cfg.UpstreamRoots = roots
	}
	var red Redeemer = e.red
	var callers CallerResolver = e.callers
	if mk != nil {
		r, c := mk(e)
		red = r
		if c != nil {
			callers = c
		}
	}
	p, err := New(cfg, Deps{
		Redeemer: red, Callers: callers, Targets: e.targets, CA: staticCA{e.ca},
		Log: e.logs.logger(), Registerer: e.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	e.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	return e
}

func closeOnce(c chan struct{}) {
	select {
	case <-c:
	default:
		close(c)
	}
}

// client returns an HTTP client whose connections to the proxy come from src.
func (e *env) client(src netip.Addr, h2 bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	tr := &http.Transport{
		Proxy:             http.ProxyURL(e.proxyURL),
		DialContext:       d.DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: e.ca.pool()},
		ForceAttemptHTTP2: h2,
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do sends method url with optional headers through the proxy from src.
func (e *env) do(src netip.Addr, method, u string, hdr map[string]string) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.client(src, false).Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// raw writes a raw request on a connection to the proxy from src and reads one response.
func (e *env) raw(src netip.Addr, request string) (*http.Response, string) {
	e.t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		e.t.Fatalf("reading response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func refusalReason(t *testing.T, body string) (string, string) {
	t.Helper()
	var v struct{ Error, Reason string }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("response body %q is not the JSON refusal: %v", body, err)
	}
	return v.Error, v.Reason
}

// logSink collects every log line at every verbosity.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.buf.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{Verbosity: 10})
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
