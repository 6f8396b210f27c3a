// CONTRACT STUB — the policy helper replaces this file with the real implementation, keeping these exported
// names and signatures (other packages compile against them).
package policy

import "errors"

type RouteClass string

const (
	RouteProviderModel      RouteClass = "provider_model"
	RouteOrganizationModels RouteClass = "organization_models"
	RouteBackendAPI         RouteClass = "backend_api"
	RouteSessionIngest      RouteClass = "session_ingest"
)

type Credential string

const (
	CredentialUser     Credential = "user"
	CredentialProvider Credential = "provider"
)

type Reason string

const (
	ReasonInvalidUpstreamURL Reason = "invalid_upstream_url"
	ReasonUpstreamNotAllowed Reason = "upstream_not_allowed"
)

// Targets are raw base URLs (same JSON names as the token's targets).
type Targets struct {
	BackendBaseURL       string `json:"backendBaseUrl"`
	ProviderBaseURL      string `json:"providerBaseUrl"`
	SessionIngestBaseURL string `json:"sessionIngestBaseUrl"`
}

// ParsedTargets are validated targets, ready for Classify.
type ParsedTargets struct{}

// Origins returns the three targets' origins (lower-case scheme://host[:port]).
func (t *ParsedTargets) Origins() []string { return nil }

// ParseTargets validates targets; the error names the field and why, never more than the URL itself.
func ParseTargets(t Targets) (*ParsedTargets, error) { return nil, errors.New("unimplemented") }

// Request is one upstream request to classify.
type Request struct {
	URL                string
	Method             string
	KiloSessionID      string
	BootstrapSessionID string
	HasProviderToken   bool
}

// Decision is the outcome. Origin is the request URL's origin when the URL was well-formed.
type Decision struct {
	Allowed    bool
	RouteClass RouteClass
	Credential Credential
	Reason     Reason
	Detail     string
	Origin     string
}

// Policy carries operator-configured backend deny rules.
type Policy struct{}

// DenyRule is one extra deny rule: a path pattern and optional methods.
type DenyRule struct {
	Path    string
	Methods []string
}

// New compiles deny rules; syntax errors are reported here.
func New(rules []DenyRule) (*Policy, error) { return &Policy{}, nil }

// Classify decides one request. A nil *Policy means no extra deny rules.
func (p *Policy) Classify(req Request, t *ParsedTargets) Decision { return Decision{} }

// AllowList is the cluster-wide upstream origin allow-list.
type AllowList struct{}

// ParseAllowList parses origins like "https://api.kilo.ai".
func ParseAllowList(origins []string) (*AllowList, error) { return &AllowList{}, nil }

// Allows reports whether origin (as in Decision.Origin / ParsedTargets.Origins) is allowed.
func (a *AllowList) Allows(origin string) bool { return false }

// DefaultAllowList are Kilo's production origins.
var DefaultAllowList = []string{"https://api.kilo.ai", "https://ingest.kilosessions.ai"}
