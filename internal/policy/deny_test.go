package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestDenyRuleSyntaxErrors(t *testing.T) {
	for _, c := range []struct {
		rule DenyRule
		want string
	}{
		{DenyRule{Path: "api/admin"}, "must start with /"},
		{DenyRule{Path: ""}, "must start with /"},
		{DenyRule{Path: "/"}, "empty segment"},
		{DenyRule{Path: "/api//admin"}, "empty segment"},
		{DenyRule{Path: "/api/admin/"}, "empty segment"},
		{DenyRule{Path: "/api/**/admin"}, `"**" may only be the last segment`},
		{DenyRule{Path: "/api/adm*"}, "whole segments"},
		{DenyRule{Path: "/api/***"}, "whole segments"},
		{DenyRule{Path: "/api/%61dmin"}, "must not contain '%'"},
		{DenyRule{Path: "/api/admin?x=1"}, "must not contain"},
		{DenyRule{Path: "/api/admin;x"}, "must not contain"},
		{DenyRule{Path: "/api/../admin"}, `".."`},
		{DenyRule{Path: "/api/a:b"}, "only letters"},
		{DenyRule{Path: "/" + strings.Repeat("a", maxDenyPathLength)}, "at most"},
		{DenyRule{Path: "/api/admin", Methods: []string{"GET", ""}}, "not an HTTP method"},
		{DenyRule{Path: "/api/admin", Methods: []string{"GE T"}}, "not an HTTP method"},
	} {
		_, err := New([]DenyRule{{Path: "/ok"}, c.rule})
		var de *DenyRuleError
		if !errors.As(err, &de) || de.Index != 1 || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): got %v, want a *DenyRuleError for rule 1 containing %q", c.rule, err, c.want)
		}
	}
}

func TestDenyRulesInTheBackendCatchAll(t *testing.T) {
	p, err := New([]DenyRule{
		{Path: "/api/admin/**"},
		{Path: "/api/users/*/delete", Methods: []string{"post", "DELETE"}},
		{Path: "/api/exact"},
		{Path: "/api/reports/**", Methods: []string{"GET"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	shared := mustParseTargets(t, Targets{"https://api.kilo.ai", "https://api.kilo.ai", "https://api.kilo.ai"})
	for _, c := range []struct {
		method, path string
		want         expect
	}{
		{"GET", "/api/admin", denied(DetailDenyRule)},
		{"GET", "/api/admin/", denied(DetailDenyRule)},
		{"GET", "/api/admin/x/y", denied(DetailDenyRule)},
		{"GET", "/API/Admin/x", denied(DetailDenyRule)},
		{"GET", "/api/administrator", ok(RouteBackendAPI)},
		{"GET", "/api/users/1/delete", ok(RouteBackendAPI)}, // method not listed
		{"POST", "/api/users/1/delete", denied(DetailDenyRule)},
		{"delete", "/api/users/1/delete", denied(DetailDenyRule)},
		{"POST", "/api/users/1/delete/", denied(DetailDenyRule)},
		{"POST", "/api/users/delete", ok(RouteBackendAPI)}, // '*' is exactly one segment
		{"POST", "/api/users/1/2/delete", ok(RouteBackendAPI)},
		{"POST", "/api/users/1/delete/x", ok(RouteBackendAPI)}, // no "/**"
		{"GET", "/api/exact", denied(DetailDenyRule)},
		{"GET", "/api/exact/", denied(DetailDenyRule)},
		{"GET", "/api/exact/below", ok(RouteBackendAPI)},
		// Express, Next.js and Go's ServeMux all serve HEAD with the GET handler (which runs in full; only the body
		// is dropped), so a GET rule that let HEAD through would be a rule with a side door.
		{"GET", "/api/reports/1", denied(DetailDenyRule)},
		{"HEAD", "/api/reports/1", denied(DetailDenyRule)},
		{"head", "/api/reports", denied(DetailDenyRule)},
		{"POST", "/api/reports/1", ok(RouteBackendAPI)},
		{"GET", "/api/ex%61ct", refused(DetailEncodedUnreserved)}, // the spelling around a rule is refused earlier
		// Deny rules only narrow the backend catch-all: allowed routes of other classes are unaffected, and the
		// built-in deny and session territory keep their own detail.
		{"GET", "/api/openrouter/v1/chat", ok(RouteProviderModel)},
		{"GET", "/api/organizations/o/user-tokens", denied(DetailCredentialMinting)},
		{"GET", "/api/session/s/export", ok(RouteSessionIngest)},
	} {
		d := p.Classify(Request{URL: "https://api.kilo.ai" + c.path, Method: c.method, KiloSessionID: "s"}, shared)
		got := expect{allowed: d.Allowed, route: d.RouteClass, reason: d.Reason, detail: d.Detail}
		if got != c.want {
			t.Errorf("%s %s: got %+v, want %+v", c.method, c.path, got, c.want)
		}
	}
}

func TestDenyEverythingBelowTheRoot(t *testing.T) {
	p, err := New([]DenyRule{{Path: "/**", Methods: []string{"DELETE"}}})
	if err != nil {
		t.Fatal(err)
	}
	pt := mustParseTargets(t, layouts[0].t)
	if d := p.Classify(Request{URL: "https://api.kilo.ai", Method: "DELETE"}, pt); d.Detail != DetailDenyRule {
		t.Errorf("DELETE /: %+v, want deny_rule", d)
	}
	if d := p.Classify(Request{URL: "https://api.kilo.ai/api/x", Method: "GET"}, pt); !d.Allowed {
		t.Errorf("GET /api/x: %+v, want backend_api", d)
	}
}
