package policy

import (
	"net/url"
	"strings"
	"testing"
)

// layout is one way of arranging the three targets. Every trick row below runs on every layout: a trick that is
// refused on one arrangement must not slip through another.
type layout struct {
	name string
	t    Targets
}

var layouts = []layout{
	{"separate origins", Targets{"https://api.kilo.ai", "https://api.kilo.ai", "https://ingest.kilosessions.ai"}},
	{"backend and ingest share an origin", Targets{"https://api.kilo.ai", "https://api.kilo.ai/api/openrouter", "https://api.kilo.ai"}},
	{"ingest under a path prefix, provider under /api", Targets{"https://api.kilo.ai", "https://api.kilo.ai/api", "https://api.kilo.ai/ingest/"}},
	{"remote provider", Targets{"https://api.kilo.ai", "https://provider.kilo.ai", "https://ingest.kilosessions.ai"}},
	{"local http targets", Targets{"http://127.0.0.1:8080", "http://127.0.0.1:8080/api/openrouter", "http://localhost:9090"}},
	{"backend under /api, everything on one origin", Targets{"https://kilo.example.com/api", "https://kilo.example.com/api", "https://kilo.example.com/ingest"}},
}

// view is what a row needs to know about a layout to build its URL.
type view struct {
	backend string // backend base URL, no trailing slash
	ingest  string // ingest base URL, no trailing slash
	scheme  string // backend scheme
	host    string // backend host
	port    string // backend ":port", or ""
	bpath   string // backend base path
	orgRel  string // org prefix relative to the backend base ("/api/organizations/" or "/organizations/")
	shared  bool   // the ingest base lies within the backend target (same origin, below the backend base)
	https   bool
}

func viewOf(tb testing.TB, l layout) view {
	b, err := url.Parse(l.t.BackendBaseURL)
	if err != nil {
		tb.Fatal(err)
	}
	i, err := url.Parse(l.t.SessionIngestBaseURL)
	if err != nil {
		tb.Fatal(err)
	}
	v := view{
		backend: strings.TrimRight(l.t.BackendBaseURL, "/"),
		ingest:  strings.TrimRight(l.t.SessionIngestBaseURL, "/"),
		scheme:  b.Scheme, host: b.Hostname(), bpath: strings.TrimRight(b.Path, "/"),
		shared: b.Scheme == i.Scheme && b.Host == i.Host && strings.HasPrefix(i.Path+"/", strings.TrimRight(b.Path, "/")+"/"),
		https:  b.Scheme == "https",
	}
	if b.Port() != "" {
		v.port = ":" + b.Port()
	}
	v.orgRel = "/api/organizations/"
	if strings.HasSuffix(v.bpath, "/api") {
		v.orgRel = "/organizations/"
	}
	return v
}

type expect struct {
	allowed bool
	route   RouteClass
	reason  Reason
	detail  string
}

func refused(detail string) expect { return expect{reason: ReasonInvalidUpstreamURL, detail: detail} }
func denied(detail string) expect  { return expect{reason: ReasonUpstreamNotAllowed, detail: detail} }
func ok(route RouteClass) expect   { return expect{allowed: true, route: route} }

type trick struct {
	name   string
	method string
	url    func(v view) string
	want   func(v view) expect
}

func always(e expect) func(view) expect { return func(view) expect { return e } }

// onBackend builds a URL under the backend base.
func onBackend(rel string) func(v view) string { return func(v view) string { return v.backend + rel } }

// withAuthority rebuilds the backend URL with a different authority (the base path and rel are kept).
func withAuthority(auth func(v view) string, rel string) func(v view) string {
	return func(v view) string { return v.scheme + "://" + auth(v) + v.bpath + rel }
}

