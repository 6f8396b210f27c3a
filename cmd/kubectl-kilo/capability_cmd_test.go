package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	cliCanaryUser     = "CANARY-cli-user-token-51d2"
	cliCanaryProvider = "CANARY-cli-provider-token-0c7e"
	issuedAtMs        = "1780833600000"
)

type cliResult struct {
	code           int
	stdout, stderr string
}

func kilo(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return cliResult{code, out.String(), errb.String()}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func keyFile(t *testing.T, fill byte) string {
	t.Helper()
	return writeFile(t, "keys", "# test ring\n"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32))+"\n")
}

func claimsFile(t *testing.T) string {
	t.Helper()
	return writeFile(t, "claims.json", `{
  "userId": "user_1",
  "cloudAgentSessionId": "team-a/demo",
  "kiloSessionId": "ses_01HZYX8K3M4N5P6Q7R8S9T0V1W",
  "outboundContainerId": "6c1f0d0e-8f2a-4d3b-9a51-0e7f1b2c3d4e",
  "userToken": "`+cliCanaryUser+`",
  "providerToken": "`+cliCanaryProvider+`",
  "targets": {
    "backendBaseUrl": "https://api.kilo.ai",
    "providerBaseUrl": "https://api.kilo.ai/api/openrouter",
    "sessionIngestBaseUrl": "https://ingest.kilosessions.ai"
  }
}`)
}

// issueToken runs `capability issue` at issuedAtMs and returns the token.
func issueToken(t *testing.T, keys string, extra ...string) string {
	t.Helper()
	r := kilo(t, "", append([]string{"capability", "issue", "--key-file", keys, "--claims-file", claimsFile(t), "--now", issuedAtMs}, extra...)...)
	if r.code != 0 {
		t.Fatalf("issue exited %d: %s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "kka1.") || !strings.HasSuffix(r.stdout, "\n") || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("issue printed %q; want one token line", r.stdout)
	}
	return strings.TrimSuffix(r.stdout, "\n")
}

type decodeOutput struct {
	OK     bool           `json:"ok"`
	Reason string         `json:"reason"`
	Claims map[string]any `json:"claims"`
}

func parseDecode(t *testing.T, r cliResult) decodeOutput {
	t.Helper()
	if strings.Count(r.stdout, "\n") != 1 || !strings.HasSuffix(r.stdout, "\n") {
		t.Fatalf("decode printed %q; want exactly one JSON line", r.stdout)
	}
	var d decodeOutput
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("decode printed %q: %v", r.stdout, err)
	}
	return d
}

func TestCapabilityIssueThenDecode(t *testing.T) {
	keys := keyFile(t, 0x11)
	tok := issueToken(t, keys, "--lifetime", "30m")

	r := kilo(t, tok+"\n", "capability", "decode", "--key-file", keys, "--now", "1780833660000")
	if r.code != 0 {
		t.Fatalf("decode exited %d: %s %s", r.code, r.stdout, r.stderr)
	}
	d := parseDecode(t, r)
	if !d.OK || d.Claims["userToken"] != "[REDACTED]" || d.Claims["providerToken"] != "[REDACTED]" {
		t.Fatalf("decode printed %s; want ok with both tokens redacted", r.stdout)
	}
	if d.Claims["kiloSessionId"] != "ses_01HZYX8K3M4N5P6Q7R8S9T0V1W" || d.Claims["issuedAt"] != 1780833600000.0 || d.Claims["expiresAt"] != 1780835400000.0 {
		t.Fatalf("decode printed the wrong claims: %s", r.stdout)
	}
	// The fields come in the wire order, as the Node reference prints them.
	if i, j := strings.Index(r.stdout, `"version"`), strings.Index(r.stdout, `"expiresAt"`); i < 0 || j < i {
		t.Fatalf("claims are not in wire order: %s", r.stdout)
	}
	for _, out := range []string{r.stdout, r.stderr} {
		if strings.Contains(out, cliCanaryUser) || strings.Contains(out, cliCanaryProvider) {
			t.Fatalf("decode without --show-secrets leaked a token: %s", out)
		}
	}

	r = kilo(t, tok, "capability", "decode", "--key-file", keys, "--now", "1780833660000", "--show-secrets")
	d = parseDecode(t, r)
	if r.code != 0 || d.Claims["userToken"] != cliCanaryUser || d.Claims["providerToken"] != cliCanaryProvider {
		t.Fatalf("decode --show-secrets printed %s", r.stdout)
	}
}

