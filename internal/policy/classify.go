package policy

import "strings"

// Classify decides one request against t, in DESIGN §4's order: the URL checks (rules 1–3, the same for every
// target layout), then the routes, first match wins. A nil *Policy means no extra deny rules; a nil t allows
// nothing. Classify never panics and allocates only when it must normalise the origin (an upper-case host or
// scheme, or an explicit default port) or decode a percent-encoded path longer than 512 bytes.
func (p *Policy) Classify(req Request, t *ParsedTargets) Decision {
	u, d := split(req.URL)
	if d != "" {
		return invalid(d)
	}
	if d := checkPath(u.path); d != "" {
		return invalid(d)
	}
	origin := u.origin(req.URL)
	path := u.path
	if path == "" {
		path = "/" // "https://host" and "https://host?q" request "/" (RFC 9110 §4.2.3)
	}
	if t == nil {
		return notAllowed(origin, DetailNotWithinTargets)
	}

	// 1. provider_model: a provider prefix under the provider base, exactly as escaped.
	if origin == t.provider.origin {
		for _, pre := range t.providerRoutes {
			if equalOrBelow(path, pre) {
				return allowed(origin, RouteProviderModel, modelCredential(req))
			}
		}
	}
	inBackend := t.backend.contains(origin, path)
	// 2. organization_models: org prefix + one segment + "/models", then the end or "/…".
	if inBackend {
		if seg, rest, ok := orgRoute(path, t.orgPrefix, false); ok && seg != "" && equalOrBelow(rest, "/models") {
			return allowed(origin, RouteOrganizationModels, modelCredential(req))
		}
	}
	// 3. session_ingest: the bound session's export/import/ingest, or the bootstrap POST.
	if origin == t.ingest.origin && t.ingestRoute(path, req) {
		return allowed(origin, RouteSessionIngest, CredentialUser)
	}
	// 4. backend_api: the backend catch-all, minus what the other routes own or nobody may reach with a user
	// token. These comparisons fold case: an upstream router that matches case-insensitively (Express does by
	// default) must not be able to serve a denied route under another spelling.
	if inBackend {
		for _, pre := range t.backendShaped {
			if equalOrBelowFold(path, pre) {
				return notAllowed(origin, DetailProviderShaped)
			}
		}
		for _, pre := range t.territory {
			if equalOrBelowFold(path, pre) {
				return notAllowed(origin, DetailSessionTerritory)
			}
		}
		if seg, rest, ok := orgRoute(path, t.orgPrefix, true); ok && seg != "" && equalOrBelowFold(rest, "/user-tokens") {
			return notAllowed(origin, DetailCredentialMinting)
		}
		if p.denied(path, req.Method) {
			return notAllowed(origin, DetailDenyRule)
		}
		return allowed(origin, RouteBackendAPI, CredentialUser)
	}
	// 5. Anything else.
	if t.provider.contains(origin, path) || t.ingest.contains(origin, path) {
		return notAllowed(origin, DetailNoMatchingRoute)
	}
	return notAllowed(origin, DetailNotWithinTargets)
}

// modelCredential: provider_model and organization_models use the provider token when there is one.
func modelCredential(req Request) Credential {
	if req.HasProviderToken {
		return CredentialProvider
	}
	return CredentialUser
}

// orgRoute splits path after the org prefix into the organisation segment and what follows it ("" or "/…").
func orgRoute(path, prefix string, fold bool) (seg, rest string, ok bool) {
	if fold {
		ok = hasPrefixFold(path, prefix)
	} else {
		ok = strings.HasPrefix(path, prefix)
	}
	if !ok {
		return "", "", false
	}
	after := path[len(prefix):]
	n := strings.IndexByte(after, '/')
	if n < 0 {
		return after, "", true
	}
	return after[:n], after[n:], true
}

// ingestRoute is rule 3 on a path already known to be on the ingest origin.
func (t *ParsedTargets) ingestRoute(path string, req Request) bool {
	if path == t.ingestBootstrap {
		return req.Method == "POST" && req.BootstrapSessionID != "" && req.BootstrapSessionID == req.KiloSessionID
	}
	if req.KiloSessionID == "" || !strings.HasPrefix(path, t.ingestSession) {
		return false
	}
	rest, ok := cutEncodedComponent(path[len(t.ingestSession):], req.KiloSessionID)
	return ok && (rest == "/export" || rest == "/import" || rest == "/ingest")
}

// cutEncodedComponent checks that s starts with encodeURIComponent(id) — ECMAScript's encoding: everything
// except A–Z a–z 0–9 - _ . ! ~ * ' ( ) as %XX of its UTF-8 bytes, upper-case hex — and returns the rest of s.
// Only that exact spelling names the session; comparing without building the encoded string keeps this
// allocation-free.
func cutEncodedComponent(s, id string) (string, bool) {
	const hex = "0123456789ABCDEF"
	j := 0
	for i := 0; i < len(id); i++ {
		c := id[i]
		if isAlpha(c) || isDigit(c) || strings.IndexByte("-_.!~*'()", c) >= 0 {
			if j >= len(s) || s[j] != c {
				return "", false
			}
			j++
			continue
		}
		if j+2 >= len(s) || s[j] != '%' || s[j+1] != hex[c>>4] || s[j+2] != hex[c&15] {
			return "", false
		}
		j += 3
	}
	return s[j:], true
}