var tricks = []trick{
	// Dot segments, raw and encoded at every depth the guard peels.
	{"raw dot-dot segment", "", onBackend("/api/users/../organizations/o/user-tokens"), always(refused(DetailDotSegment))},
	{"raw single dot segment", "", onBackend("/api/./users/me"), always(refused(DetailDotSegment))},
	{"dot-dot at the end", "", onBackend("/api/users/.."), always(refused(DetailDotSegment))},
	{"dot-dot before the query", "", onBackend("/api/users/..?a=b"), always(refused(DetailDotSegment))},
	{"percent-encoded dot-dot", "", onBackend("/api/users/%2e%2e/x"), always(refused(DetailDotSegment))},
	{"upper-case percent-encoded dot-dot", "", onBackend("/api/users/%2E%2E/x"), always(refused(DetailDotSegment))},
	{"half-encoded dot-dot", "", onBackend("/api/users/.%2E/x"), always(refused(DetailDotSegment))},
	{"double-encoded dot-dot", "", onBackend("/api/users/%252e%252e/x"), always(refused(DetailDotSegment))},
	{"triple-encoded dot", "", onBackend("/api/users/%25252e/x"), always(refused(DetailDotSegment))},
	{"encoded five times over", "", onBackend("/api/users/%252525252e/x"), always(refused(DetailNestedEncoding))},
	{"overlong UTF-8 dot", "", onBackend("/api/users/%c0%ae%c0%ae/x"), always(refused(DetailInvalidUTF8))},
	{"overlong UTF-8 slash", "", onBackend("/api/users%c0%af..%c0%afx"), always(refused(DetailInvalidUTF8))},
	{"double-encoded overlong dot", "", onBackend("/api/users/%25c0%25ae/x"), always(refused(DetailInvalidUTF8))},
	{"three dots is a name", "", onBackend("/api/users/.../x"), always(ok(RouteBackendAPI))},
	{"dots inside a name", "", onBackend("/api/users/a..b"), always(ok(RouteBackendAPI))},
	// Encoded separators.
	{"encoded slash", "", onBackend("/api/organizations/o%2fuser-tokens"), always(refused(DetailEncodedSeparator))},
	{"upper-case encoded slash", "", onBackend("/api/organizations/o%2Fuser-tokens"), always(refused(DetailEncodedSeparator))},
	{"encoded backslash", "", onBackend("/api/users%5c..%5cx"), always(refused(DetailEncodedSeparator))},
	{"upper-case encoded backslash", "", onBackend("/api/users%5Cx"), always(refused(DetailEncodedSeparator))},
	{"double-encoded slash", "", onBackend("/api/users%252fx"), always(refused(DetailEncodedSeparator))},
	// Backslashes.
	{"raw backslash", "", onBackend("/api\\users\\me"), always(refused(DetailBackslash))},
	{"backslash dot-dot", "", onBackend("/api/x\\..\\organizations"), always(refused(DetailBackslash))},
	// Matrix parameters.
	{"semicolon parameter", "", onBackend("/api/users;x=1/me"), always(refused(DetailSemicolon))},
	{"dot-dot semicolon", "", onBackend("/api/..;/organizations/o/user-tokens"), always(refused(DetailSemicolon))},
	{"encoded semicolon", "", onBackend("/api/users%3Bx/me"), always(refused(DetailSemicolon))},
	{"lower-case encoded semicolon", "", onBackend("/api/users%3bx/me"), always(refused(DetailSemicolon))},
	// Empty segments.
	{"empty segment", "", onBackend("/api//users/me"), always(refused(DetailEmptySegment))},
	{"trailing empty segment", "", onBackend("/api/users//"), always(refused(DetailEmptySegment))},
	// Case variants of reserved segments and encoded unreserved spellings of them.
	{"credential minting in capitals", "", func(v view) string {
		return v.backend + strings.ToUpper(v.orgRel) + "O/USER-TOKENS"
	}, always(denied(DetailCredentialMinting))},
	{"credential minting below the route", "", func(v view) string {
		return v.backend + v.orgRel + "o/user-tokens/new"
	}, always(denied(DetailCredentialMinting))},
	{"credential minting with a trailing slash", "", func(v view) string {
		return v.backend + v.orgRel + "o/user-tokens/"
	}, always(denied(DetailCredentialMinting))},
	{"credential minting spelled with an encoded letter", "", func(v view) string {
		return v.backend + v.orgRel + "o/user-token%73"
	}, always(refused(DetailEncodedUnreserved))},
	{"encoded tilde", "", onBackend("/api/%7Euser"), always(refused(DetailEncodedUnreserved))},
	{"provider route in capitals on the backend", "", func(v view) string {
		rel := "/api/openrouter"
		if strings.HasSuffix(v.bpath, "/api") {
			rel = "/openrouter"
		}
		return v.backend + strings.ToUpper(rel) + "/v1/chat"
	}, always(denied(DetailProviderShaped))},
	{"organization models, org id in capitals", "", func(v view) string {
		return v.backend + v.orgRel + "ORG_1/models"
	}, always(ok(RouteOrganizationModels))},
	// Encoded control characters and characters outside RFC 3986 paths.
	{"encoded NUL", "", onBackend("/api/users/me%00.json"), always(refused(DetailEncodedControl))},
	{"encoded DEL", "", onBackend("/api/users/me%7F"), always(refused(DetailEncodedControl))},
	{"encoded newline", "", onBackend("/api/users/me%0a"), always(refused(DetailEncodedControl))},
	{"brace in the path", "", onBackend("/api/users/{me}"), always(refused(DetailPathCharacter))},
	{"pipe in the path", "", onBackend("/api/users|me"), always(refused(DetailPathCharacter))},
	{"encoded space is fine", "", onBackend("/api/files/a%20b"), always(ok(RouteBackendAPI))},
	{"encoded UTF-8 is fine", "", onBackend("/api/files/caf%C3%A9"), always(ok(RouteBackendAPI))},
	// Userinfo, including the '@' and backslash tricks parsers disagree on.
	{"userinfo", "", withAuthority(func(v view) string { return "user@" + v.host + v.port }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"empty userinfo", "", withAuthority(func(v view) string { return "@" + v.host + v.port }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"password only", "", withAuthority(func(v view) string { return ":pw@" + v.host + v.port }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"target host as userinfo of another host", "", withAuthority(func(v view) string { return v.host + v.port + "@evil.example" }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"backslash before @ (WHATWG reads the target host)", "", withAuthority(func(v view) string { return "evil.example\\@" + v.host + v.port }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"backslash after the host (WHATWG reads a path)", "", withAuthority(func(v view) string { return v.host + v.port + "\\@evil.example" }, "/api/users/me"), always(refused(DetailUserinfo))},
	{"encoded @ in the host", "", withAuthority(func(v view) string { return "evil.example%40" + v.host + v.port }, "/api/users/me"), always(refused(DetailHost))},
	{"backslash in the host", "", withAuthority(func(v view) string { return v.host + "\\evil.example" }, "/api/users/me"), always(refused(DetailHost))},
	// Hosts.
	{"trailing-dot host", "", withAuthority(func(v view) string { return v.host + "." + v.port }, "/api/users/me"), func(v view) expect {
		if !v.https {
			return refused(DetailHTTPNotLocal)
		}
		return denied(DetailNotWithinTargets)
	}},
	{"upper-case host", "", withAuthority(func(v view) string { return strings.ToUpper(v.host) + v.port }, "/api/users/me"), always(ok(RouteBackendAPI))},
	{"empty label", "", withAuthority(func(v view) string { return "api..kilo.ai" + v.port }, "/api/users/me"), always(refused(DetailHost))},
	{"non-ASCII host", "", withAuthority(func(v view) string { return "аpi.kilo.ai" + v.port }, "/"), always(refused(DetailForbiddenCharacter))},
	{"ideographic full stop", "", withAuthority(func(v view) string { return "api\u3002kilo.ai" + v.port }, "/"), always(refused(DetailForbiddenCharacter))},
	{"punycode host is just another host", "", func(v view) string { return "https://xn--pi-7ld.kilo.ai/api/users/me" }, always(denied(DetailNotWithinTargets))},
	{"percent-encoded host", "", withAuthority(func(v view) string { return "api%2ekilo.ai" + v.port }, "/"), always(refused(DetailHost))},
	{"bracketed IPv6 host", "", func(v view) string { return "https://[::1]/api/users/me" }, always(refused(DetailHost))},
	{"IPv6 zone id", "", func(v view) string { return "https://[fe80::1%25eth0]:443/api" }, always(refused(DetailHost))},
	{"underscore host", "", func(v view) string { return "https://api_kilo.ai/" }, always(refused(DetailHost))},
	{"empty host", "", func(v view) string { return v.scheme + ":///api/users/me" }, always(refused(DetailHost))},
	// Ports.
	{"empty port", "", withAuthority(func(v view) string { return v.host + ":" }, "/api/users/me"), always(refused(DetailPort))},
	{"leading-zero port", "", withAuthority(func(v view) string { return v.host + ":0443" }, "/api/users/me"), always(refused(DetailPort))},
	{"port over 65535", "", withAuthority(func(v view) string { return v.host + ":65536" }, "/api/users/me"), always(refused(DetailPort))},
	{"huge port", "", withAuthority(func(v view) string { return v.host + ":99999999999999999999" }, "/api/users/me"), always(refused(DetailPort))},
	{"port zero", "", withAuthority(func(v view) string { return v.host + ":0" }, "/api/users/me"), always(refused(DetailPort))},
	{"signed port", "", withAuthority(func(v view) string { return v.host + ":+443" }, "/api/users/me"), always(refused(DetailPort))},
	{"two ports", "", withAuthority(func(v view) string { return v.host + ":443:443" }, "/api/users/me"), always(refused(DetailPort))},
	{"explicit default port", "", withAuthority(func(v view) string {
		if v.port != "" {
			return v.host + v.port
		}
		return v.host + ":443"
	}, "/api/users/me"), always(ok(RouteBackendAPI))},
	{"another port", "", withAuthority(func(v view) string { return v.host + ":8444" }, "/api/users/me"), always(denied(DetailNotWithinTargets))},
	// Fragments.
	{"fragment", "", onBackend("/api/users/me#x"), always(refused(DetailFragment))},
	{"empty fragment", "", onBackend("/api/users/me#"), always(refused(DetailFragment))},
	{"fragment after a query", "", onBackend("/api/users/me?a#b"), always(refused(DetailFragment))},
	{"fragment hiding a path", "", func(v view) string { return v.backend + "#/../organizations/o/user-tokens" }, always(refused(DetailFragment))},
	// Control characters and spaces, anywhere.
	{"tab in the path", "", onBackend("/api/users/\tme"), always(refused(DetailForbiddenCharacter))},
	{"newline in the host", "", withAuthority(func(v view) string { return v.host + "\n" + v.port }, "/"), always(refused(DetailForbiddenCharacter))},
	{"NUL in the query", "", onBackend("/api/users/me?a=\x00"), always(refused(DetailForbiddenCharacter))},
	{"DEL", "", onBackend("/api/users/me\x7f"), always(refused(DetailForbiddenCharacter))},
	{"leading space", "", func(v view) string { return " " + v.backend + "/api/users/me" }, always(refused(DetailForbiddenCharacter))},
	{"trailing space", "", onBackend("/api/users/me "), always(refused(DetailForbiddenCharacter))},
	{"empty URL", "", func(view) string { return "" }, always(refused(DetailEmpty))},
	{"over 8 KiB", "", onBackend("/api/" + strings.Repeat("a", MaxURLLength)), always(refused(DetailTooLong))},
	// Schemes, scheme-relative and opaque forms.
	{"scheme-relative", "", func(v view) string { return "//" + v.host + v.port + v.bpath + "/api/users/me" }, always(refused(DetailNotAbsolute))},
	{"absolute path only", "", func(v view) string { return v.bpath + "/api/users/me" }, always(refused(DetailNotAbsolute))},
	{"opaque", "", func(v view) string { return v.scheme + ":" + v.host + v.port + v.bpath + "/api/users/me" }, always(refused(DetailNotAbsolute))},
	{"one slash", "", func(v view) string { return v.scheme + ":/" + v.host + v.port + v.bpath + "/api/users/me" }, always(refused(DetailNotAbsolute))},
	{"upper-case scheme", "", func(v view) string {
		return strings.ToUpper(v.scheme) + strings.TrimPrefix(v.backend, v.scheme) + "/api/users/me"
	}, always(ok(RouteBackendAPI))},
	{"other scheme", "", func(v view) string { return "ftp://" + v.host + v.port + "/" }, always(refused(DetailScheme))},
	{"javascript scheme", "", func(view) string { return "javascript:alert(1)" }, always(refused(DetailScheme))},
	{"plain http to a remote host", "", func(v view) string { return "http://api.kilo.ai/api/users/me" }, always(refused(DetailHTTPNotLocal))},
	// The query is opaque and forwarded as is.
	{"query full of tricks", "", onBackend("/api/users/me?x=/../&y=%2f%5c;&z=%00%c0%ae&@=\\"), always(ok(RouteBackendAPI))},
	{"no path, only a query", "", func(v view) string { return v.scheme + "://" + v.host + v.port + "?x=1" }, func(v view) expect {
		if v.bpath != "" {
			return denied(DetailNotWithinTargets)
		}
		return ok(RouteBackendAPI)
	}},
	// Session ingest.
	{"bound session export", "", func(v view) string { return v.ingest + "/api/session/kilo-session-1/export" }, always(ok(RouteSessionIngest))},
	{"bound session with an encoded letter", "", func(v view) string { return v.ingest + "/api/session/kilo%2Dsession-1/export" }, always(refused(DetailEncodedUnreserved))},
	{"bound session in capitals", "", func(v view) string { return v.ingest + "/api/session/KILO-SESSION-1/export" }, func(v view) expect {
		if v.shared {
			return denied(DetailSessionTerritory)
		}
		return denied(DetailNoMatchingRoute)
	}},
	{"another session", "", func(v view) string { return v.ingest + "/api/session/other/ingest" }, func(v view) expect {
		if v.shared {
			return denied(DetailSessionTerritory)
		}
		return denied(DetailNoMatchingRoute)
	}},
	{"session escaping by dot segment", "", func(v view) string { return v.ingest + "/api/session/kilo-session-1/../other/export" }, always(refused(DetailDotSegment))},
	{"bootstrap POST", "POST", func(v view) string { return v.ingest + "/api/session" }, always(ok(RouteSessionIngest))},
	{"bootstrap as GET", "GET", func(v view) string { return v.ingest + "/api/session" }, func(v view) expect {
		if v.shared {
			return denied(DetailSessionTerritory)
		}
		return denied(DetailNoMatchingRoute)
	}},
	{"bootstrap with a lower-case method", "post", func(v view) string { return v.ingest + "/api/session" }, func(v view) expect {
		if v.shared {
			return denied(DetailSessionTerritory)
		}
		return denied(DetailNoMatchingRoute)
	}},
}

func TestTricksOnEveryLayout(t *testing.T) {
	for _, l := range layouts {
		pt := mustParseTargets(t, l.t)
		v := viewOf(t, l)
		for _, tr := range tricks {
			t.Run(l.name+"/"+tr.name, func(t *testing.T) {
				req := Request{URL: tr.url(v), Method: tr.method, KiloSessionID: "kilo-session-1", BootstrapSessionID: "kilo-session-1"}
				if req.Method == "" {
					req.Method = "GET"
				}
				d := (*Policy)(nil).Classify(req, pt)
				want := tr.want(v)
				got := expect{allowed: d.Allowed, route: d.RouteClass, reason: d.Reason, detail: d.Detail}
				if got != want {
					t.Fatalf("Classify(%q) = %+v, want %+v", req.URL, got, want)
				}
				if (d.Origin == "") != (d.Reason == ReasonInvalidUpstreamURL) {
					t.Errorf("origin %q with reason %q: origin must be set exactly when the URL is well-formed", d.Origin, d.Reason)
				}
				if d.Allowed && !contains(pt.Origins(), d.Origin) {
					t.Errorf("allowed origin %q is not a target origin %v", d.Origin, pt.Origins())
				}
			})
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestOriginIsNormalised(t *testing.T) {
	pt := mustParseTargets(t, layouts[0].t)
	for _, u := range []string{
		"https://api.kilo.ai/api/users/me",
		"HTTPS://API.KILO.AI/api/users/me",
		"https://Api.Kilo.Ai:443/api/users/me",
		"https://api.kilo.ai:443?x",
	} {
		d := (*Policy)(nil).Classify(Request{URL: u, Method: "GET"}, pt)
		if !d.Allowed || d.Origin != "https://api.kilo.ai" {
			t.Errorf("Classify(%q) = %+v, want backend_api at origin https://api.kilo.ai", u, d)
		}
	}
	d := (*Policy)(nil).Classify(Request{URL: "HTTP://LOCALHOST:80/x"}, pt)
	if d.Origin != "http://localhost" {
		t.Errorf("origin %q, want http://localhost", d.Origin)
	}
}

func TestSessionIDIsMatchedAsEncodeURIComponent(t *testing.T) {
	pt := mustParseTargets(t, layouts[0].t)
	for _, c := range []struct {
		session, path string
		allowed       bool
	}{
		{"a b", "/api/session/a%20b/export", true},
		{"a b", "/api/session/a%20B/export", false}, // hex is upper-case, as encodeURIComponent writes it
		{"a b", "/api/session/a+b/export", false},
		{"é!*'()~", "/api/session/%C3%A9!*'()~/import", true},
		{"a:b@c", "/api/session/a%3Ab%40c/ingest", true},
		{"a:b@c", "/api/session/a:b@c/ingest", false},
		{"", "/api/session/export", false},
		// A session id holding '/' or ';' encodes to %2F / %3B, which rules 2 and 3 refuse: such a session can
		// never ingest. Documented in the report as a contract consequence.
		{"a/b", "/api/session/a%2Fb/export", false},
	} {
		d := (*Policy)(nil).Classify(Request{URL: "https://ingest.kilosessions.ai" + c.path, Method: "GET", KiloSessionID: c.session}, pt)
		if d.Allowed != c.allowed || (c.allowed && d.RouteClass != RouteSessionIngest) {
			t.Errorf("session %q path %q: got %+v, want allowed=%v", c.session, c.path, d, c.allowed)
		}
	}
}

func TestNilTargetsAllowNothing(t *testing.T) {
	d := (*Policy)(nil).Classify(Request{URL: "https://api.kilo.ai/api/users/me"}, nil)
	if d.Allowed || d.Reason != ReasonUpstreamNotAllowed {
		t.Fatalf("got %+v, want upstream_not_allowed", d)
	}
}

func TestRefusalsNeverEchoTheURL(t *testing.T) {
	pt := mustParseTargets(t, layouts[0].t)
	const canary = "CANARYtoken123"
	for _, u := range []string{
		"https://api.kilo.ai/api/users/me?token=" + canary + "#x",
		"https://" + canary + "@api.kilo.ai/",
		"https://api.kilo.ai/" + canary + "/%2e%2e/x?" + canary,
		"https://evil.example/" + canary + "?" + canary,
		"https://api.kilo.ai/api/organizations/o/user-tokens?" + canary,
	} {
		d := (*Policy)(nil).Classify(Request{URL: u}, pt)
		if strings.Contains(d.Detail, canary) || strings.Contains(string(d.Reason), canary) || strings.Contains(d.Origin, canary) {
			t.Errorf("decision %+v echoes part of the URL", d)
		}
	}
}
