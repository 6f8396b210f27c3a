package capability

import (
	"encoding/base64"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.UnixMilli(1780833600000)

func TestRoundTrip(t *testing.T) {
	r := mustRing(t, keyA)
	for name, s := range interopSubjects() {
		t.Run(name, func(t *testing.T) {
			tok, issued, err := Issue(r, s, t0, 0)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if !strings.HasPrefix(tok, Prefix) || len(tok) > MaxTokenChars {
				t.Fatalf("token has the wrong shape: %d characters", len(tok))
			}
			got, err := Decode(r, tok, t0.Add(time.Hour))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want := &Claims{Version: 1, Purpose: "kilo_api_session", Subject: s, IssuedAt: t0.UnixMilli(), ExpiresAt: t0.Add(4 * time.Hour).UnixMilli()}
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(issued, want) {
				t.Fatalf("claims differ\ndecoded %s\n issued %s\n   want %s", got.Plaintext(), issued.Plaintext(), want.Plaintext())
			}
		})
	}
}

func TestLifetimeAndExpiry(t *testing.T) {
	r := mustRing(t, keyA)
	tok, c, err := Issue(r, testSubject(), t0, 10*time.Minute)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if got := c.ExpiresTime().Sub(c.IssuedTime()); got != 10*time.Minute {
		t.Fatalf("lifetime is %v, want 10m", got)
	}
	cases := []struct {
		name string
		now  time.Time
		want Reason // "" = valid
	}{
		{"at issue", t0, ""},
		{"a millisecond before expiry", t0.Add(10*time.Minute - time.Millisecond), ""},
		{"exactly at expiry", t0.Add(10 * time.Minute), ReasonExpired},
		{"long after expiry", t0.Add(24 * time.Hour), ReasonExpired},
		{"decoder clock 60s behind", t0.Add(-60 * time.Second), ""},
		{"decoder clock 60.001s behind", t0.Add(-60*time.Second - time.Millisecond), ReasonInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(r, tok, tc.now)
			if tc.want == "" && err != nil {
				t.Fatalf("Decode: %v; want valid", err)
			}
			if tc.want != "" && ReasonOf(err) != tc.want {
				t.Fatalf("Decode: %v; want %s", err, tc.want)
			}
		})
	}
	if !errors.Is(func() error { _, err := Decode(r, tok, t0.Add(time.Hour)); return err }(), &Error{Reason: ReasonExpired}) {
		t.Fatal("errors.Is does not match an expired token against &Error{Reason: ReasonExpired}")
	}
}

func TestIssueRefusesWhatDecodeWouldRefuse(t *testing.T) {
	r := mustRing(t, keyA)
	mod := func(f func(*Subject)) Subject { s := testSubject(); f(&s); return s }
	cases := []struct {
		name     string
		s        Subject
		lifetime time.Duration
		now      time.Time
		want     Reason
	}{
		{"empty user id", mod(func(s *Subject) { s.UserID = "" }), 0, t0, ReasonInvalid},
		{"empty cloud agent session id", mod(func(s *Subject) { s.CloudAgentSessionID = "" }), 0, t0, ReasonInvalid},
		{"empty kilo session id", mod(func(s *Subject) { s.KiloSessionID = "" }), 0, t0, ReasonInvalid},
		{"empty outbound container id", mod(func(s *Subject) { s.OutboundContainerID = "" }), 0, t0, ReasonInvalid},
		{"empty user token", mod(func(s *Subject) { s.UserToken = "" }), 0, t0, ReasonInvalid},
		{"invalid UTF-8", mod(func(s *Subject) { s.UserID = "a\xffb" }), 0, t0, ReasonInvalid},
		{"invalid UTF-8 in the provider token", mod(func(s *Subject) { s.ProviderToken = "\xc3" }), 0, t0, ReasonInvalid},
		{"empty target", mod(func(s *Subject) { s.Targets.ProviderBaseURL = "" }), 0, t0, ReasonInvalid},
		{"target that is not a URL", mod(func(s *Subject) { s.Targets.SessionIngestBaseURL = "ingest.kilosessions.ai" }), 0, t0, ReasonInvalid},
		{"claims too large", mod(func(s *Subject) { s.UserToken = Secret(strings.Repeat("x", 50000)) }), 0, t0, ReasonInvalid},
		{"lifetime under a minute", testSubject(), 59 * time.Second, t0, ReasonConfiguration},
		{"lifetime over 4h", testSubject(), 4*time.Hour + time.Millisecond, t0, ReasonConfiguration},
		{"negative lifetime", testSubject(), -time.Hour, t0, ReasonConfiguration},
		{"clock before 1970", testSubject(), 0, time.UnixMilli(-1), ReasonConfiguration},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, c, err := Issue(r, tc.s, tc.now, tc.lifetime)
			if err == nil {
				t.Fatalf("Issue accepted it (token of %d characters)", len(tok))
			}
			if tok != "" || c != nil {
				t.Fatal("Issue returned a token or claims with an error")
			}
			if ReasonOf(err) != tc.want {
				t.Fatalf("Issue: %v; want %s", err, tc.want)
			}
		})
	}
	if _, _, err := Issue(nil, testSubject(), t0, 0); ReasonOf(err) != ReasonConfiguration {
		t.Fatalf("Issue with no ring: %v; want %s", err, ReasonConfiguration)
	}
	if _, err := Decode(nil, "kka1.x", t0); ReasonOf(err) != ReasonConfiguration {
		t.Fatalf("Decode with no ring: %v; want %s", err, ReasonConfiguration)
	}
	// The largest subject that fits still issues and decodes: the size check is not off by a quantum.
	big := mod(func(s *Subject) { s.UserToken = Secret(strings.Repeat("x", 48000)) })
	if tok, _, err := Issue(r, big, t0, 0); err != nil {
		t.Fatalf("Issue of a 48,000-character token: %v", err)
	} else if _, err := Decode(r, tok, t0); err != nil {
		t.Fatalf("Decode of a %d-character token: %v", len(tok), err)
	}
}

