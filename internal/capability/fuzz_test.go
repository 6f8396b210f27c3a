package capability

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzRing holds every key the vectors use, so that fuzzed mutations of vector tokens reach the JSON scanner.
func fuzzRing(t testing.TB, vs []vector) *KeyRing {
	seen := map[string]bool{}
	var keys [][]byte
	for _, v := range vs {
		for _, k := range v.Keys {
			if !seen[k] {
				seen[k] = true
				b, _ := base64.StdEncoding.DecodeString(k)
				keys = append(keys, b)
			}
		}
	}
	return mustRing(t, keys...)
}

func FuzzDecode(f *testing.F) {
	vs := loadVectors(f)
	r := fuzzRing(f, vs)
	for _, v := range vs {
		f.Add(v.Token, v.NowMs)
	}
	f.Fuzz(func(t *testing.T, token string, nowMs int64) {
		c, err := Decode(r, token, time.UnixMilli(nowMs))
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || (e.Reason != ReasonInvalid && e.Reason != ReasonExpired) {
				t.Fatalf("Decode failed with %T %v; want an *Error with a token reason", err, err)
			}
			if len(token) >= 12 && strings.Contains(err.Error(), token) {
				t.Fatalf("error %q contains the token", err)
			}
			return
		}
		// Whatever Decode accepts is canonical and satisfies every rule of docs/DESIGN.md §3.
		parts := strings.Split(token[len(Prefix):], ":")
		for _, p := range parts {
			b, _ := base64.StdEncoding.DecodeString(p)
			if base64.StdEncoding.EncodeToString(b) != p {
				t.Fatalf("accepted a non-canonical part %q", p)
			}
		}
		checkClaimsInvariants(t, c)
		if c.ExpiresAt <= nowMs || c.IssuedAt > nowMs+clockSkewMs {
			t.Fatalf("accepted a token outside its validity at %d: %d..%d", nowMs, c.IssuedAt, c.ExpiresAt)
		}
		// And it re-seals to a token that decodes to the same claims.
		tok, err := r.seal([ivSize]byte{}, c)
		if err != nil {
			t.Fatalf("re-sealing accepted claims: %v", err)
		}
		again, err := Decode(r, tok, time.UnixMilli(nowMs))
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("re-sealed claims do not round-trip: %v", err)
		}
	})
}

func checkClaimsInvariants(t *testing.T, c *Claims) {
	t.Helper()
	if c.Version != 1 || c.Purpose != Purpose {
		t.Fatalf("accepted version %d purpose %q", c.Version, c.Purpose)
	}
	for _, s := range []string{c.UserID, c.CloudAgentSessionID, c.KiloSessionID, c.OutboundContainerID, string(c.UserToken)} {
		if s == "" || !utf8.ValidString(s) {
			t.Fatalf("accepted an empty or invalid string %q", s)
		}
	}
	for _, u := range []string{c.Targets.BackendBaseURL, c.Targets.ProviderBaseURL, c.Targets.SessionIngestBaseURL} {
		if !validTargetURL(u) {
			t.Fatalf("accepted target %q", u)
		}
	}
	if c.IssuedAt < 0 || c.ExpiresAt <= c.IssuedAt || c.ExpiresAt-c.IssuedAt > maxLifetimeMs || c.ExpiresAt > maxSafeInteger {
		t.Fatalf("accepted times %d..%d", c.IssuedAt, c.ExpiresAt)
	}
}

var keyRingDetail = regexp.MustCompile(`^(line N: key is not standard padded baseN|line N: key is N bytes, want N|key ring holds no keys|key ring is larger than N MiB)$`)

func FuzzParseKeyRing(f *testing.F) {
	a, b := base64.StdEncoding.EncodeToString(keyA), base64.StdEncoding.EncodeToString(keyB)
	for _, seed := range []string{"", a, a + "\n" + b + "\n", "# c\n\n " + a + " \r\n", "AAAA\n", a + "\n" + a[:20], "=\n" + a, "\xff\xfe"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseKeyRing(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Reason != ReasonConfiguration {
				t.Fatalf("ParseKeyRing failed with %v; want a %s", err, ReasonConfiguration)
			}
			// The detail is one of the fixed messages with numbers filled in: nothing from the input.
			if d := regexp.MustCompile(`[0-9]+`).ReplaceAllString(e.Detail, "N"); !keyRingDetail.MatchString(d) {
				t.Fatalf("detail %q is not one of the fixed messages", e.Detail)
			}
			return
		}
		n := 0
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			line = bytes.TrimSpace(line)
			if len(line) == 0 || line[0] == '#' {
				continue
			}
			n++
			k, err := base64.StdEncoding.Strict().DecodeString(string(line))
			if err != nil || len(k) != KeySize || base64.StdEncoding.EncodeToString(k) != string(line) {
				t.Fatalf("accepted key line %q", line)
			}
		}
		if r.Len() != n || n == 0 {
			t.Fatalf("ring has %d keys for %d key lines", r.Len(), n)
		}
	})
}