func TestCapabilityDecodeInputs(t *testing.T) {
	keys := keyFile(t, 0x22)
	tok := issueToken(t, keys)
	const now = "1780833660000"
	decode := func(stdin string, args ...string) cliResult {
		return kilo(t, stdin, append([]string{"capability", "decode", "--key-file", keys, "--now", now}, args...)...)
	}
	for _, tc := range []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOK   bool
	}{
		{"token argument", "", []string{tok}, 0, true},
		{"token argument after --", "", []string{"--", tok}, 0, true},
		{"stdin with one newline", tok + "\n", nil, 0, true},
		{"stdin without a newline", tok, nil, 0, true},
		{"stdin with two newlines", tok + "\n\n", nil, 1, false},
		{"stdin with CRLF", tok + "\r\n", nil, 1, false},
		{"stdin with leading space", " " + tok + "\n", nil, 1, false},
		{"argument with a trailing newline is used byte for byte", "", []string{tok + "\n"}, 1, false},
		{"empty argument", "", []string{""}, 1, false},
		{"empty argument after --", "", []string{"--", ""}, 1, false},
		{"argument starting with a dash after --", "", []string{"--", "-" + tok}, 1, false},
		{"argument that looks like a flag after --", "", []string{"--", "--show-secrets"}, 1, false},
		{"argument wins over stdin", "garbage", []string{tok}, 0, true},
		{"empty stdin", "", nil, 1, false},
		{"oversized stdin", strings.Repeat("A", 200000), nil, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := decode(tc.stdin, tc.args...)
			if r.code != tc.wantCode {
				t.Fatalf("exit %d, want %d: %s %s", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			d := parseDecode(t, r)
			if d.OK != tc.wantOK || (!tc.wantOK && d.Reason != "invalid_capability") {
				t.Fatalf("decode printed %s", r.stdout)
			}
		})
	}
}

func TestCapabilityDecodeReasons(t *testing.T) {
	keys := keyFile(t, 0x33)
	tok := issueToken(t, keys, "--lifetime", "10m")
	for _, tc := range []struct {
		name, keys, now, reason string
	}{
		{"expired at exactly expiresAt", keys, "1780834200000", "expired_capability"},
		{"issued too far in the future", keys, "1780833500000", "invalid_capability"},
		{"another key", keyFile(t, 0x44), "1780833600000", "invalid_capability"},
		{"malformed key file", writeFile(t, "bad", "# ok\nc2hvcnQ=\n"), "1780833600000", "capability_configuration_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kilo(t, "", "capability", "decode", "--key-file", tc.keys, "--now", tc.now, tok)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1: %s %s", r.code, r.stdout, r.stderr)
			}
			if d := parseDecode(t, r); d.OK || d.Reason != tc.reason {
				t.Fatalf("decode printed %s; want reason %s", r.stdout, tc.reason)
			}
			if strings.Contains(r.stderr, tok[5:30]) {
				t.Fatalf("stderr echoes the token: %s", r.stderr)
			}
		})
	}
	r := kilo(t, "", "capability", "decode", "--key-file", writeFile(t, "bad", "# ok\nc2hvcnQ=\n"), tok)
	if !strings.Contains(r.stderr, "line 2") || strings.Contains(r.stderr, "c2hvcnQ") {
		t.Fatalf("a malformed key file must be reported by line, without its content: %q", r.stderr)
	}
}

