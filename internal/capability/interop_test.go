package capability

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	keyA = bytes.Repeat([]byte{0xA1}, KeySize)
	keyB = bytes.Repeat([]byte{0xB2}, KeySize)
)

func mustRing(t testing.TB, keys ...[]byte) *KeyRing {
	t.Helper()
	r, err := NewKeyRing(keys...)
	if err != nil {
		t.Fatalf("NewKeyRing: %v", err)
	}
	return r
}

// writeKeyFile writes keys in the format both implementations read and returns its path.
func writeKeyFile(t testing.TB, keys ...[]byte) string {
	t.Helper()
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k) + "\n")
	}
	p := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testSubject() Subject {
	return Subject{
		UserID:              "user_1",
		CloudAgentSessionID: "team-a/demo",
		KiloSessionID:       "ses_01HZYX8K3M4N5P6Q7R8S9T0V1W",
		OutboundContainerID: "6c1f0d0e-8f2a-4d3b-9a51-0e7f1b2c3d4e",
		UserToken:           "raw-user-token",
		Targets: Targets{
			BackendBaseURL:       "https://api.kilo.ai",
			ProviderBaseURL:      "https://api.kilo.ai/api/openrouter",
			SessionIngestBaseURL: "https://ingest.kilosessions.ai",
		},
	}
}

// interopSubjects are subjects whose serialisation differs between a naive Go encoder and JSON.stringify: HTML
// characters and U+2028/U+2029 (escaped by encoding/json, raw in Node), control characters, quotes and
// backslashes, non-BMP characters, and a provider token.
func interopSubjects() map[string]Subject {
	plain := testSubject()
	withProvider := testSubject()
	withProvider.ProviderToken = "provider-token"
	tricky := testSubject()
	tricky.UserID = "a<b>&c\u2028d\u2029e\u007f"
	tricky.CloudAgentSessionID = "quote\" backslash\\ slash/ tab\t nl\n cr\r bs\b ff\f nul\x00 us\x1f"
	tricky.KiloSessionID = "é中😀"
	tricky.UserToken = "tok<&>\u2028"
	tricky.ProviderToken = "p\u2029"
	tricky.Targets.BackendBaseURL = "https://api.kilo.ai/a?x=<y>&z=1#frag"
	localTargets := testSubject()
	localTargets.Targets = Targets{
		BackendBaseURL:       "http://127.0.0.1:8080",
		ProviderBaseURL:      "http://127.0.0.1:8080/api",
		SessionIngestBaseURL: "http://localhost:9090/ingest",
	}
	return map[string]Subject{"plain": plain, "provider token": withProvider, "tricky characters": tricky, "local targets": localTargets}
}

func TestGoIssuedTokensDecodeInNode(t *testing.T) {
	nodeBin(t)
	keyFile := writeKeyFile(t, keyA)
	r := mustRing(t, keyA)
	now := time.UnixMilli(1780833600000)
	for name, s := range interopSubjects() {
		t.Run(name, func(t *testing.T) {
			tok, c, err := Issue(r, s, now, 0)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			// The reference's own command line, as an operator would run it.
			out := runNode(t, []byte(tok+"\n"), []int{0, 1}, referenceScript(t), "decode", keyFile, strconv.FormatInt(c.IssuedAt+1000, 10))
			var res nodeResult
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("node output %q: %v", out, err)
			}
			if !res.OK {
				t.Fatalf("node refused a Go-issued token: %s", res.Reason)
			}
			if got, want := genericJSON(t, res.Claims), genericJSON(t, c.Plaintext()); !reflect.DeepEqual(got, want) {
				t.Fatalf("node decoded different claims\nnode %s\n  go %s", res.Claims, c.Plaintext())
			}
		})
	}
}

