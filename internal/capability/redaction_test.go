package capability

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const (
	canaryUser     = "CANARY-user-token-6a0f3c"
	canaryProvider = "CANARY-provider-token-e91b4d"
)

// render produces every textual form a value can take on its way to a log line, an error, an event or a JSON
// body: fmt with each verb and flag, encoding/json, and slog's text and JSON handlers.
func render(t *testing.T, v any) []string {
	t.Helper()
	var out []string
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
		out = append(out, fmt.Sprintf(f, v))
	}
	out = append(out, fmt.Sprint(v), fmt.Sprintln(v))
	if b, err := json.Marshal(v); err == nil {
		out = append(out, string(b))
	}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("issued", "value", v)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("issued", "value", v)
	return append(out, text.String(), js.String())
}

func assertClean(t *testing.T, what string, forms []string, secrets ...string) {
	t.Helper()
	for _, form := range forms {
		for _, s := range secrets {
			if s != "" && strings.Contains(form, s) {
				t.Errorf("%s leaks %q in %q", what, s, form)
			}
		}
	}
}

func TestSecretsNeverRender(t *testing.T) {
	r := mustRing(t, keyA)
	s := testSubject()
	s.UserToken, s.ProviderToken = canaryUser, canaryProvider
	tok, c, err := Issue(r, s, t0, 0)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	decoded, err := Decode(r, tok, t0)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	hexUser := fmt.Sprintf("%x", canaryUser)
	keyText := base64.StdEncoding.EncodeToString(keyA)
	secrets := []string{canaryUser, canaryProvider, hexUser, tok, tok[len(Prefix):40], keyText}
	for name, v := range map[string]any{
		"*Claims": c, "Claims": *c, "decoded *Claims": decoded, "Subject": s, "*Subject": &s,
		"Secret": s.UserToken, "*Secret": &s.UserToken, "[]Secret": []Secret{s.UserToken},
		"map of Secret": map[string]Secret{"t": s.ProviderToken}, "struct holding Claims": struct{ C *Claims }{c},
		"*KeyRing": r,
	} {
		assertClean(t, name, render(t, v), secrets...)
	}
	// The forms must still say something useful.
	if got := fmt.Sprint(c); !strings.Contains(got, "[REDACTED]") || !strings.Contains(got, s.KiloSessionID) {
		t.Errorf("claims render as %q: want the session id and [REDACTED]", got)
	}
	if got := fmt.Sprintf("%v", r); !strings.Contains(got, r.Fingerprint()) {
		t.Errorf("key ring renders as %q: want its fingerprint", got)
	}
	// Only the explicit accessors reveal.
	if decoded.UserToken.Reveal() != canaryUser || string(decoded.ProviderToken) != canaryProvider {
		t.Error("Reveal and string() must return the token")
	}
	if !bytes.Contains(decoded.Plaintext(), []byte(canaryUser)) {
		t.Error("Plaintext must carry the tokens")
	}
}

func TestErrorsCarryNoTokenMaterial(t *testing.T) {
	r := mustRing(t, keyA)
	s := testSubject()
	s.UserToken, s.ProviderToken = canaryUser, canaryProvider
	good, _, err := Issue(r, s, t0, 0)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	parts := strings.Split(good[len(Prefix):], ":")
	badClaims := func(pt string) string { return sealPlaintext(r, []byte(pt)) }
	tokens := map[string]string{
		"expired":               good,
		"wrong key":             func() string { t, _, _ := Issue(mustRing(t, keyB), s, t0, 0); return t }(),
		"flipped ciphertext":    Prefix + parts[0] + ":" + parts[1] + ":" + strings.Replace(parts[2], parts[2][:4], "AAAA", 1),
		"truncated":             good[:len(good)/2],
		"whitespace":            " " + good,
		"over length":           good + strings.Repeat("A", MaxTokenChars),
		"unknown key is canary": badClaims(`{"version":1,"` + canaryUser + `":1}`),
		"canary in a bad value": badClaims(`{"version":1,"purpose":"kilo_api_session","userId":"u","cloudAgentSessionId":"c","kiloSessionId":"k","outboundContainerId":"o","userToken":"` + canaryUser + `","targets":{"backendBaseUrl":"` + canaryProvider + `","providerBaseUrl":"https://b","sessionIngestBaseUrl":"https://c"},"issuedAt":1,"expiresAt":2}`),
		"canary as a number":    badClaims(`{"version":` + "1" + strings.Repeat("0", 30) + `}`),
		"bad escape by canary":  badClaims(`{"userId":"\` + canaryUser + `"}`),
	}
	for name, tok := range tokens {
		t.Run(name, func(t *testing.T) {
			now := t0
			if name == "expired" {
				now = t0.Add(5 * 60 * 60 * 1000 * 1e6)
			}
			_, err := Decode(r, tok, now)
			if err == nil {
				t.Fatal("Decode accepted it")
			}
			forms := append(render(t, err), err.Error())
			assertClean(t, "error", forms, canaryUser, canaryProvider, parts[0], parts[1], parts[2][:16], tok[len(tok)-16:])
		})
	}
	// Issue's errors, too.
	s.UserID = ""
	_, _, err = Issue(r, s, t0, 0)
	assertClean(t, "Issue error", append(render(t, err), err.Error()), canaryUser, canaryProvider)
}