// referenceClaims is the specification executed the obvious way: encoding/json for the grammar and the escapes,
// a token walk for exact-case keys and duplicates at every level, then Node's validateClaims rule by rule. The
// scanner must agree with it on every input (FuzzClaimsJSONDifferential).
func referenceClaims(pt []byte) (*Claims, bool) {
	if !utf8.Valid(pt) {
		return nil, false
	}
	pt = bytes.TrimPrefix(pt, []byte("\uFEFF"))
	if !json.Valid(pt) {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(pt))
	d.UseNumber()
	v, ok := walkJSON(d)
	if !ok {
		return nil, false
	}
	top, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	allowed := map[string]bool{"version": true, "purpose": true, "userId": true, "cloudAgentSessionId": true, "kiloSessionId": true, "outboundContainerId": true, "userToken": true, "providerToken": true, "targets": true, "issuedAt": true, "expiresAt": true}
	for k := range top {
		if !allowed[k] {
			return nil, false
		}
	}
	str := func(m map[string]any, k string) (string, bool) {
		s, ok := m[k].(string)
		return s, ok && s != ""
	}
	safeInt := func(k string) (int64, bool) {
		n, ok := top[k].(json.Number)
		if !ok {
			return 0, false
		}
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return 0, false
		}
		if math.IsInf(f, 0) || f != math.Trunc(f) || math.Abs(f) > maxSafeInteger {
			return 0, false
		}
		return int64(f), true
	}
	c := &Claims{Version: 1, Purpose: Purpose}
	if v, ok := safeInt("version"); !ok || v != 1 {
		return nil, false
	}
	if p, _ := str(top, "purpose"); p != Purpose {
		return nil, false
	}
	var ok1, ok2, ok3, ok4, ok5 bool
	c.UserID, ok1 = str(top, "userId")
	c.CloudAgentSessionID, ok2 = str(top, "cloudAgentSessionId")
	c.KiloSessionID, ok3 = str(top, "kiloSessionId")
	c.OutboundContainerID, ok4 = str(top, "outboundContainerId")
	var ut string
	ut, ok5 = str(top, "userToken")
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return nil, false
	}
	c.UserToken = Secret(ut)
	if _, present := top["providerToken"]; present {
		pt, ok := str(top, "providerToken")
		if !ok {
			return nil, false
		}
		c.ProviderToken = Secret(pt)
	}
	tg, ok := top["targets"].(map[string]any)
	if !ok || len(tg) != 3 {
		return nil, false
	}
	var okB, okP, okI bool
	c.Targets.BackendBaseURL, okB = str(tg, "backendBaseUrl")
	c.Targets.ProviderBaseURL, okP = str(tg, "providerBaseUrl")
	c.Targets.SessionIngestBaseURL, okI = str(tg, "sessionIngestBaseUrl")
	if !(okB && okP && okI) || !validTargetURL(c.Targets.BackendBaseURL) || !validTargetURL(c.Targets.ProviderBaseURL) || !validTargetURL(c.Targets.SessionIngestBaseURL) {
		return nil, false
	}
	var okA, okE bool
	c.IssuedAt, okA = safeInt("issuedAt")
	c.ExpiresAt, okE = safeInt("expiresAt")
	if !okA || !okE || c.IssuedAt < 0 || c.ExpiresAt <= c.IssuedAt || c.ExpiresAt-c.IssuedAt > maxLifetimeMs {
		return nil, false
	}
	return c, true
}

// walkJSON reads one value from d's token stream into maps and slices, refusing a duplicate key in any object.
func walkJSON(d *json.Decoder) (any, bool) {
	tok, err := d.Token()
	if err != nil {
		return nil, false
	}
	switch tok {
	case json.Delim('{'):
		m := map[string]any{}
		for d.More() {
			k, err := d.Token()
			if err != nil {
				return nil, false
			}
			key := k.(string)
			if _, dup := m[key]; dup {
				return nil, false
			}
			v, ok := walkJSON(d)
			if !ok {
				return nil, false
			}
			m[key] = v
		}
		_, err := d.Token()
		return m, err == nil
	case json.Delim('['):
		var a []any
		for d.More() {
			v, ok := walkJSON(d)
			if !ok {
				return nil, false
			}
			a = append(a, v)
		}
		_, err := d.Token()
		return a, err == nil
	}
	return tok, true
}

func FuzzClaimsJSONDifferential(f *testing.F) {
	for _, c := range strictnessCases() {
		f.Add([]byte(c.pt))
	}
	vs := loadVectors(f)
	for i := range vs {
		if pt := openVector(f, &vs[i]); pt != nil {
			f.Add(pt)
		}
	}
	f.Fuzz(func(t *testing.T, pt []byte) {
		in := bytes.Clone(pt) // the scanner's strings share memory with its input
		var got Claims
		detail := parseClaimsText(in, &got)
		want, ok := referenceClaims(pt)
		switch {
		case detail == "" && !ok:
			t.Fatalf("scanner accepts what the reference refuses: %q", pt)
		case detail == errLoneSurrogate:
			// The one deliberate difference: encoding/json (like Node) keeps going past a lone surrogate, which Go
			// can only represent as U+FFFD. The reference must have seen one.
			if ok && !strings.Contains(string(want.Plaintext()), "\uFFFD") {
				t.Fatalf("scanner reports a lone surrogate the reference did not see: %q", pt)
			}
		case detail != "" && ok:
			t.Fatalf("scanner refuses (%s) what the reference accepts: %q", detail, pt)
		case detail == "" && !reflect.DeepEqual(&got, want):
			t.Fatalf("values differ on %q\nscanner   %s\nreference %s", pt, got.Plaintext(), want.Plaintext())
		}
	})
}