func TestNodeIssuedTokensDecodeInGo(t *testing.T) {
	nodeBin(t)
	keyFile := writeKeyFile(t, keyA)
	r := mustRing(t, keyA)
	for name, s := range interopSubjects() {
		t.Run(name, func(t *testing.T) {
			want := &Claims{Version: Version, Purpose: Purpose, Subject: s, IssuedAt: 1780833600000, ExpiresAt: 1780833600000 + 3600000}
			claimsFile := filepath.Join(t.TempDir(), "claims.json")
			if err := os.WriteFile(claimsFile, want.Plaintext(), 0o600); err != nil {
				t.Fatal(err)
			}
			tok := strings.TrimSuffix(string(runNode(t, nil, []int{0}, referenceScript(t), "issue", keyFile, claimsFile)), "\n")
			got, err := Decode(r, tok, time.UnixMilli(want.IssuedAt+1000))
			if err != nil {
				t.Fatalf("Go refused a Node-issued token: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Go decoded different claims\n got %s\nwant %s", got.Plaintext(), want.Plaintext())
			}
		})
	}
}

// With the same key, IV and claims, Go and Node must produce the same token, byte for byte: this pins the
// serialisation (field order, escaping), the GCM nonce handling and the part layout at once.
func TestGoAndNodeSealIdenticalTokens(t *testing.T) {
	nodeBin(t)
	keyFile := writeKeyFile(t, keyA)
	r := mustRing(t, keyA)
	var iv [ivSize]byte
	for i := range iv {
		iv[i] = byte(i * 7)
	}
	for name, s := range interopSubjects() {
		t.Run(name, func(t *testing.T) {
			c := &Claims{Version: Version, Purpose: Purpose, Subject: s, IssuedAt: 1780833600000, ExpiresAt: 1780848000000}
			goTok, err := r.seal(iv, c)
			if err != nil {
				t.Fatalf("seal: %v", err)
			}
			claimsFile := filepath.Join(t.TempDir(), "claims.json")
			if err := os.WriteFile(claimsFile, c.Plaintext(), 0o600); err != nil {
				t.Fatal(err)
			}
			nodeTok := strings.TrimSuffix(string(runNode(t, nil, []int{0}, referenceScript(t), "issue", keyFile, claimsFile,
				base64.StdEncoding.EncodeToString(iv[:]))), "\n")
			if goTok != nodeTok {
				t.Fatalf("tokens differ\n  go %s\nnode %s", goTok, nodeTok)
			}
		})
	}
}

// sealPlaintext seals arbitrary bytes as a token, bypassing the claims serialiser, so that tests can present any
// plaintext to both decoders.
func sealPlaintext(r *KeyRing, pt []byte) string {
	var iv [ivSize]byte
	sealed := r.aeads[0].Seal(nil, iv[:], pt, nil)
	return Prefix + base64.StdEncoding.EncodeToString(iv[:]) + ":" +
		base64.StdEncoding.EncodeToString(sealed[len(pt):]) + ":" + base64.StdEncoding.EncodeToString(sealed[:len(pt)])
}

