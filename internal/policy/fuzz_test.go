package policy

import (
	"net/url"
	"strings"
	"testing"
)

// fuzzLayout is a parsed layout plus what the properties need to know about it, derived independently of the
// package (through net/url) so a bug in ParseTargets cannot hide a bug in Classify.
type fuzzLayout struct {
	pt        *ParsedTargets
	shared    bool     // backend and ingest share an origin
	territory []string // lower-case session-territory prefixes when shared
	orgPrefix string   // lower-case backend org prefix
}

func fuzzLayouts(tb testing.TB) []fuzzLayout {
	var all []Targets
	for _, l := range layouts {
		all = append(all, l.t)
	}
	for _, t := range loadCases(tb).Targets {
		all = append(all, t)
	}
	var out []fuzzLayout
	for _, t := range all {
		b, _ := url.Parse(t.BackendBaseURL)
		i, _ := url.Parse(t.SessionIngestBaseURL)
		fl := fuzzLayout{pt: mustParseTargets(tb, t)}
		bb := strings.ToLower(strings.TrimRight(b.EscapedPath(), "/"))
		if strings.HasSuffix(bb, "/api") {
			fl.orgPrefix = bb + "/organizations/"
		} else {
			fl.orgPrefix = bb + "/api/organizations/"
		}
		if strings.EqualFold(b.Scheme+"://"+b.Host, i.Scheme+"://"+i.Host) {
			fl.shared = true
			ib := strings.ToLower(strings.TrimRight(i.EscapedPath(), "/"))
			if ib != "" {
				fl.territory = append(fl.territory, ib)
			}
			fl.territory = append(fl.territory, ib+"/api/session")
		}
		out = append(out, fl)
	}
	return out
}

// encodeURIComponent is ECMAScript's, written independently of cutEncodedComponent.
func encodeURIComponent(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.ContainsRune("-_.!~*'()", rune(c)) {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

// rawPath extracts the escaped path of an absolute URL the way an HTTP/1.1 request line carries it.
func rawPath(u string) string {
	rest := u[strings.Index(u, "://")+3:]
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		rest = rest[:q]
	}
	if s := strings.IndexByte(rest, '/'); s >= 0 {
		return rest[s:]
	}
	return ""
}

func seedURLs(f *testing.F) []string {
	var urls []string
	for _, c := range loadCases(f).Cases {
		urls = append(urls, c.URL)
	}
	for _, l := range layouts {
		v := viewOf(f, l)
		for _, tr := range tricks {
			if u := tr.url(v); len(u) < 1024 {
				urls = append(urls, u)
			}
		}
	}
	return urls
}

func FuzzClassify(f *testing.F) {
	for i, u := range seedURLs(f) {
		method := []string{"GET", "POST", "DELETE", "post"}[i%4]
		f.Add(u, method, "kilo-session-1", "a=%2F..%2F&b=#")
	}
	f.Add("https://ingest.kilosessions.ai/api/session/a%20b/export", "GET", "a b", "")
	f.Add("https://api.kilo.ai/api/session", "POST", "kilo-session-1", "x")
	fls := fuzzLayouts(f)
	deny, err := New([]DenyRule{{Path: "/api/users/*/**"}, {Path: "/api/admin", Methods: []string{"POST"}}})
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, raw, method, session, query string) {
		for _, fl := range fls {
			req := Request{URL: raw, Method: method, KiloSessionID: session, BootstrapSessionID: session}
			d := (*Policy)(nil).Classify(req, fl.pt)

			if (d.Origin == "") != (d.Reason == ReasonInvalidUpstreamURL) || d.Allowed == (d.Reason != "") {
				t.Fatalf("%q: inconsistent decision %+v", raw, d)
			}
			if d.Allowed {
				checkAllowed(t, fl, req, d)
			}

			// Deny rules only ever narrow the backend catch-all.
			dd := deny.Classify(req, fl.pt)
			if dd != d && !(d.RouteClass == RouteBackendAPI && dd.Detail == DetailDenyRule) {
				t.Fatalf("%q: deny rules turned %+v into %+v", raw, d, dd)
			}

			// The query never changes a decision.
			if raw != "" && !strings.ContainsAny(raw, "?#") {
				q := make([]byte, 0, len(query))
				for i := 0; i < len(query); i++ {
					if c := query[i]; c > ' ' && c < 0x7f && c != '#' {
						q = append(q, c)
					}
				}
				if u2 := raw + "?" + string(q); len(u2) <= MaxURLLength {
					req2 := req
					req2.URL = u2
					if d2 := (*Policy)(nil).Classify(req2, fl.pt); d2 != d {
						t.Fatalf("adding a query changed the decision: %q → %+v, %q → %+v", raw, d, u2, d2)
					}
				}
			}
		}
	})
}

