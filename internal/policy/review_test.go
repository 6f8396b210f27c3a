package policy

import "testing"

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