// strictnessCases are plaintexts at the edges of the schema and of JSON itself. Each is decoded by Go and by the
// reference; they must agree on acceptance and on the claims, except where lonesurrogate marks the one deliberate
// difference.
func strictnessCases() []struct {
	name, pt      string
	lonesurrogate bool
	nowMs         int64
} {
	const (
		head    = `"version":1,"purpose":"kilo_api_session","userId":"u","cloudAgentSessionId":"c","kiloSessionId":"k","outboundContainerId":"o","userToken":"t"`
		targets = `"targets":{"backendBaseUrl":"https://a.example","providerBaseUrl":"https://b.example/api","sessionIngestBaseUrl":"https://c.example"}`
		times   = `"issuedAt":1000,"expiresAt":2000`
	)
	obj := func(parts ...string) string { return "{" + strings.Join(parts, ",") + "}" }
	type tc = struct {
		name, pt      string
		lonesurrogate bool
		nowMs         int64 // 0: 1500, inside the usual 1000..2000 validity
	}
	withTargets := func(b, p, i string) string {
		return fmt.Sprintf(`"targets":{"backendBaseUrl":%q,"providerBaseUrl":%q,"sessionIngestBaseUrl":%q}`, b, p, i)
	}
	return []tc{
		{name: "canonical", pt: obj(head, targets, times)},
		{name: "whitespace between tokens", pt: " \n\t" + strings.NewReplacer(`,"`, " ,\r\n \"", `":`, "\"\t: ").Replace(obj(head, targets, times)) + " \n"},
		{name: "fields in another order", pt: obj(times, targets, head)},
		{name: "provider token", pt: obj(head, `"providerToken":"p"`, targets, times)},
		{name: "provider token null", pt: obj(head, `"providerToken":null`, targets, times)},
		{name: "provider token empty", pt: obj(head, `"providerToken":""`, targets, times)},
		{name: "exponent integer", pt: obj(head, targets, `"issuedAt":1e3,"expiresAt":2E+3`)},
		{name: "fractional zero version", pt: `{"version":1.0,` + obj(head, targets, times)[len(`{"version":1,`):]},
		{name: "version as 10e-1", pt: `{"version":10e-1,` + obj(head, targets, times)[len(`{"version":1,`):]},
		{name: "version as true", pt: `{"version":true,` + obj(head, targets, times)[len(`{"version":1,`):]},
		{name: "negative zero issuedAt", pt: obj(head, targets, `"issuedAt":-0,"expiresAt":2000`), nowMs: 500},
		{name: "negative zero expiresAt", pt: obj(head, targets, `"issuedAt":0,"expiresAt":-0`)},
		{name: "underflowing issuedAt", pt: obj(head, targets, `"issuedAt":1e-400,"expiresAt":2000`), nowMs: 500},
		{name: "overflowing expiresAt", pt: obj(head, targets, `"issuedAt":0,"expiresAt":1e400`)},
		{name: "leading zero", pt: obj(head, targets, `"issuedAt":01000,"expiresAt":2000`)},
		{name: "plus sign", pt: obj(head, targets, `"issuedAt":+1000,"expiresAt":2000`)},
		{name: "fraction without digits", pt: obj(head, targets, `"issuedAt":1000.,"expiresAt":2000`)},
		{name: "hex number", pt: obj(head, targets, `"issuedAt":0x10,"expiresAt":2000`)},
		{name: "largest safe integer", pt: obj(head, targets, `"issuedAt":9007199254740000,"expiresAt":9007199254740991`), nowMs: 9007199254740500},
		{name: "rounds to a safe integer", pt: obj(head, targets, `"issuedAt":9007199254740000,"expiresAt":9007199254740990.5`), nowMs: 9007199254740500},
		{name: "rounds to 2^53", pt: obj(head, targets, `"issuedAt":9007199254740000,"expiresAt":9007199254740991.5`), nowMs: 9007199254740500},
		{name: "escaped key", pt: strings.Replace(obj(head, targets, times), `"userId"`, `"user\u0049d"`, 1)},
		{name: "duplicate through an escaped key", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"u","user\u0049d":"v"`, 1)},
		{name: "duplicate target", pt: obj(head, strings.Replace(targets, `}`, `,"backendBaseUrl":"https://x.example"}`, 1), times)},
		{name: "unknown nested key", pt: obj(head, strings.Replace(targets, `}`, `,"x":1}`, 1), times)},
		{name: "targets as array", pt: obj(head, `"targets":[]`, times)},
		{name: "__proto__ key", pt: obj(head, targets, times, `"__proto__":{}`)},
		{name: "escapes in values", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"`, 1)},
		{name: "escaped NUL is a character", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\u0000"`, 1)},
		{name: "raw control character", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, "\"userId\":\"a\x01b\"", 1)},
		{name: "raw DEL and U+2028", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, "\"userId\":\"a\x7fb\u2028\"", 1)},
		{name: "invalid escape", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\x"`, 1)},
		{name: "short unicode escape", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\u12"`, 1)},
		{name: "lone high surrogate", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\uD800"`, 1), lonesurrogate: true},
		{name: "lone low surrogate", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\uDC00x"`, 1), lonesurrogate: true},
		{name: "reversed surrogate pair", pt: strings.Replace(obj(head, targets, times), `"userId":"u"`, `"userId":"\uDC00\uD800"`, 1), lonesurrogate: true},
		{name: "byte order mark", pt: "\uFEFF" + obj(head, targets, times)},
		{name: "two byte order marks", pt: "\uFEFF\uFEFF" + obj(head, targets, times)},
		{name: "trailing comma", pt: obj(head, targets, times) + ","},
		{name: "trailing comma in object", pt: strings.TrimSuffix(obj(head, targets, times), "}") + ",}"},
		{name: "two objects", pt: obj(head, targets, times) + "{}"},
		{name: "empty object", pt: "{}"},
		{name: "null", pt: "null"},
		{name: "whitespace only", pt: " "},
		{name: "target with surrounding spaces", pt: obj(head, withTargets(" https://a.example ", "https://b.example", "https://c.example"), times)},
		{name: "target with a tab inside the scheme", pt: obj(head, withTargets("ht\ttps://a.example", "https://b.example", "https://c.example"), times)},
		{name: "target without slashes", pt: obj(head, withTargets("https:a.example", "https://b.example", "https://c.example"), times)},
		{name: "target with a non-special scheme", pt: obj(head, withTargets("mailto:x", "https://b.example", "https://c.example"), times)},
		{name: "target with an empty host", pt: obj(head, withTargets("https://", "https://b.example", "https://c.example"), times)},
		{name: "target with a bad port", pt: obj(head, withTargets("https://a.example:65536", "https://b.example", "https://c.example"), times)},
		{name: "target with a bad IPv4 address", pt: obj(head, withTargets("https://1.2.3.256", "https://b.example", "https://c.example"), times)},
		{name: "target that is relative", pt: obj(head, withTargets("/api", "https://b.example", "https://c.example"), times)},
		{name: "lifetime exactly 4h", pt: obj(head, targets, `"issuedAt":0,"expiresAt":14400000`), nowMs: 500},
		{name: "lifetime 4h and 1ms", pt: obj(head, targets, `"issuedAt":0,"expiresAt":14400001`), nowMs: 500},
	}
}

func TestStrictnessMatchesNode(t *testing.T) {
	nodeBin(t)
	r := mustRing(t, keyA)
	cases := strictnessCases()
	tokens := make([]string, len(cases))
	for i, c := range cases {
		tokens[i] = sealPlaintext(r, []byte(c.pt))
	}
	// The reference takes one clock per call: decode each group of cases that share a clock together.
	node := make([]nodeResult, len(cases))
	byNow := map[int64][]int{}
	for i, c := range cases {
		if c.nowMs == 0 {
			cases[i].nowMs = 1500
		}
		byNow[cases[i].nowMs] = append(byNow[cases[i].nowMs], i)
	}
	for now, idx := range byNow {
		toks := make([]string, len(idx))
		for j, i := range idx {
			toks[j] = tokens[i]
		}
		for j, res := range nodeDecodeMany(t, []string{base64.StdEncoding.EncodeToString(keyA)}, now, toks) {
			node[idx[j]] = res
		}
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Decode(r, tokens[i], time.UnixMilli(c.nowMs))
			n := node[i]
			if c.lonesurrogate {
				// The deliberate difference: Node keeps a lone surrogate, Go cannot represent one and refuses.
				if err == nil || ReasonOf(err) != ReasonInvalid {
					t.Fatalf("Go accepted or misclassified a lone surrogate: %v", err)
				}
				return
			}
			switch {
			case n.OK && err != nil:
				t.Fatalf("Node accepts, Go refuses: %v", err)
			case !n.OK && err == nil:
				t.Fatalf("Node refuses (%s), Go accepts: %s", n.Reason, got.Plaintext())
			case !n.OK:
				if ReasonOf(err) != n.Reason {
					t.Fatalf("Node says %s, Go says %v", n.Reason, err)
				}
			default:
				// Node's claims are in the text's field order with its own number rendering; compare values.
				if g, w := genericJSON(t, got.Plaintext()), genericJSON(t, n.Claims); !reflect.DeepEqual(g, w) {
					t.Fatalf("claims differ\n  go %s\nnode %s", got.Plaintext(), n.Claims)
				}
			}
		})
	}
}