func checkAllowed(t *testing.T, fl fuzzLayout, req Request, d Decision) {
	t.Helper()
	raw := req.URL
	// What Go's HTTP client would do with the URL must be what the policy decided on: the same origin, the
	// same escaped path on the wire, no userinfo, no fragment.
	pu, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%q allowed (%+v) but url.Parse refuses it: %v", raw, d, err)
	}
	if pu.User != nil || pu.Fragment != "" || pu.Opaque != "" {
		t.Fatalf("%q allowed with userinfo, fragment or opaque part", raw)
	}
	host := strings.ToLower(pu.Hostname())
	if p := pu.Port(); p != "" && !((pu.Scheme == "https" || pu.Scheme == "HTTPS") && p == "443") && !(strings.EqualFold(pu.Scheme, "http") && p == "80") {
		host += ":" + p
	}
	if want := strings.ToLower(pu.Scheme) + "://" + host; d.Origin != want {
		t.Fatalf("%q: origin %q, net/url says %q", raw, d.Origin, want)
	}
	path := rawPath(raw)
	if pu.EscapedPath() != path {
		t.Fatalf("%q: the client would send path %q, the policy decided on %q", raw, pu.EscapedPath(), path)
	}
	if !contains(fl.pt.Origins(), d.Origin) {
		t.Fatalf("%q allowed at origin %q outside the targets", raw, d.Origin)
	}

	// An allowed URL's path never holds a dot segment or a backslash, however many times it is decoded.
	for level, p := 0, path; level < 8; level++ {
		if strings.Contains(p, "\\") {
			t.Fatalf("%q allowed with a backslash at decoding depth %d", raw, level)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q allowed with a dot segment at decoding depth %d", raw, level)
			}
		}
		next, err := url.PathUnescape(p)
		if err != nil || next == p {
			break
		}
		p = next
	}

	switch d.RouteClass {
	case RouteSessionIngest:
		// An allowed session_ingest URL always names the bound session (or is its bootstrap POST).
		named := false
		for _, op := range []string{"/export", "/import", "/ingest"} {
			named = named || strings.HasSuffix(path, "/api/session/"+encodeURIComponent(req.KiloSessionID)+op)
		}
		bootstrap := strings.HasSuffix(path, "/api/session") && req.Method == "POST" && req.BootstrapSessionID == req.KiloSessionID
		if req.KiloSessionID == "" || !(named || bootstrap) {
			t.Fatalf("%q allowed as session_ingest for session %q", raw, req.KiloSessionID)
		}
	case RouteBackendAPI:
		// Nothing in session territory on a shared origin is ever backend_api.
		lp := strings.ToLower(path)
		for _, pre := range fl.territory {
			if lp == pre || strings.HasPrefix(lp, pre+"/") {
				t.Fatalf("%q allowed as backend_api inside session territory %q", raw, pre)
			}
		}
		// Nor is a credential-minting route, in any case.
		if rest, ok := strings.CutPrefix(lp, fl.orgPrefix); ok {
			if segs := strings.Split(rest, "/"); len(segs) >= 2 && segs[0] != "" && segs[1] == "user-tokens" {
				t.Fatalf("%q allowed as backend_api on a credential-minting route", raw)
			}
		}
	}
	if d.Credential != CredentialUser {
		t.Fatalf("%q: credential %q without a provider token", raw, d.Credential)
	}
}

func FuzzParseTargets(f *testing.F) {
	for _, t := range loadCases(f).Targets {
		f.Add(t.BackendBaseURL, t.ProviderBaseURL, t.SessionIngestBaseURL)
	}
	for _, u := range seedURLs(f) {
		f.Add(u, "https://api.kilo.ai", "https://api.kilo.ai")
	}
	f.Fuzz(func(t *testing.T, b, p, i string) {
		pt, err := ParseTargets(Targets{b, p, i})
		if err != nil {
			if pt != nil {
				t.Fatal("targets and an error")
			}
			return
		}
		// Every accepted target's origin is an acceptable allow-list entry, in the same normal form.
		a, err := ParseAllowList(pt.Origins())
		if err != nil {
			t.Fatalf("origins %v of accepted targets are not valid allow-list entries: %v", pt.Origins(), err)
		}
		for _, o := range pt.Origins() {
			if !a.Allows(o) {
				t.Fatalf("origin %q does not round-trip through the allow-list", o)
			}
		}
		// A normalised base URL is a well-formed request URL too, at its own origin.
		for _, tg := range []target{pt.backend, pt.provider, pt.ingest} {
			d := (*Policy)(nil).Classify(Request{URL: tg.origin + tg.base, Method: "GET"}, pt)
			if d.Reason == ReasonInvalidUpstreamURL || d.Origin != tg.origin {
				t.Fatalf("base %q classifies as %+v", tg.origin+tg.base, d)
			}
		}
	})
}

func FuzzDenyRules(f *testing.F) {
	f.Add("/api/admin/**", "POST", "https://api.kilo.ai/api/admin/x")
	f.Add("/api/*/x", "", "https://api.kilo.ai/api/y/x/")
	f.Add("/**", "get", "https://api.kilo.ai")
	f.Add("/a/**/b", "GET", "https://api.kilo.ai/a/b")
	pt := mustParseTargets(f, layouts[1].t)
	f.Fuzz(func(t *testing.T, pattern, method, raw string) {
		p, err := New([]DenyRule{{Path: pattern, Methods: []string{method}}})
		if err != nil {
			return
		}
		req := Request{URL: raw, Method: method}
		d := p.Classify(req, pt)
		base := (*Policy)(nil).Classify(req, pt)
		if d != base && !(base.RouteClass == RouteBackendAPI && d.Detail == DetailDenyRule) {
			t.Fatalf("rule %q turned %+v into %+v", pattern, base, d)
		}
	})
}
