package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func bearer(c string) map[string]string { return map[string]string{"Authorization": "Bearer " + c} }

func TestConnectRedeemsAndSwapsTheCredential(t *testing.T) {
	e := newEnv(t, Config{})
	// A path and query the redeem decision must see byte for byte: escapes kept as sent, an opaque query.
	pathQuery := "/api/a%2Bb/c?q=x%20y&z=%zz&k=a+b"
	resp, body := e.do(addrA, "GET", e.tlsUp.srv.URL+pathQuery, bearer(capA))
	if resp.StatusCode != 200 || body != "hello from upstream" {
		t.Fatalf("got %d %q, want 200 from upstream", resp.StatusCode, body)
	}
	got := e.tlsUp.last(t)
	if a := got.Header.Get("Authorization"); a != "Bearer "+realToken {
		t.Fatalf("upstream saw Authorization %q, want the real token", a)
	}
	if got.RequestURI != pathQuery {
		t.Errorf("upstream request-target %q, want %q byte for byte", got.RequestURI, pathQuery)
	}
	if want := e.tlsUp.srv.URL + pathQuery; e.red.lastURL() != want {
		t.Errorf("redeem decision judged %q, want %q", e.red.lastURL(), want)
	}
	for _, r := range e.tlsUp.reqs {
		for k, vs := range r.Header {
			for _, v := range vs {
				if strings.Contains(v, "kka1.") {
					t.Fatalf("upstream saw a capability in %s", k)
				}
			}
		}
	}
}

func TestConnectServesHTTP2WhenOffered(t *testing.T) {
	e := newEnv(t, Config{})
	req, _ := http.NewRequest("GET", e.tlsUp.srv.URL+"/h2", nil)
	req.Header.Set("Authorization", "bearer "+capA) // scheme is case-insensitive
	resp, err := e.client(addrA, true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("got %d over HTTP/%d, want 200 over HTTP/2", resp.StatusCode, resp.ProtoMajor)
	}
	if a := e.tlsUp.last(t).Header.Get("Authorization"); a != "Bearer "+realToken {
		t.Fatalf("upstream saw %q", a)
	}
}

func TestPlainAbsoluteFormIsRedeemed(t *testing.T) {
	e := newEnv(t, Config{})
	e.red.origin[capA] = e.plainUp.srv.URL
	resp, _ := e.do(addrA, "POST", e.plainUp.srv.URL+"/v1/x?y=1", bearer(capA))
	if resp.StatusCode != 200 {
		t.Fatalf("got %d", resp.StatusCode)
	}
	if a := e.plainUp.last(t).Header.Get("Authorization"); a != "Bearer "+realToken {
		t.Fatalf("upstream saw %q", a)
	}
	if want := e.plainUp.srv.URL + "/v1/x?y=1"; e.red.lastURL() != want {
		t.Fatalf("decision judged %q, want %q", e.red.lastURL(), want)
	}
}

func TestRefusalsNeverReachTheUpstream(t *testing.T) {
	e := newEnv(t, Config{})
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x:"+capA))
	kka2 := strings.Replace(capA, "kka1.", "kka2.", 1)
	cases := []struct {
		name       string
		src        netip.Addr
		path       string
		hdr        map[string]string
		wantStatus int
		wantReason string
	}{
		{"a URL outside the capability's targets", addrA, "/forbidden", bearer(capA), 403, "upstream_not_allowed"},
		{"a capability from another pod's address", addrB, "/x", bearer(capA), 403, "container_mismatch"},
		{"a capability from an address no pod has", addrX, "/x", bearer(capA), 403, "unknown_caller"},
		{"a capability in the query string", addrA, "/x?token=" + capA, nil, 403, "invalid_capability"},
		{"a percent-encoded capability in the query", addrA, "/x?token=" + strings.ReplaceAll(capA, ".", "%2E"), nil, 403, "invalid_capability"},
		{"a capability as a Basic password", addrA, "/x", map[string]string{"Authorization": basic}, 403, "invalid_capability"},
		{"a capability in another header", addrA, "/x", map[string]string{"X-Api-Key": capA}, 403, "invalid_capability"},
		{"a capability in a cookie", addrA, "/x", map[string]string{"Cookie": "s=" + capA}, 403, "invalid_capability"},
		{"an unknown token version", addrA, "/x", bearer(kka2), 403, "invalid_capability"},
		{"a capability in Proxy-Authorization", addrA, "/x", map[string]string{"Proxy-Authorization": "Bearer " + capA}, 403, "invalid_capability"},
		{"a capability both in Authorization and elsewhere", addrA, "/x", map[string]string{"Authorization": "Bearer " + capA, "X-Copy": capA}, 403, "invalid_capability"},
		{"a token the decision does not know", addrA, "/x", bearer("kka1.Tk9UQVRPS0VOTk9UQVRPSw==:VEFHVEFHVEFHVEFHVEFHVA==:eA=="), 403, "invalid_capability"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.tlsUp.count()
			resp, body := e.do(tc.src, "GET", e.tlsUp.srv.URL+tc.path, tc.hdr)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.wantStatus, body)
			}
			if code, reason := refusalReason(t, body); code != "kilo_capability_refused" || reason != tc.wantReason {
				t.Fatalf("refusal %s/%s, want kilo_capability_refused/%s", code, reason, tc.wantReason)
			}
			if e.tlsUp.count() != before {
				t.Fatal("a refused request reached the upstream")
			}
			if strings.Contains(body, "kka") || strings.Contains(body, realToken) {
				t.Fatal("refusal body echoes credential material")
			}
		})
	}
}

