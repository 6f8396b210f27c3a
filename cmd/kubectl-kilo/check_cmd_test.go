package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

type sharedCases struct {
	Targets map[string]policy.Targets `json:"targets"`
	Cases   []struct {
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
	} `json:"cases"`
}

func loadSharedCases(t *testing.T) sharedCases {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "cases", "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c sharedCases
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func writeJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "f.json")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// runCLI runs kubectl-kilo in process and returns the exit code, stdout and stderr.
func runCLI(stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// parseAnswer checks that stdout is exactly one JSON line and decodes it strictly.
func parseAnswer(t *testing.T, stdout string) checkAnswer {
	t.Helper()
	if strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, "\n") {
		t.Fatalf("stdout %q is not one line", stdout)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var a checkAnswer
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	return a
}

func TestCheckAnswersEverySharedCase(t *testing.T) {
	sc := loadSharedCases(t)
	files := map[string]string{}
	for name, tg := range sc.Targets {
		files[name] = writeJSON(t, tg)
	}
	for _, c := range sc.Cases {
		args := []string{"check", "--targets-file", files[c.Targets], "--session", c.Session}
		if c.Method != "" {
			args = append(args, "--method", c.Method)
		}
		if c.BootstrapSessionID != "" {
			args = append(args, "--bootstrap-session", c.BootstrapSessionID)
		}
		args = append(args, "--", c.URL)
		code, stdout, stderr := runCLI("", args...)
		a := parseAnswer(t, stdout)
		want := checkAnswer{Allowed: c.Expect.Allowed, RouteClass: c.Expect.RouteClass, Reason: c.Expect.Reason}
		if c.Expect.Allowed {
			want.Credential = "user"
		}
		a.Detail = "" // the shared cases do not pin details
		wantCode := 1
		if c.Expect.Allowed {
			wantCode = 0
		}
		if a != want || code != wantCode || stderr != "" {
			t.Errorf("%s %s: exit %d %+v stderr %q, want exit %d %+v", c.Targets, c.URL, code, a, stderr, wantCode, want)
		}
	}
}

var defaultTargets = policy.Targets{
	BackendBaseURL:       "https://api.kilo.ai",
	ProviderBaseURL:      "https://api.kilo.ai",
	SessionIngestBaseURL: "https://ingest.kilosessions.ai",
}

func TestCheckTakesTheURLByteForByte(t *testing.T) {
	f := writeJSON(t, defaultTargets)
	for _, c := range []struct{ url, detail string }{
		{"", policy.DetailEmpty},
		{" https://api.kilo.ai/api/users/me", policy.DetailForbiddenCharacter},
		{"https://api.kilo.ai/api/users/me\x01", policy.DetailForbiddenCharacter},
		{"https://api.kilo.ai/api/users/me\n", policy.DetailForbiddenCharacter},
		{"--session", policy.DetailNotAbsolute},
		{"-h", policy.DetailNotAbsolute},
	} {
		code, stdout, stderr := runCLI("", "check", "--targets-file", f, "--session", "s", "--", c.url)
		a := parseAnswer(t, stdout)
		if code != 1 || a != (checkAnswer{Reason: string(policy.ReasonInvalidUpstreamURL), Detail: c.detail}) || stderr != "" {
			t.Errorf("URL %q: exit %d %+v stderr %q, want exit 1 invalid_upstream_url/%s", c.url, code, a, stderr, c.detail)
		}
	}
}

func TestCheckFlagsAnywhereAndStdin(t *testing.T) {
	f := writeJSON(t, defaultTargets)
	deny := writeJSON(t, []map[string]any{{"path": "/api/admin/**", "methods": []string{"post"}}})
	for _, c := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  checkAnswer
	}{
		{"provider token switches the model credential", "",
			[]string{"--targets-file", f, "--session", "s", "--provider-token", "https://api.kilo.ai/api/openrouter/v1/chat/completions"},
			0, checkAnswer{Allowed: true, RouteClass: "provider_model", Credential: "provider"}},
		{"flags after the URL", "",
			[]string{"https://api.kilo.ai/api/users/me", "--targets-file", f, "--session", "s"},
			0, checkAnswer{Allowed: true, RouteClass: "backend_api", Credential: "user"}},
		{"targets from stdin", `{"backendBaseUrl":"https://api.kilo.ai","providerBaseUrl":"https://api.kilo.ai","sessionIngestBaseUrl":"https://api.kilo.ai"}`,
			[]string{"--targets-file=-", "--session=s1", "--method=POST", "--bootstrap-session=s1", "https://api.kilo.ai/api/session"},
			0, checkAnswer{Allowed: true, RouteClass: "session_ingest", Credential: "user"}},
		{"deny rules file", "",
			[]string{"--targets-file", f, "--session", "s", "--deny-rules-file", deny, "--method", "POST", "https://api.kilo.ai/api/admin/users"},
			1, checkAnswer{Reason: "upstream_not_allowed", Detail: "deny_rule"}},
		{"deny rule for another method", "",
			[]string{"--targets-file", f, "--session", "s", "--deny-rules-file", deny, "https://api.kilo.ai/api/admin/users"},
			0, checkAnswer{Allowed: true, RouteClass: "backend_api", Credential: "user"}},
	} {
		code, stdout, stderr := runCLI(c.stdin, append([]string{"check"}, c.args...)...)
		if a := parseAnswer(t, stdout); code != c.code || a != c.want || stderr != "" {
			t.Errorf("%s: exit %d %+v stderr %q, want exit %d %+v", c.name, code, a, stderr, c.code, c.want)
		}
	}
}

