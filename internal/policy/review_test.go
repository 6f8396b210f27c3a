package policy

import (
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Regression tests from the security review: each row is an input that was mis-classified before its fix.

// TestProviderRoutesOnTheBackendOriginAreNotBackendAPI: when the provider target shares the backend's origin under
// a base path that is not provider-shaped relative to the backend ("/v2" gives "/v2/api/openrouter"), a case
// variant of a provider route missed rule 1's exact comparison and fell into the backend catch-all, reaching the
// model route (Express matches case-insensitively) with the user token instead of the provider token.
func TestProviderRoutesOnTheBackendOriginAreNotBackendAPI(t *testing.T) {
	pt := mustParseTargets(t, Targets{"https://api.kilo.ai", "https://api.kilo.ai/v2", "https://ingest.kilosessions.ai"})
	for _, c := range []struct {
		path string
		want expect
	}{
		{"/v2/api/openrouter/v1/chat/completions", ok(RouteProviderModel)},
		{"/V2/api/openrouter/v1/chat/completions", denied(DetailProviderShaped)},
		{"/v2/API/OpenRouter/v1/chat/completions", denied(DetailProviderShaped)},
		{"/v2/api/gateway/", ok(RouteProviderModel)},
		{"/v2/api/Gateway", denied(DetailProviderShaped)},
		{"/v2/api/other", ok(RouteBackendAPI)},
		{"/api/openrouter/x", denied(DetailProviderShaped)}, // provider-shaped relative to the backend base, as before
	} {
		d := (*Policy)(nil).Classify(Request{URL: "https://api.kilo.ai" + c.path, HasProviderToken: true}, pt)
		got := expect{allowed: d.Allowed, route: d.RouteClass, reason: d.Reason, detail: d.Detail}
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.path, got, c.want)
		}
	}
}

// TestCompatibilityCharactersAreRefused: fullwidth and other compatibility forms of '.', '/', '\', '%', '?', '#'
// and ';' passed every check as ordinary non-ASCII text, and an upstream that NFKC-normalises its path (as several
// Python, Java and .NET stacks, WAFs and gateways do) would turn "/api/%EF%BC%8E%EF%BC%8E/x" into "/api/../x".
func TestCompatibilityCharactersAreRefused(t *testing.T) {
	pt := mustParseTargets(t, Targets{"https://api.kilo.ai", "https://api.kilo.ai", "https://ingest.kilosessions.ai"})
	for _, c := range []struct {
		path string
		want expect
	}{
		{"/api/%EF%BC%8E%EF%BC%8E/organizations/o/user-tokens", refused(DetailCompatCharacter)}, // U+FF0E ．
		{"/api/x%EF%BC%8F..%EF%BC%8Fy", refused(DetailCompatCharacter)},                         // U+FF0F ／
		{"/api/%E2%80%A5/x", refused(DetailCompatCharacter)},                                    // U+2025 ‥ → ".."
		{"/api/%EF%BC%BCx", refused(DetailCompatCharacter)},                                     // U+FF3C ＼
		{"/api/%EF%BC%85%EF%BC%92%EF%BD%85", refused(DetailCompatCharacter)},                    // ％ then fullwidth "2e"
		{"/api/%25EF%25BC%258E", refused(DetailCompatCharacter)},                                // the same, encoded twice
		{"/api/%EF%BC%9Fq", refused(DetailCompatCharacter)},                                     // U+FF1F ？
		{"/api/%F0%9F%84%80", refused(DetailCompatCharacter)},                                   // U+1F100 🄀 → "0."
		{"/api/caf%C3%A9", ok(RouteBackendAPI)},                                                 // ordinary non-ASCII stays allowed
		{"/api/%E4%B8%AD%E6%96%87", ok(RouteBackendAPI)},
	} {
		d := (*Policy)(nil).Classify(Request{URL: "https://api.kilo.ai" + c.path}, pt)
		got := expect{allowed: d.Allowed, route: d.RouteClass, reason: d.Reason, detail: d.Detail}
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.path, got, c.want)
		}
	}
}

// TestCompatSpecialsMatchNFKC re-derives compatSpecials from Unicode's normalisation data.
func TestCompatSpecialsMatchNFKC(t *testing.T) {
	var want []rune
	for r := rune(utf8.RuneSelf); r <= unicode.MaxRune; r++ {
		if utf8.ValidRune(r) && strings.ContainsAny(norm.NFKC.String(string(r)), "./\\%?#;") {
			want = append(want, r)
		}
	}
	if !slices.Equal(compatSpecials[:], want) {
		t.Fatalf("compatSpecials is out of date with Unicode %s: want %U", norm.Version, want)
	}
}
