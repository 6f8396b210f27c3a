package egress

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Regression tests from the security review.

// A method-override header makes Express (method-override), Rails, Laravel and many gateways route a POST as the
// method it names, so the redeem decision would judge one method and the upstream run another: a deny rule on
// DELETE would be stepped around with "POST + X-HTTP-Method-Override: DELETE". A redeemed request carrying one is
// refused, and never forwarded.
func TestMethodOverrideHeadersAreRefusedWithACapability(t *testing.T) {
	e := newEnv(t, Config{})
	for _, h := range []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"} {
		resp, body := e.do(addrA, "POST", e.tlsUp.srv.URL+"/x", map[string]string{"Authorization": "Bearer " + capA, h: "DELETE"})
		if code, reason := refusalReason(t, body); resp.StatusCode != http.StatusForbidden || code != errEgress || reason != reasonMethodOverride {
			t.Errorf("%s: got %d %s, want 403 %s", h, resp.StatusCode, body, reasonMethodOverride)
		}
	}
	if n := e.tlsUp.count(); n != 0 {
		t.Fatalf("%d requests with a method override reached the upstream", n)
	}
	// Without a capability nothing is redeemed, so the header is the client's own business.
	if resp, _ := e.do(addrA, "POST", e.tlsUp.srv.URL+"/x", map[string]string{"X-HTTP-Method-Override": "DELETE"}); resp.StatusCode != 200 {
		t.Fatalf("uncredentialed request with a method override: %d", resp.StatusCode)
	}
}

// The response header scrub ran on headers only; a credential the upstream reflected in a trailer reached the pod
// after the body, on HTTP/1.1 and HTTP/2 alike.
func TestCredentialEchoedInATrailerIsScrubbed(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		e := newEnv(t, Config{})
		req := mustReq("GET", e.tlsUp.srv.URL+"/trailer-echo", bearer(capA))
		resp, err := e.client(addrA, h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("h2=%v: got %d %q", h2, resp.StatusCode, body)
		}
		if got := e.tlsUp.last(t).Header.Get("Authorization"); got != "Bearer "+realToken {
			t.Fatalf("upstream saw %q", got)
		}
		for k, vs := range resp.Trailer {
			for _, v := range vs {
				if strings.Contains(v, realToken) {
					t.Errorf("h2=%v: trailer %s carries the real token to the client", h2, k)
				}
			}
		}
		if resp.Trailer.Get("X-Harmless") != "kept" {
			t.Errorf("h2=%v: unrelated trailer lost: %v", h2, resp.Trailer)
		}
	}
}

// CONNECT to a target's name with a trailing dot ("api.kilo.ai.:443") named the same server but missed the
// target lookup, so it became a blind tunnel: the capability rode to the upstream unredeemed and
// RefuseUncredentialed was stepped around. The name is now normalised before the lookup.
func TestTrailingDotTargetIsIntercepted(t *testing.T) {
	e := newEnv(t, Config{Blind: BlindAllow, RefuseUncredentialed: true})
	port := e.tlsUp.srv.Listener.Addr().(*net.TCPAddr).Port
	e.targets.add(net.JoinHostPort("localhost", itoa(port)))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: addrA.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	hp := "localhost.:" + itoa(port)
	if _, err := io.WriteString(c, "CONNECT "+hp+" HTTP/1.1\r\nHost: "+hp+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if n := e.ca.issued.Load(); n != 1 {
		t.Fatalf("CONNECT to the target's trailing-dot name was not intercepted (%d leaves issued)", n)
	}
	for _, s := range []string{"localhost.:80", "LOCALHOST.:443", "example.com."} {
		a, err := parseAuthority(s, "https", false)
		if err != nil || strings.HasSuffix(a.host, ".") || strings.Contains(a.hostport, ".:") {
			t.Errorf("parseAuthority(%q) = %+v, %v: want the trailing dot removed", s, a, err)
		}
	}
	for _, s := range []string{".:443", "a..b.:443", "..:443", "localhost..:443"} {
		if _, err := parseAuthority(s, "https", true); err == nil {
			t.Errorf("parseAuthority(%q) accepted an empty label", s)
		}
	}
}
