package policy

import (
	"slices"
	"strings"
)

// Targets are raw base URLs (same JSON names as the token's targets).
type Targets struct {
	BackendBaseURL       string `json:"backendBaseUrl"`
	ProviderBaseURL      string `json:"providerBaseUrl"`
	SessionIngestBaseURL string `json:"sessionIngestBaseUrl"`
}

// TargetError says which target (or allow-list entry) is unacceptable and why. It never quotes the URL: a base
// URL that is refused for carrying userinfo may hold a password.
type TargetError struct {
	// Field is the JSON name of the target ("backendBaseUrl", …) or "allowList[i]" for an allow-list entry.
	Field string
	// Detail is the machine-readable rule (a Detail* constant), Message the same for people.
	Detail  string
	Message string
}

func (e *TargetError) Error() string { return e.Field + ": " + e.Message }

// target is one parsed base URL.
type target struct {
	origin string // lower-case scheme://host[:port], default port dropped
	base   string // escaped path without trailing slashes; "" for "/" or no path
}

// contains is DESIGN §4 "within T": same origin and (empty base, path == base, or path below base + "/"),
// compared on the escaped form.
func (t *target) contains(origin, path string) bool {
	return origin == t.origin && (t.base == "" || equalOrBelow(path, t.base))
}

// ParsedTargets are validated targets with every prefix Classify needs computed once. Immutable, so one value may
// be shared by any number of goroutines (and cached with the verified claims it came from).
type ParsedTargets struct {
	backend, provider, ingest target

	providerRoutes  []string // rule 1: provider prefixes under the provider base, exact
	backendShaped   []string // rule 4: provider prefixes under the backend base (and the provider's own routes when it shares the backend's origin), compared case-insensitively
	orgPrefix       string   // rules 2 and 4: backend org prefix, ending in "/organizations/"
	ingestSession   string   // rule 3: ingest base + "/api/session/"
	ingestBootstrap string   // rule 3: ingest base + "/api/session"
	// territory is rule 4's session territory, set only when ingest and backend share an origin: the ingest
	// base's subtree when the base has a path, and ingest base + "/api/session" and below.
	territory []string
}

// Origins returns the backend, provider and ingest origins, in that order (duplicates kept).
func (t *ParsedTargets) Origins() []string {
	return []string{t.backend.origin, t.provider.origin, t.ingest.origin}
}

// ParseTargets validates targets; the error (a *TargetError) names the field and why, never the URL itself.
// Each base URL must be https (or http for localhost, 127.0.0.1, host.docker.internal) with a plain DNS or IPv4
// host, no userinfo, query or fragment, and a path that passes the same checks as a request path.
func ParseTargets(t Targets) (*ParsedTargets, error) {
	var p ParsedTargets
	var err *TargetError
	if p.backend, err = parseBase("backendBaseUrl", t.BackendBaseURL); err != nil {
		return nil, err
	}
	if p.provider, err = parseBase("providerBaseUrl", t.ProviderBaseURL); err != nil {
		return nil, err
	}
	if p.ingest, err = parseBase("sessionIngestBaseUrl", t.SessionIngestBaseURL); err != nil {
		return nil, err
	}
	p.providerRoutes = providerPrefixes(p.provider.base)
	p.backendShaped = providerPrefixes(p.backend.base)
	if p.provider.origin == p.backend.origin {
		// The provider's own routes on a shared origin belong to rule 1 only. Rule 1 compares exactly; without
		// this, a case variant ("/V2/api/openrouter" for base "/v2") would reach the same model route through the
		// backend catch-all, with the user token, on any router that matches case-insensitively.
		for _, pre := range p.providerRoutes {
			if !slices.Contains(p.backendShaped, pre) {
				p.backendShaped = append(p.backendShaped, pre)
			}
		}
	}
	if strings.HasSuffix(p.backend.base, "/api") {
		p.orgPrefix = p.backend.base + "/organizations/"
	} else {
		p.orgPrefix = p.backend.base + "/api/organizations/"
	}
	p.ingestBootstrap = p.ingest.base + "/api/session"
	p.ingestSession = p.ingestBootstrap + "/"
	if p.ingest.origin == p.backend.origin {
		if p.ingest.base != "" {
			p.territory = append(p.territory, p.ingest.base)
		}
		p.territory = append(p.territory, p.ingestBootstrap)
	}
	return &p, nil
}

// providerPrefixes is rule 1's prefix list for base path b.
func providerPrefixes(b string) []string {
	switch {
	case strings.HasSuffix(b, "/api/openrouter"), strings.HasSuffix(b, "/api/gateway"):
		return []string{b}
	case strings.HasSuffix(b, "/api"):
		return []string{b + "/openrouter", b + "/gateway"}
	default:
		return []string{b + "/api/openrouter", b + "/api/gateway"}
	}
}

// parseBase validates one base URL and splits it into origin and base path.
func parseBase(field, raw string) (target, *TargetError) {
	u, d := split(raw)
	if d == "" && u.hasQuery {
		d = DetailQuery
	}
	if d == "" && strings.HasSuffix(u.host, ".") {
		// A trailing-dot name is a different origin string for the same host; configure the usual spelling.
		d = DetailHost
	}
	base := strings.TrimRight(u.path, "/")
	if d == "" {
		d = checkPath(base)
	}
	if d != "" {
		return target{}, &TargetError{Field: field, Detail: d, Message: targetMessage(d)}
	}
	return target{origin: strings.Clone(u.origin(raw)), base: base}, nil
}

func targetMessage(d string) string {
	switch d {
	case DetailEmpty:
		return "must not be empty"
	case DetailTooLong:
		return "must be at most 8192 bytes"
	case DetailForbiddenCharacter:
		return "must not contain spaces, control characters or non-ASCII characters"
	case DetailFragment:
		return "must not have a fragment (#)"
	case DetailNotAbsolute:
		return "must be an absolute URL of the form https://host[:port][/path]"
	case DetailScheme:
		return "must use https"
	case DetailHTTPNotLocal:
		return "must use https (plain http is allowed only for localhost, 127.0.0.1 and host.docker.internal)"
	case DetailUserinfo:
		return "must not contain userinfo (an '@' before the host)"
	case DetailHost:
		return "must name a DNS host or IPv4 address (letters, digits, '-' and '.', no trailing dot)"
	case DetailPort:
		return "must have a port from 1 to 65535 without leading zeros, or none"
	case DetailQuery:
		return "must not have a query (?)"
	case DetailPath:
		return "must be an origin (scheme://host[:port]) without a path"
	case DetailEncodedSeparator:
		return "path must not contain an encoded '/' or '\\' (%2F, %5C)"
	case DetailDotSegment:
		return "path must not contain '.' or '..' segments, raw or percent-encoded"
	case DetailMalformedEscape:
		return "path has a '%' not followed by two hex digits"
	case DetailInvalidUTF8:
		return "path decodes to invalid UTF-8"
	case DetailNestedEncoding:
		return "path is percent-encoded too many times over"
	case DetailBackslash:
		return "path must not contain a backslash"
	case DetailCompatCharacter:
		return "path must not contain characters that Unicode normalisation turns into . / \\ % ? # or ;"
	case DetailEmptySegment:
		return "path must not contain empty segments (//)"
	case DetailSemicolon:
		return "path must not contain ';' or %3B"
	case DetailEncodedUnreserved:
		return "path must not percent-encode letters, digits or - . _ ~"
	case DetailEncodedControl:
		return "path must not contain percent-encoded control characters"
	case DetailPathCharacter:
		return "path contains a character not allowed in a URL path"
	}
	return "is not a valid base URL"
}
