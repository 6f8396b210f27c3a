package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseTargetsRefusesBadBaseURLs(t *testing.T) {
	good := "https://api.kilo.ai"
	for _, c := range []struct {
		name, raw, detail string
	}{
		{"Empty", "", DetailEmpty},
		{"Relative", "/api", DetailNotAbsolute},
		{"Scheme-relative", "//api.kilo.ai", DetailNotAbsolute},
		{"Plain http to a remote host", "http://api.kilo.ai", DetailHTTPNotLocal},
		{"Plain http to a trailing-dot localhost", "http://localhost./", DetailHTTPNotLocal},
		{"Other scheme", "ftp://api.kilo.ai", DetailScheme},
		{"Userinfo", "https://user:pw@api.kilo.ai", DetailUserinfo},
		{"Empty userinfo", "https://@api.kilo.ai", DetailUserinfo},
		{"Query", "https://api.kilo.ai/?", DetailQuery},
		{"Fragment", "https://api.kilo.ai/#x", DetailFragment},
		{"Empty port", "https://api.kilo.ai:/", DetailPort},
		{"Leading-zero port", "https://api.kilo.ai:0443", DetailPort},
		{"Port over 65535", "https://api.kilo.ai:70000", DetailPort},
		{"IPv6 literal", "https://[::1]:8443", DetailHost},
		{"Trailing-dot host", "https://api.kilo.ai.", DetailHost},
		{"Non-ASCII host", "https://аpi.kilo.ai", DetailForbiddenCharacter},
		{"Space", "https://api.kilo.ai/a b", DetailForbiddenCharacter},
		{"Dot segment", "https://api.kilo.ai/api/../x", DetailDotSegment},
		{"Encoded separator", "https://api.kilo.ai/api%2Fx", DetailEncodedSeparator},
		{"Empty segment", "https://api.kilo.ai/a//b", DetailEmptySegment},
		{"Semicolon", "https://api.kilo.ai/api;v=1", DetailSemicolon},
		{"Encoded unreserved", "https://api.kilo.ai/%61pi", DetailEncodedUnreserved},
		{"Backslash", "https://api.kilo.ai/api\\x", DetailBackslash},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, field := range []string{"backendBaseUrl", "providerBaseUrl", "sessionIngestBaseUrl"} {
				tg := Targets{good, good, good}
				switch field {
				case "backendBaseUrl":
					tg.BackendBaseURL = c.raw
				case "providerBaseUrl":
					tg.ProviderBaseURL = c.raw
				default:
					tg.SessionIngestBaseURL = c.raw
				}
				pt, err := ParseTargets(tg)
				var te *TargetError
				if pt != nil || !errors.As(err, &te) {
					t.Fatalf("%s=%q: got %v, %v; want a *TargetError", field, c.raw, pt, err)
				}
				if te.Field != field || te.Detail != c.detail {
					t.Errorf("%s=%q: got field %q detail %q, want %q %q", field, c.raw, te.Field, te.Detail, field, c.detail)
				}
				if !strings.HasPrefix(err.Error(), field+": ") || te.Message == "" {
					t.Errorf("error %q does not name the field and why", err)
				}
			}
		})
	}
}

func TestTargetErrorNeverQuotesTheURL(t *testing.T) {
	_, err := ParseTargets(Targets{"https://admin:CANARYsecret@api.kilo.ai", "https://api.kilo.ai", "https://api.kilo.ai"})
	if err == nil || strings.Contains(err.Error(), "CANARY") {
		t.Fatalf("error %v: want a refusal that does not echo the userinfo", err)
	}
}

func TestParseTargetsNormalises(t *testing.T) {
	pt, err := ParseTargets(Targets{
		BackendBaseURL:       "HTTPS://API.Kilo.AI:443/",
		ProviderBaseURL:      "https://provider.kilo.ai:8443/api//",
		SessionIngestBaseURL: "http://LOCALHOST:80/ingest",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pt.Origins(), []string{"https://api.kilo.ai", "https://provider.kilo.ai:8443", "http://localhost"}; !slices.Equal(got, want) {
		t.Errorf("origins %v, want %v", got, want)
	}
	if pt.backend.base != "" || pt.provider.base != "/api" || pt.ingest.base != "/ingest" {
		t.Errorf("base paths %q %q %q, want \"\" /api /ingest", pt.backend.base, pt.provider.base, pt.ingest.base)
	}
	if !slices.Equal(pt.providerRoutes, []string{"/api/openrouter", "/api/gateway"}) {
		t.Errorf("provider routes %v", pt.providerRoutes)
	}
}

func TestProviderPrefixesFollowTheBasePath(t *testing.T) {
	for base, want := range map[string][]string{
		"":                    {"/api/openrouter", "/api/gateway"},
		"/v2":                 {"/v2/api/openrouter", "/v2/api/gateway"},
		"/api":                {"/api/openrouter", "/api/gateway"},
		"/x/api":              {"/x/api/openrouter", "/x/api/gateway"},
		"/api/openrouter":     {"/api/openrouter"},
		"/x/api/gateway":      {"/x/api/gateway"},
		"/xapi":               {"/xapi/api/openrouter", "/xapi/api/gateway"},
		"/api/openrouterless": {"/api/openrouterless/api/openrouter", "/api/openrouterless/api/gateway"},
	} {
		if got := providerPrefixes(base); !slices.Equal(got, want) {
			t.Errorf("providerPrefixes(%q) = %v, want %v", base, got, want)
		}
	}
}

func TestAllowList(t *testing.T) {
	a, err := ParseAllowList(append(slices.Clone(DefaultAllowList), "HTTP://Localhost:8080/", "https://x.example:443"))
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{
		"https://api.kilo.ai":            true,
		"https://ingest.kilosessions.ai": true,
		"http://localhost:8080":          true,
		"https://x.example":              true,
		"https://x.example:443":          false, // Allows takes normalised origins, as Decision.Origin is
		"https://api.kilo.ai.":           false,
		"https://evil.example":           false,
		"http://api.kilo.ai":             false,
		"":                               false,
	} {
		if got := a.Allows(origin); got != want {
			t.Errorf("Allows(%q) = %v, want %v", origin, got, want)
		}
	}
	if (*AllowList)(nil).Allows("https://api.kilo.ai") {
		t.Error("a nil allow-list allows something")
	}
	// Every target origin and every decision origin is in the same normal form as the allow-list.
	pt := mustParseTargets(t, Targets{"https://API.kilo.ai:443", "https://api.kilo.ai", "https://ingest.kilosessions.ai/"})
	for _, o := range pt.Origins() {
		if !a.Allows(o) {
			t.Errorf("target origin %q not allowed", o)
		}
	}
	d := (*Policy)(nil).Classify(Request{URL: "https://API.KILO.AI:443/api/users/me"}, pt)
	if !d.Allowed || !a.Allows(d.Origin) {
		t.Errorf("decision %+v: origin not allowed", d)
	}

	for _, bad := range []string{"https://api.kilo.ai/api", "http://api.kilo.ai", "https://u@api.kilo.ai", "api.kilo.ai", ""} {
		_, err := ParseAllowList([]string{"https://api.kilo.ai", bad})
		var te *TargetError
		if !errors.As(err, &te) || te.Field != "allowList[1]" {
			t.Errorf("ParseAllowList(%q): got %v, want a *TargetError for allowList[1]", bad, err)
		}
	}
}
