package egress

import (
	"encoding/base64"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestInspectCredentials(t *testing.T) {
	cases := []struct {
		name   string
		header http.Header
		target string
		want   credentialKind
	}{
		{"no credential at all", http.Header{"Accept": {"*/*"}}, "/v1/x?y=1", credNone},
		{"an ordinary API key is not a capability", http.Header{"Authorization": {"Bearer sk-live-abc"}}, "/x", credNone},
		{"one Bearer capability", http.Header{"Authorization": {"Bearer " + capA}}, "/x", credBearer},
		{"scheme in any case", http.Header{"Authorization": {"BEARER " + capA}}, "/x", credBearer},
		{"a file name that merely starts like a version", http.Header{}, "/files/kka1.txt", credNone},
		{"a host label that looks like a version", http.Header{"Referer": {"https://kka1.example.com/"}}, "/", credNone},
		{"capability in the path", http.Header{}, "/x/" + capA, credMisplaced},
		{"capability with the dot escaped in the query", http.Header{}, "/x?t=" + strings.ReplaceAll(capA, ".", "%2e"), credMisplaced},
		{"capability with plus-as-space in the query", http.Header{}, "/x?t=" + strings.ReplaceAll(capA, "+", "%2B"), credMisplaced},
		{"upper-case prefix", http.Header{"X-Token": {strings.ToUpper(capA[:4]) + capA[4:]}}, "/", credMisplaced},
		{"raw Basic without padding", http.Header{"Authorization": {"basic " + base64.RawStdEncoding.EncodeToString([]byte(capA+":"))}}, "/", credMisplaced},
		{"a future version in Authorization", http.Header{"Authorization": {"Bearer kka12." + capA[5:]}}, "/", credMisplaced},
		{"Token scheme instead of Bearer", http.Header{"Authorization": {"Token " + capA}}, "/", credMisplaced},
		{"two Authorization fields", http.Header{"Authorization": {"Bearer " + capA, "Bearer x"}}, "/", credDuplicateAuth},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, got := inspectCredentials(tc.header, tc.target)
			if got != tc.want {
				t.Fatalf("kind %d, want %d", got, tc.want)
			}
			if (got == credBearer) != (tok != "") {
				t.Fatalf("token returned with kind %d", got)
			}
		})
	}
}

// FuzzInspectCredentials: never panics, and a capability-shaped string planted in any other header or the target
// is always found.
func FuzzInspectCredentials(f *testing.F) {
	f.Add("Bearer "+capA, "X-A", "v", "/x?y=1")
	f.Add("Basic "+base64.StdEncoding.EncodeToString([]byte("u:"+capB)), "Cookie", "a=b", "/")
	f.Add("", "X-Kka", "kka3.AAAAAAAAAAAAAAAAAAAA", "/kka1.%41%41%41%41%41%41%41%41%41%41%41%41%41%41%41%41%41")
	f.Fuzz(func(t *testing.T, auth, name, value, target string) {
		h := http.Header{}
		if auth != "" {
			h["Authorization"] = []string{auth}
		}
		if name != "" && http.CanonicalHeaderKey(name) != "Authorization" {
			h[http.CanonicalHeaderKey(name)] = []string{value}
		}
		tok, kind := inspectCredentials(h, target)
		if kind == credBearer && !strings.HasPrefix(tok, capabilityPrefix) {
			t.Fatalf("Bearer kind with token not starting with kka1.")
		}
		h["X-Planted"] = []string{value + capA}
		if _, kind := inspectCredentials(h, target); kind != credMisplaced && kind != credDuplicateAuth {
			t.Fatalf("planted capability missed: kind %d", kind)
		}
		delete(h, "X-Planted")
		if _, kind := inspectCredentials(h, target+"?"+capB); kind != credMisplaced && kind != credDuplicateAuth {
			t.Fatalf("capability in target missed: kind %d", kind)
		}
	})
}