func TestKeyRotation(t *testing.T) {
	tok, _, err := Issue(mustRing(t, keyB), testSubject(), t0, 0)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	for _, tc := range []struct {
		name string
		ring *KeyRing
		ok   bool
	}{
		{"new key first, old key second", mustRing(t, keyB, keyA), true},
		{"old key first, new key second", mustRing(t, keyA, keyB), true},
		{"old key alone", mustRing(t, keyA), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.ring, tok, t0)
			if tc.ok && err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !tc.ok && ReasonOf(err) != ReasonInvalid {
				t.Fatalf("Decode: %v; want %s", err, ReasonInvalid)
			}
		})
	}
	// The first key seals: a ring [A, B] issues tokens that [A] alone opens.
	tok, _, err = Issue(mustRing(t, keyA, keyB), testSubject(), t0, 0)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if _, err := Decode(mustRing(t, keyA), tok, t0); err != nil {
		t.Fatalf("the ring's first key did not seal: %v", err)
	}
}

func TestNoncesAreUnique(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	r := mustRing(t, keyA)
	s := testSubject()
	seen := make(map[[ivSize]byte]struct{}, n)
	for i := range n {
		tok, _, err := Issue(r, s, t0, 0)
		if err != nil {
			t.Fatalf("Issue: %v", err)
		}
		var iv [ivSize]byte
		if !b64Decode(iv[:], tok[len(Prefix):len(Prefix)+24]) {
			t.Fatalf("token %d has a malformed IV", i)
		}
		if _, dup := seen[iv]; dup {
			t.Fatalf("IV repeated after %d tokens: GCM nonce reuse leaks the keystream and the authentication key", i)
		}
		seen[iv] = struct{}{}
	}
}

func TestDecodeOrder(t *testing.T) {
	r := mustRing(t, keyA)
	expiredButTooLong := sealPlaintext(r, []byte(`{"version":1,"purpose":"kilo_api_session","userId":"u","cloudAgentSessionId":"c","kiloSessionId":"k","outboundContainerId":"o","userToken":"t","targets":{"backendBaseUrl":"https://a","providerBaseUrl":"https://b","sessionIngestBaseUrl":"https://c"},"issuedAt":0,"expiresAt":14400001}`))
	if _, err := Decode(r, expiredButTooLong, t0); ReasonOf(err) != ReasonInvalid {
		t.Fatalf("a schema violation must win over expiry: got %v", err)
	}
	valid, _, _ := Issue(r, testSubject(), t0, 0)
	if _, err := Decode(r, valid+strings.Repeat("A", MaxTokenChars), t0); err == nil || !strings.Contains(err.Error(), "longer") {
		t.Fatalf("length must be checked first: got %v", err)
	}
	if _, err := Decode(r, " "+valid, t0); err == nil || !strings.Contains(err.Error(), "kka1.") {
		t.Fatalf("a token with leading space fails on the prefix: got %v", err)
	}
}