func TestRedeemFailureIs502AndNotForwarded(t *testing.T) {
	e := newEnv(t, Config{})
	e.red.fail = errors.New("key ring not loaded")
	resp, body := e.do(addrA, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	if resp.StatusCode != 502 || e.tlsUp.count() != 0 {
		t.Fatalf("got %d %q with %d upstream requests; want 502 and none", resp.StatusCode, body, e.tlsUp.count())
	}
}

func TestServerSentEventsStreamAsTheyArrive(t *testing.T) {
	e := newEnv(t, Config{})
	for _, h2 := range []bool{false, true} {
		up := &upstream{sseStep: make(chan struct{}), block: e.tlsUp.block, srv: e.tlsUp.srv}
		e.tlsUp.sseStep = up.sseStep
		req, _ := http.NewRequest("GET", e.tlsUp.srv.URL+"/sse", nil)
		req.Header.Set("Authorization", "Bearer "+capA)
		resp, err := e.client(addrA, h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		// The second event is only sent after the first one was read here: a buffering proxy would deadlock,
		// which the client timeout turns into a failure.
		line, err := br.ReadString('\n')
		if err != nil || line != "data: one\n" {
			t.Fatalf("h2=%v first event: %q %v", h2, line, err)
		}
		close(up.sseStep)
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		if !strings.Contains(string(rest), "data: two") {
			t.Fatalf("h2=%v second event missing: %q", h2, rest)
		}
	}
}

func TestRedirectIsReturnedNotFollowed(t *testing.T) {
	e := newEnv(t, Config{})
	resp, _ := e.do(addrA, "GET", e.tlsUp.srv.URL+"/redirect", bearer(capA))
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/elsewhere" {
		t.Fatalf("got %d Location %q, want the 302 itself", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := e.tlsUp.count(); n != 1 {
		t.Fatalf("upstream got %d requests; the proxy followed the redirect", n)
	}
}

func TestProxyAndHopByHopHeadersStrippedBothWays(t *testing.T) {
	e := newEnv(t, Config{})
	resp, _ := e.do(addrA, "GET", e.tlsUp.srv.URL+"/echo", map[string]string{
		"Authorization": "Bearer " + capA,
		"Proxy-Foo":     "bar",
		"Connection":    "X-Hop",
		"X-Hop":         "secret-hop",
	})
	got := e.tlsUp.last(t)
	for _, h := range []string{"Proxy-Foo", "X-Hop", "Proxy-Authorization"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("upstream saw %s: %q", h, v)
		}
	}
	for _, h := range []string{"Proxy-Authenticate", "Proxy-Extra", "X-Echo-Authorization"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("client saw response header %s: %q", h, v)
		}
	}
}

func TestUncredentialedRequestsToTargets(t *testing.T) {
	e := newEnv(t, Config{})
	resp, _ := e.do(addrX, "GET", e.tlsUp.srv.URL+"/public", map[string]string{"Authorization": "Bearer own-key"})
	if resp.StatusCode != 200 || e.tlsUp.last(t).Header.Get("Authorization") != "Bearer own-key" {
		t.Fatalf("uncredentialed request not forwarded unchanged: %d", resp.StatusCode)
	}

	e2 := newEnv(t, Config{RefuseUncredentialed: true})
	resp, body := e2.do(addrA, "GET", e2.tlsUp.srv.URL+"/public", nil)
	if _, reason := refusalReason(t, body); resp.StatusCode != 403 || reason != "capability_required" || e2.tlsUp.count() != 0 {
		t.Fatalf("got %d %s, want 403 capability_required and nothing forwarded", resp.StatusCode, body)
	}
}

// Smuggling defences, on the raw wire.
func TestSmugglingAttempts(t *testing.T) {
	e := newEnv(t, Config{})
	e.red.origin[capA] = e.plainUp.srv.URL
	host := strings.TrimPrefix(e.plainUp.srv.URL, "http://")
	abs := e.plainUp.srv.URL

	t.Run("duplicate Authorization fields are refused", func(t *testing.T) {
		resp, body := e.raw(addrA, "GET "+abs+"/x HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+capA+
			"\r\nauthorization: Bearer other\r\n\r\n")
		if resp.StatusCode != 403 || e.plainUp.count() != 0 {
			t.Fatalf("got %d %s", resp.StatusCode, body)
		}
	})
	t.Run("CR or LF inside a header value is rejected by the server", func(t *testing.T) {
		resp, _ := e.raw(addrA, "GET "+abs+"/x HTTP/1.1\r\nHost: "+host+"\r\nX-A: a\rInjected: b\r\n\r\n")
		if resp.StatusCode != 400 || e.plainUp.count() != 0 {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("obsolete line folding is unfolded before the credential check", func(t *testing.T) {
		// RFC 9112 §5.2: a proxy replaces obs-fold with a space before forwarding; Go's server does, so the
		// folded capability is found, redeemed and swapped like any other and never reaches the upstream.
		resp, _ := e.raw(addrA, "GET "+abs+"/x HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer\r\n "+capA+"\r\n\r\n")
		if resp.StatusCode != 200 || e.plainUp.last(t).Header.Get("Authorization") != "Bearer "+realToken {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("absolute-form authority wins over a different Host header", func(t *testing.T) {
		resp, _ := e.raw(addrA, "GET "+abs+"/x HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer "+capA+"\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("got %d", resp.StatusCode)
		}
		if got := e.plainUp.last(t); got.Host != host || !strings.HasPrefix(e.red.lastURL(), abs+"/") {
			t.Fatalf("upstream Host %q, decision URL %q; want the target's authority", got.Host, e.red.lastURL())
		}
	})
	t.Run("Transfer-Encoding with Content-Length: chunked framing wins and Content-Length is dropped", func(t *testing.T) {
		before := e.plainUp.count()
		// Read with Content-Length: 4 the body would be "5\r\nh" and the rest a second request; read chunked
		// (RFC 9112 §6.3) it is "hello" and nothing follows.
		resp, _ := e.raw(addrA, "POST "+abs+"/te HTTP/1.1\r\nHost: "+host+"\r\nAuthorization: Bearer "+capA+
			"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("got %d", resp.StatusCode)
		}
		got := e.plainUp.last(t)
		if got.Body != "hello" || e.plainUp.count() != before+1 {
			t.Fatalf("upstream body %q after %d requests", got.Body, e.plainUp.count()-before)
		}
	})
	t.Run("an unsupported Transfer-Encoding is rejected", func(t *testing.T) {
		before := e.plainUp.count()
		resp, _ := e.raw(addrA, "POST "+abs+"/te HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")
		if resp.StatusCode < 400 || e.plainUp.count() != before {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("userinfo in the target is refused", func(t *testing.T) {
		before := e.plainUp.count()
		resp, _ := e.raw(addrA, "GET http://user@"+host+"/x HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if resp.StatusCode != 400 || e.plainUp.count() != before {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
}

func TestTunnelledHostMismatchIsRefused(t *testing.T) {
	e := newEnv(t, Config{})
	c := e.client(addrA, false)
	req, _ := http.NewRequest("GET", e.tlsUp.srv.URL+"/x", nil)
	req.Host = "other.example"
	req.Header.Set("Authorization", "Bearer "+capA)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, reason := refusalReason(t, string(body)); resp.StatusCode != 400 || reason != "host_mismatch" || e.tlsUp.count() != 0 {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}
}

func TestInterceptionLeafForDNSNameAndUpstreamVerification(t *testing.T) {
	e := newEnv(t, Config{})
	port := e.tlsUp.srv.Listener.Addr().(*net.TCPAddr).Port
	hp := net.JoinHostPort("localhost", itoa(port))
	e.targets.add(hp)
	e.red.origin[capA] = "https://" + hp
	resp, err := e.client(addrA, false).Do(mustReq("GET", "https://"+hp+"/x", bearer(capA)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.TLS == nil || len(resp.TLS.PeerCertificates[0].DNSNames) != 1 || resp.TLS.PeerCertificates[0].DNSNames[0] != "localhost" {
		t.Fatalf("leaf does not name localhost: %+v", resp.TLS)
	}
	// httptest's certificate names example.com and 127.0.0.1, not localhost: the upstream leg verifies it
	// normally and fails, so the answer is an honest 502 and the credential went nowhere.
	if code, _ := refusalReason(t, string(body)); resp.StatusCode != 502 || code != "kilo_egress_unavailable" || e.tlsUp.count() != 0 {
		t.Fatalf("got %d %s with %d upstream requests", resp.StatusCode, body, e.tlsUp.count())
	}
}

func mustReq(method, u string, hdr map[string]string) *http.Request {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		panic(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return req
}

func TestBlindTunnels(t *testing.T) {
	// A non-target TLS server on loopback.
	other := newEnv(t, Config{}).tlsUp
	otherHost := strings.TrimPrefix(other.srv.URL, "https://")
	trustOther := func(c *http.Client) *http.Client {
		c.Transport.(*http.Transport).TLSClientConfig.RootCAs.AddCert(other.srv.Certificate())
		return c
	}

	t.Run("public policy refuses loopback", func(t *testing.T) {
		e := newEnv(t, Config{})
		resp, _ := e.raw(addrA, "CONNECT "+otherHost+" HTTP/1.1\r\nHost: "+otherHost+"\r\n\r\n")
		if resp.StatusCode != 403 || other.count() != 0 {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("refuse policy refuses", func(t *testing.T) {
		e := newEnv(t, Config{Blind: BlindRefuse})
		resp, _ := e.raw(addrA, "CONNECT "+otherHost+" HTTP/1.1\r\nHost: "+otherHost+"\r\n\r\n")
		if resp.StatusCode != 403 {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("allow policy relays end to end without interception", func(t *testing.T) {
		e := newEnv(t, Config{Blind: BlindAllow})
		resp, err := trustOther(e.client(addrA, false)).Get(other.srv.URL + "/blind")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !resp.TLS.PeerCertificates[0].Equal(other.srv.Certificate()) {
			t.Fatal("blind tunnel did not reach the upstream's own TLS")
		}
		if v := testutil.ToFloat64(e.proxy.m.requests.WithLabelValues(routeBlind, outcomeTunnelled)); v != 1 {
			t.Fatalf("tunnelled count %v", v)
		}
	})
}

func TestPerPodConcurrencyBound(t *testing.T) {
	e := newEnv(t, Config{MaxConcurrentPerCaller: 1})
	done := make(chan int)
	go func() {
		resp, _ := e.do(addrA, "GET", e.tlsUp.srv.URL+"/block", bearer(capA))
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { return e.tlsUp.count() == 1 })
	resp, _ := e.do(addrA, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second concurrent request from the same pod: %d, want 429", resp.StatusCode)
	}
	resp, _ = e.do(addrB, "GET", e.tlsUp.srv.URL+"/x", bearer(capB))
	if resp.StatusCode != 200 {
		t.Fatalf("another pod was limited too: %d", resp.StatusCode)
	}
	close(e.tlsUp.block)
	if code := <-done; code != 200 {
		t.Fatalf("blocked request ended %d", code)
	}
}

func TestRequestBodyLimit(t *testing.T) {
	e := newEnv(t, Config{MaxRequestBodyBytes: 10})
	req, _ := http.NewRequest("POST", e.tlsUp.srv.URL+"/x", strings.NewReader(strings.Repeat("a", 100)))
	req.Header.Set("Authorization", "Bearer "+capA)
	resp, err := e.client(addrA, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || e.tlsUp.count() != 0 {
		t.Fatalf("got %d with %d upstream requests", resp.StatusCode, e.tlsUp.count())
	}
}

func TestGracefulShutdownDrainsStreams(t *testing.T) {
	e := newEnv(t, Config{})
	req, _ := http.NewRequest("GET", e.tlsUp.srv.URL+"/sse", nil)
	req.Header.Set("Authorization", "Bearer "+capA)
	resp, err := e.client(addrA, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if l, _ := br.ReadString('\n'); l != "data: one\n" {
		t.Fatalf("first event %q", l)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- e.proxy.Shutdown(ctx)
	}()
	// New connections are no longer accepted once shutdown began.
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", e.proxyURL.Host)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned (%v) while a stream was in flight", err)
	default:
	}
	close(e.tlsUp.sseStep)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: two") {
		t.Fatalf("stream cut by shutdown: %q", rest)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t, Config{})
	e.red.origin[capB] = e.plainUp.srv.URL
	// Exercise every path that logs: allowed, refused (each reason), redeem failure, upstream failure.
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/ok?secret="+realToken, bearer(capA))
	e.do(addrB, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	e.do(addrX, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/forbidden", bearer(capA))
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/x?c="+capA, nil)
	e.raw(addrA, "GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer "+capB+"\r\n\r\n")
	e.targets.add("127.0.0.1:1")
	e.red.origin[capB] = "http://127.0.0.1:1"
	e.raw(addrB, "GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer "+capB+"\r\n\r\n")
	e.red.fail = errors.New("decision unavailable")
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	logs := e.logs.String()
	if logs == "" {
		t.Fatal("nothing was logged; the canary proves nothing")
	}
	for _, canary := range []string{capA, capB, realToken, "kka1."} {
		if strings.Contains(logs, canary) {
			t.Fatalf("logs contain %q:\n%s", canary, logs)
		}
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, Config{})
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/x", bearer(capA))
	e.do(addrA, "GET", e.tlsUp.srv.URL+"/forbidden", bearer(capA))
	if v := testutil.ToFloat64(e.proxy.m.requests.WithLabelValues("backend_api", outcomeForwarded)); v != 1 {
		t.Errorf("forwarded backend_api = %v", v)
	}
	if v := testutil.ToFloat64(e.proxy.m.requests.WithLabelValues(routeNone, outcomeRefused)); v != 1 {
		t.Errorf("refused = %v", v)
	}
	if v := testutil.ToFloat64(e.proxy.m.upstream.WithLabelValues("backend_api", "2xx")); v != 1 {
		t.Errorf("upstream 2xx = %v", v)
	}
	if v := testutil.ToFloat64(e.proxy.m.bytesOut); v <= 0 {
		t.Errorf("bytes out = %v", v)
	}
	if n, err := testutil.GatherAndCount(e.reg, "kilo_egress_request_duration_seconds", "kilo_egress_active_tunnels"); err != nil || n == 0 {
		t.Errorf("latency/tunnel metrics not registered: %d %v", n, err)
	}
}

func TestLeafCacheIssuesOncePerHost(t *testing.T) {
	ca := newTestCA(t)
	src := &swapCA{ca: ca}
	now := time.Now()
	c := newLeafCache(src, time.Hour, func() time.Time { return now })
	errs := make(chan error, 20)
	for range 20 {
		go func() { _, err := c.get("api.example"); errs <- err }()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := ca.issued.Load(); n != 1 {
		t.Fatalf("20 concurrent handshakes issued %d leaves, want 1", n)
	}
	now = now.Add(50 * time.Minute) // past three quarters of the lifetime
	if _, err := c.get("api.example"); err != nil || ca.issued.Load() != 2 {
		t.Fatalf("leaf near expiry not renewed: %d", ca.issued.Load())
	}
	ca2 := newTestCA(t)
	src.ca = ca2
	leaf, err := c.get("api.example")
	if err != nil || ca2.issued.Load() != 1 || leaf.Leaf.CheckSignatureFrom(ca2.cert) != nil {
		t.Fatal("leaf not re-issued by the rotated CA")
	}
}

type swapCA struct{ ca LeafIssuer }

func (s *swapCA) CA() LeafIssuer { return s.ca }

func TestSNIMustMatchConnectHost(t *testing.T) {
	e := newEnv(t, Config{})
	host := strings.TrimPrefix(e.tlsUp.srv.URL, "https://")
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: addrA.AsSlice()}}
	c, err := d.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT "+host+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v", err)
	}
	tc := tls.Client(&readerConn{Conn: c, r: br}, &tls.Config{ServerName: "evil.example", RootCAs: e.ca.pool()})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake with a foreign SNI succeeded")
	}
}

type readerConn struct {
	net.Conn
	r io.Reader
}

func (c *readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
