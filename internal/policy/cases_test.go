package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// policyCase is one worked case from testdata/cases/policy.json (the shared contract's examples).
type policyCase struct {
	Targets            string `json:"targets"`
	Session            string `json:"session"`
	Method             string `json:"method"`
	BootstrapSessionID string `json:"bootstrapSessionId"`
	URL                string `json:"url"`
	Expect             struct {
		Allowed    bool   `json:"allowed"`
		RouteClass string `json:"routeClass"`
		Reason     string `json:"reason"`
	} `json:"expect"`
	Why string `json:"why"`
}

type casesFile struct {
	Targets map[string]Targets `json:"targets"`
	Cases   []policyCase       `json:"cases"`
}

func loadCases(tb testing.TB) casesFile {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "cases", "policy.json"))
	if err != nil {
		tb.Fatalf("reading shared policy cases: %v", err)
	}
	var f casesFile
	if err := json.Unmarshal(raw, &f); err != nil {
		tb.Fatalf("parsing shared policy cases: %v", err)
	}
	if len(f.Cases) == 0 {
		tb.Fatal("no policy cases")
	}
	return f
}

func mustParseTargets(tb testing.TB, t Targets) *ParsedTargets {
	tb.Helper()
	p, err := ParseTargets(t)
	if err != nil {
		tb.Fatalf("ParseTargets(%+v): %v", t, err)
	}
	return p
}

func TestSharedCases(t *testing.T) {
	f := loadCases(t)
	parsed := map[string]*ParsedTargets{}
	for name, tg := range f.Targets {
		parsed[name] = mustParseTargets(t, tg)
	}
	for _, c := range f.Cases {
		name := c.Targets + " " + c.Method + " " + c.URL
		t.Run(name, func(t *testing.T) {
			pt, ok := parsed[c.Targets]
			if !ok {
				t.Fatalf("case names unknown targets %q", c.Targets)
			}
			req := Request{URL: c.URL, Method: c.Method, KiloSessionID: c.Session, BootstrapSessionID: c.BootstrapSessionID}
			if req.Method == "" {
				req.Method = "GET"
			}
			d := (*Policy)(nil).Classify(req, pt)
			if d.Allowed != c.Expect.Allowed || string(d.RouteClass) != c.Expect.RouteClass || string(d.Reason) != c.Expect.Reason {
				t.Fatalf("got %+v, want %+v (%s)", d, c.Expect, c.Why)
			}
			if d.Allowed && d.Credential != CredentialUser {
				t.Errorf("credential %q without a provider token, want user", d.Credential)
			}
			if !d.Allowed && d.Detail == "" {
				t.Errorf("refusal without a detail")
			}
			// The same request with a provider token: only the model routes switch credential.
			req.HasProviderToken = true
			d2 := (*Policy)(nil).Classify(req, pt)
			want := d
			if d.RouteClass == RouteProviderModel || d.RouteClass == RouteOrganizationModels {
				want.Credential = CredentialProvider
			}
			if d2 != want {
				t.Errorf("with a provider token got %+v, want %+v", d2, want)
			}
		})
	}
}
