package policy

// RouteClass names the kind of upstream route a request was allowed for.
type RouteClass string

const (
	// RouteProviderModel is model inference through the provider's openrouter/gateway routes.
	RouteProviderModel RouteClass = "provider_model"
	// RouteOrganizationModels is an organisation's model list on the backend.
	RouteOrganizationModels RouteClass = "organization_models"
	// RouteBackendAPI is the backend catch-all, minus the denied routes.
	RouteBackendAPI RouteClass = "backend_api"
	// RouteSessionIngest is the bound session's transcript export/import/ingest, or the bootstrap call.
	RouteSessionIngest RouteClass = "session_ingest"
)

// Credential says which of the capability's tokens the request is sent with.
type Credential string

const (
	CredentialUser     Credential = "user"
	CredentialProvider Credential = "provider"
)

// Reason is a stable refusal reason, shared with the codec and redeem reasons (DESIGN §3).
type Reason string

const (
	// ReasonInvalidUpstreamURL: the URL is malformed or uses a trick the policy refuses outright (DESIGN §4
	// rules 1–3). It is the same whatever the targets are.
	ReasonInvalidUpstreamURL Reason = "invalid_upstream_url"
	// ReasonUpstreamNotAllowed: the URL is well-formed but no route of these targets allows it.
	ReasonUpstreamNotAllowed Reason = "upstream_not_allowed"
)

// Details of invalid_upstream_url refusals. Stable strings: metrics and clients may match on them.
const (
	DetailEmpty              = "empty"               // the URL is the empty string
	DetailTooLong            = "too_long"            // over MaxURLLength bytes
	DetailForbiddenCharacter = "forbidden_character" // a control character, space or non-ASCII byte anywhere
	DetailFragment           = "fragment"            // a '#' anywhere
	DetailNotAbsolute        = "not_absolute"        // not scheme://authority… (relative, scheme-relative or opaque)
	DetailScheme             = "unsupported_scheme"  // neither https nor http
	DetailHTTPNotLocal       = "http_not_local"      // http to a host other than the local development hosts
	DetailUserinfo           = "userinfo"            // an '@' in the authority, even with empty userinfo
	DetailHost               = "invalid_host"        // empty, bracketed, percent-escaped or non-DNS host
	DetailPort               = "invalid_port"        // empty, leading zero, non-digit, 0 or over 65535
	DetailQuery              = "query"               // targets and allow-list origins only: a '?'
	DetailEncodedSeparator   = "encoded_separator"   // %2f or %5c at some decoding depth
	DetailDotSegment         = "dot_segment"         // a "." or ".." segment, raw or at some decoding depth
	DetailMalformedEscape    = "malformed_escape"    // '%' not followed by two hex digits, at some depth
	DetailInvalidUTF8        = "invalid_utf8"        // decodes to invalid UTF-8 (overlong forms such as %c0%ae)
	DetailNestedEncoding     = "nested_encoding"     // still percent-encoded after the guard's four decodings
	DetailBackslash          = "backslash"           // a '\' once decoded
	DetailCompatCharacter    = "compat_character"    // decodes to a character NFKC turns into . / \ % ? # or ;
	DetailEmptySegment       = "empty_segment"       // "//" in the path
	DetailSemicolon          = "semicolon"           // ';' or %3B in the path (matrix parameters)
	DetailEncodedUnreserved  = "encoded_unreserved"  // a percent-encoded A–Z a–z 0–9 - . _ ~ in the path
	DetailEncodedControl     = "encoded_control"     // %00–%1F or %7F in the path
	DetailPathCharacter      = "path_character"      // a byte RFC 3986 does not allow in a path, e.g. '"' '{' '|'
)

// Details of upstream_not_allowed refusals.
const (
	DetailNotWithinTargets  = "not_within_targets" // no target's origin and base path contain the URL
	DetailNoMatchingRoute   = "no_matching_route"  // within a target, but no route of it allows this path/method
	DetailProviderShaped    = "provider_shaped"    // a provider route addressed to the backend catch-all
	DetailSessionTerritory  = "session_territory"  // session-ingest paths on an origin shared with the backend
	DetailCredentialMinting = "credential_minting" // the built-in deny: organisation user-token routes
	DetailDenyRule          = "deny_rule"          // an operator- or session-configured backend deny rule
)

// MaxURLLength bounds the request URL (8 KiB), checked before anything else.
const MaxURLLength = 8 << 10

// Request is one upstream request to classify.
type Request struct {
	// URL is the absolute request URL exactly as it will be forwarded.
	URL string
	// Method is the HTTP method; "" means GET. Compared exactly ("POST") for the bootstrap call and
	// case-insensitively for deny rules.
	Method string
	// KiloSessionID is the session the capability is bound to.
	KiloSessionID string
	// BootstrapSessionID, when set and equal to KiloSessionID, allows the session-creating POST.
	BootstrapSessionID string
	// HasProviderToken says whether the capability carries a provider token.
	HasProviderToken bool
}

// Decision is the outcome of Classify.
type Decision struct {
	Allowed    bool
	RouteClass RouteClass // when Allowed
	Credential Credential // when Allowed
	Reason     Reason     // when refused
	Detail     string     // when refused: which rule fired (Detail* constants); never the URL or its query
	// Origin is the request's origin (lower-case scheme://host[:port], default port dropped) whenever the URL is
	// well-formed, that is, whenever Reason is not invalid_upstream_url. The redeem layer checks it against the
	// cluster AllowList.
	Origin string
}

func invalid(detail string) Decision {
	return Decision{Reason: ReasonInvalidUpstreamURL, Detail: detail}
}

func notAllowed(origin, detail string) Decision {
	return Decision{Reason: ReasonUpstreamNotAllowed, Detail: detail, Origin: origin}
}

func allowed(origin string, rc RouteClass, cred Credential) Decision {
	return Decision{Allowed: true, RouteClass: rc, Credential: cred, Origin: origin}
}