func TestCheckUsageErrors(t *testing.T) {
	good := writeJSON(t, defaultTargets)
	bad := writeJSON(t, policy.Targets{BackendBaseURL: "http://api.kilo.ai", ProviderBaseURL: "https://api.kilo.ai", SessionIngestBaseURL: "https://api.kilo.ai"})
	secret := writeJSON(t, policy.Targets{BackendBaseURL: "https://u:CANARYpw@api.kilo.ai", ProviderBaseURL: "https://api.kilo.ai", SessionIngestBaseURL: "https://api.kilo.ai"})
	unknown := writeJSON(t, map[string]string{"backendBaseUrl": "https://a.example", "providerBaseUrl": "https://a.example", "sessionIngestBaseUrl": "https://a.example", "ingestBaseUrl": "x"})
	badRule := writeJSON(t, []map[string]any{{"path": "/a/**/b"}})
	notJSON := filepath.Join(t.TempDir(), "x.json")
	if err := os.WriteFile(notJSON, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	u := "https://api.kilo.ai/"
	for _, c := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"no URL", []string{"--targets-file", good, "--session", "s"}, "exactly one URL"},
		{"two URLs", []string{"--targets-file", good, "--session", "s", u, u}, "exactly one URL"},
		{"no targets file", []string{"--session", "s", "--targets-file=", u}, "--targets-file is required"},
		{"no session", []string{"--targets-file", good, u}, "--session is required"},
		{"bad method", []string{"--targets-file", good, "--session", "s", "--method", "GE T", u}, "not an HTTP method"},
		{"unknown flag", []string{"--targets-file", good, "--session", "s", "--nope", u}, "flag provided but not defined"},
		{"missing targets file", []string{"--targets-file", good + ".missing", "--session", "s", u}, "no such file"},
		{"targets file not JSON", []string{"--targets-file", notJSON, "--session", "s", u}, "parsing"},
		{"unknown key in the targets file", []string{"--targets-file", unknown, "--session", "s", u}, "unknown field"},
		{"invalid target", []string{"--targets-file", bad, "--session", "s", u}, "backendBaseUrl: must use https"},
		{"target with a password", []string{"--targets-file", secret, "--session", "s", u}, "backendBaseUrl: must not contain userinfo"},
		{"bad deny rule", []string{"--targets-file", good, "--session", "s", "--deny-rules-file", badRule, u}, `"**" may only be the last segment`},
	} {
		code, stdout, stderr := runCLI("", append([]string{"check"}, c.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.stderr) {
			t.Errorf("%s: exit %d stdout %q stderr %q, want exit 2 and %q on stderr", c.name, code, stdout, stderr, c.stderr)
		}
		if strings.Contains(stderr, "CANARY") {
			t.Errorf("%s: stderr echoes a secret: %q", c.name, stderr)
		}
	}
}

// TestCheckBinary runs the built plugin once, as kubectl would: argv carries the URL untouched.
func TestCheckBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go toolchain on PATH to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "kubectl-kilo")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building kubectl-kilo: %v\n%s", err, out)
	}
	f := writeJSON(t, defaultTargets)
	for _, c := range []struct {
		url  string
		code int
		want checkAnswer
	}{
		{"https://ingest.kilosessions.ai/api/session/s%201/export", 0, checkAnswer{Allowed: true, RouteClass: "session_ingest", Credential: "user"}},
		{"\thttps://api.kilo.ai/", 1, checkAnswer{Reason: "invalid_upstream_url", Detail: policy.DetailForbiddenCharacter}},
		{"", 1, checkAnswer{Reason: "invalid_upstream_url", Detail: policy.DetailEmpty}},
	} {
		cmd := exec.Command(bin, "check", "--targets-file", f, "--session", "s 1", "--", c.url)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if a := parseAnswer(t, out.String()); code != c.code || a != c.want || errb.Len() != 0 {
			t.Errorf("%q: exit %d %+v stderr %q, want exit %d %+v", c.url, code, a, errb.String(), c.code, c.want)
		}
	}
}