func TestCanonicalBase64(t *testing.T) {
	cases := map[string]bool{
		"AAAAAAAAAAAAAAAAAAAAAA==": true, "AAAAAAAAAAAAAAAAAAAAAB==": false, "AAAAAAAAAAAAAAAAAAAAAA=": false,
		"AAAAAAAAAAAAAAAAAAAAAA": false, "AAAAAAAAAAAAAAAAAAAA\nAA==": false, "AAAAAAAAAAAAAAAAAAAAA-==": false,
		"AAAAAAAAAAAAAAAAAAAAAA=A": false, "====": false, "AA=A": false, "": false, "QUJD": true, "QUI=": true,
		"QUJ=": false, "QQ==": true, "QR==": false, "QUJDREVGR0g=": true, "QUJD/+8=": true, "QUJD_-8=": false,
	}
	for s, want := range cases {
		n := b64DecodedLen(s)
		got := n >= 0 && b64Decode(make([]byte, n), s)
		if got != want {
			t.Errorf("b64Decode(%q) = %v, want %v", s, got, want)
		}
		if got {
			dst := make([]byte, n)
			b64Decode(dst, s)
			if re := base64.StdEncoding.EncodeToString(dst); re != s {
				t.Errorf("b64Decode(%q) accepted a non-canonical form of %q", s, re)
			}
		}
	}
}

func TestParseKeyRing(t *testing.T) {
	a, b := base64.StdEncoding.EncodeToString(keyA), base64.StdEncoding.EncodeToString(keyB)
	short := base64.StdEncoding.EncodeToString(keyA[:16])
	t.Run("comments, blank lines, CRLF and surrounding space", func(t *testing.T) {
		r, err := ParseKeyRing([]byte("# rotated 2026-12-01\r\n\r\n  " + b + "  \r\n\t" + a + "\n# old\n"))
		if err != nil {
			t.Fatalf("ParseKeyRing: %v", err)
		}
		if r.Len() != 2 || r.Fingerprint() != mustRing(t, keyB).Fingerprint() {
			t.Fatalf("ring has %d keys sealing with %s; want 2 sealing with key B", r.Len(), r.Fingerprint())
		}
	})
	for _, tc := range []struct {
		name, data, wantDetail string
	}{
		{"empty file", "", "no keys"},
		{"only comments", "# a\n\n# b\n", "no keys"},
		{"short key on line 3", a + "\n# c\n" + short + "\n", "line 3: key is 16 bytes, want 32"},
		{"url-safe alphabet on line 1", strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\xfb\xff", 16)))), "line 1: key is not standard padded base64"},
		{"unpadded on line 2", a + "\n" + strings.TrimRight(a, "="), "line 2: key is not standard padded base64"},
		{"garbage on line 2", a + "\nnot a key at all\n", "line 2: key is not standard padded base64"},
		{"64-byte key", base64.StdEncoding.EncodeToString(append(keyA, keyB...)), "line 1: key is 64 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKeyRing([]byte(tc.data))
			var e *Error
			if !errors.As(err, &e) || e.Reason != ReasonConfiguration {
				t.Fatalf("ParseKeyRing: %v; want a %s", err, ReasonConfiguration)
			}
			if !strings.Contains(e.Detail, tc.wantDetail) {
				t.Fatalf("detail %q does not say %q", e.Detail, tc.wantDetail)
			}
			for line := range strings.SplitSeq(tc.data, "\n") {
				if line = strings.TrimSpace(line); len(line) >= 8 && strings.Contains(err.Error(), line) {
					t.Fatalf("error %q echoes the key file", err)
				}
			}
		})
	}
	if _, err := ParseKeyRing(make([]byte, maxKeyRingBytes+1)); ReasonOf(err) != ReasonConfiguration {
		t.Fatalf("oversized ring: %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	fa, fb := mustRing(t, keyA).Fingerprint(), mustRing(t, keyA, keyB).Fingerprint()
	if len(fa) != 16 || strings.Trim(fa, "0123456789abcdef") != "" {
		t.Fatalf("fingerprint %q is not 16 hex digits", fa)
	}
	if fa != fb {
		t.Fatal("the fingerprint must depend only on the sealing (first) key")
	}
	if fa == mustRing(t, keyB).Fingerprint() {
		t.Fatal("different sealing keys have the same fingerprint")
	}
	if strings.Contains(fa, base64.StdEncoding.EncodeToString(keyA)[:8]) || strings.Contains(fa, "a1a1a1a1") {
		t.Fatal("the fingerprint shows key material")
	}
	if _, err := NewKeyRing(keyA, keyA[:31]); ReasonOf(err) != ReasonConfiguration || !strings.Contains(err.Error(), "key 2 is 31 bytes") {
		t.Fatalf("NewKeyRing with a 31-byte key: %v", err)
	}
}