func TestCapabilityUsageErrors(t *testing.T) {
	keys := keyFile(t, 0x55)
	claims := claimsFile(t)
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"no subcommand", []string{"capability"}, "usage:"},
		{"unknown subcommand", []string{"capability", "mint"}, "unknown command"},
		{"issue without a key file", []string{"capability", "issue", "--claims-file", claims}, "--key-file is required"},
		{"issue without a claims file", []string{"capability", "issue", "--key-file", keys}, "--claims-file is required"},
		{"issue with an extra argument", []string{"capability", "issue", "--key-file", keys, "--claims-file", claims, "x"}, "unexpected argument"},
		{"issue with a lifetime over 4h", []string{"capability", "issue", "--key-file", keys, "--claims-file", claims, "--lifetime", "5h"}, "outside 1m to 4h"},
		{"issue with a lifetime under 1m", []string{"capability", "issue", "--key-file", keys, "--claims-file", claims, "--lifetime", "30s"}, "outside 1m to 4h"},
		{"issue with a bad --now", []string{"capability", "issue", "--key-file", keys, "--claims-file", claims, "--now", "yesterday"}, "epoch milliseconds"},
		{"issue with a negative --now", []string{"capability", "issue", "--key-file", keys, "--claims-file", claims, "--now", "-5"}, "epoch milliseconds"},
		{"issue with a missing key file", []string{"capability", "issue", "--key-file", "/nonexistent/keys", "--claims-file", claims}, "reading key file"},
		{"issue with a missing claims file", []string{"capability", "issue", "--key-file", keys, "--claims-file", "/nonexistent/c.json"}, "reading claims file"},
		{"issue with an unknown claims key", []string{"capability", "issue", "--key-file", keys, "--claims-file", writeFile(t, "c.json", `{"userId":"u","admin":true}`)}, `unknown key "admin"`},
		{"issue with a wrongly cased claims key", []string{"capability", "issue", "--key-file", keys, "--claims-file", writeFile(t, "c.json", `{"UserId":"u"}`)}, `unknown key "UserId"`},
		{"issue with an unknown target key", []string{"capability", "issue", "--key-file", keys, "--claims-file", writeFile(t, "c.json", `{"targets":{"extraBaseUrl":"https://x"}}`)}, `targets: unknown key "extraBaseUrl"`},
		{"issue with claims that are not JSON", []string{"capability", "issue", "--key-file", keys, "--claims-file", writeFile(t, "c.json", `userId: u`)}, "not a JSON object"},
		{"decode without a key file", []string{"capability", "decode", "kka1.x"}, "--key-file is required"},
		{"decode with an unknown flag", []string{"capability", "decode", "--key-file", keys, "--verbose"}, "flag provided but not defined"},
		{"decode with a token that starts with a dash and no --", []string{"capability", "decode", "--key-file", keys, "-kka1"}, "flag provided but not defined"},
		{"decode with flags after the token", []string{"capability", "decode", "--key-file", keys, "kka1.x", "--now", "5"}, "at most one TOKEN"},
		{"decode with a missing key file", []string{"capability", "decode", "--key-file", "/nonexistent/keys", "kka1.x"}, "reading key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kilo(t, "", tc.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2: %q %q", r.code, r.stdout, r.stderr)
			}
			if r.stdout != "" {
				t.Fatalf("a usage error printed to stdout: %q", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("stderr %q does not say %q", r.stderr, tc.stderr)
			}
		})
	}
}

func TestCapabilityIssueRefusals(t *testing.T) {
	keys := keyFile(t, 0x66)
	for _, tc := range []struct{ name, keys, claims, stderr string }{
		{"empty user id", keys, `{"userId":"","cloudAgentSessionId":"c","kiloSessionId":"k","outboundContainerId":"o","userToken":"` + cliCanaryUser + `","targets":{"backendBaseUrl":"https://a","providerBaseUrl":"https://b","sessionIngestBaseUrl":"https://c"}}`, "invalid_capability"},
		{"target that is not a URL", keys, `{"userId":"u","cloudAgentSessionId":"c","kiloSessionId":"k","outboundContainerId":"o","userToken":"` + cliCanaryUser + `","targets":{"backendBaseUrl":"api.kilo.ai","providerBaseUrl":"https://b","sessionIngestBaseUrl":"https://c"}}`, "invalid_capability"},
		{"malformed key file", writeFile(t, "bad", "not base64\n"), `{}`, "capability_configuration_error: line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kilo(t, "", "capability", "issue", "--key-file", tc.keys, "--claims-file", writeFile(t, "c.json", tc.claims))
			if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("exit %d stdout %q stderr %q; want 1 and %q", r.code, r.stdout, r.stderr, tc.stderr)
			}
			if strings.Contains(r.stderr, cliCanaryUser) {
				t.Fatalf("stderr leaks the user token: %q", r.stderr)
			}
		})
	}
}

func TestCapabilityHelp(t *testing.T) {
	for _, args := range [][]string{{"capability", "help"}, {"capability", "--help"}} {
		if r := kilo(t, "", args...); r.code != 0 || !strings.Contains(r.stdout, "capability decode") {
			t.Fatalf("%v: exit %d stdout %q", args, r.code, r.stdout)
		}
	}
	if r := kilo(t, "", "capability", "decode", "-h"); r.code != 0 || !strings.Contains(r.stderr, "capability decode") {
		t.Fatalf("decode -h: exit %d stderr %q", r.code, r.stderr)
	}
}