func TestParseAuthority(t *testing.T) {
	cases := []struct {
		in, scheme  string
		requirePort bool
		hostport    string
		urlHost     string
	}{
		{"api.kilo.ai:443", "https", true, "api.kilo.ai:443", "api.kilo.ai"},
		{"API.Kilo.AI:8443", "https", true, "api.kilo.ai:8443", "api.kilo.ai:8443"},
		{"127.0.0.1:80", "http", false, "127.0.0.1:80", "127.0.0.1"},
		{"localhost", "http", false, "localhost:80", "localhost"},
		{"[::1]:443", "https", true, "[::1]:443", "[::1]"},
		{"[::1]", "https", false, "[::1]:443", "[::1]"},
		{"api.kilo.ai", "https", true, "", ""},       // CONNECT needs a port
		{"api.kilo.ai:0443", "https", true, "", ""},  // leading zero
		{"api.kilo.ai:65536", "https", true, "", ""}, // out of range
		{"api.kilo.ai:", "https", false, "", ""},
		{"user@api.kilo.ai:443", "https", true, "", ""},
		{"::1:443", "https", true, "", ""}, // unbracketed IPv6
		{"[fe80::1%25eth0]:443", "https", true, "", ""},
		{"api.kilo.ai%2e:443", "https", true, "", ""},
		{"a b:443", "https", true, "", ""},
	}
	for _, tc := range cases {
		a, err := parseAuthority(tc.in, tc.scheme, tc.requirePort)
		if tc.hostport == "" {
			if err == nil {
				t.Errorf("%q: accepted as %+v", tc.in, a)
			}
			continue
		}
		if err != nil || a.hostport != tc.hostport || a.urlHost != tc.urlHost {
			t.Errorf("%q: got %+v %v, want %s / %s", tc.in, a, err, tc.hostport, tc.urlHost)
		}
	}
}

// FuzzParseAuthority: never panics; an accepted authority is canonical (parsing its hostport gives itself).
func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"api.kilo.ai:443", "[::1]:8443", "127.0.0.1:80", "x", "[::ffff:1.2.3.4]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseAuthority(s, "https", false)
		if err != nil {
			return
		}
		b, err := parseAuthority(a.hostport, "https", true)
		if err != nil || b != a {
			t.Fatalf("%q → %+v, re-parsed %+v %v", s, a, b, err)
		}
	})
}

func TestDialGuardBlocksNonPublicAddresses(t *testing.T) {
	g := newDialGuard(BlindPublic, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, nil)
	for _, s := range []string{"127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
		"0.0.0.0", "::1", "::", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "203.0.113.7", "224.0.0.1"} {
		if !g.isBlocked(netip.MustParseAddr(s)) {
			t.Errorf("%s not blocked", s)
		}
	}
	for _, s := range []string{"1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"} {
		if g.isBlocked(netip.MustParseAddr(s)) {
			t.Errorf("%s blocked", s)
		}
	}
}

func TestMarkerNeedsATokenShapedTail(t *testing.T) {
	if hasMarker("kka1.short") || !hasMarker("xkka1.AAAAAAAAAAAAAAAA") || hasMarker("kka.AAAAAAAAAAAAAAAAAAAA") {
		t.Fatal("marker boundary wrong")
	}
}

func TestTargetSetFromAllowList(t *testing.T) {
	s, err := NewTargetSet([]string{"https://api.kilo.ai", "http://127.0.0.1:8080", "https://[::1]:8443"})
	if err != nil {
		t.Fatal(err)
	}
	any := AnyTarget{s, TargetSet{"x.example:443": true}}
	for _, hp := range []string{"api.kilo.ai:443", "127.0.0.1:8080", "[::1]:8443", "x.example:443"} {
		if !any.IsTarget(hp) {
			t.Errorf("%s not a target", hp)
		}
	}
	if any.IsTarget("api.kilo.ai:8443") || any.IsTarget("evil.example:443") {
		t.Error("a host outside the set is a target")
	}
	if _, err := NewTargetSet([]string{"ftp://x"}); err == nil {
		t.Error("non-http origin accepted")
	}
}
