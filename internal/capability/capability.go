// Package capability implements the kka1 capability token (docs/DESIGN.md §3): an AES-256-GCM sealed, short-lived,
// pod-bound grant that stands in for a user's Kilo token inside a session pod.
//
// The wire format is shared with an independent Node implementation (testdata/interop/kka1.mjs) and must stay
// byte-compatible with it:
//
//	kka1.<base64 IV (16 bytes)>:<base64 GCM tag (16 bytes)>:<base64 ciphertext (≥ 1 byte)>
//
// where each part is standard padded base64 in canonical form, the nonce is the 16-byte IV, there is no associated
// data, and the plaintext is compact JSON with a fixed field order (see Claims). Decoding is strict and fails
// closed: every failure is an *Error whose Reason is one of the stable strings below and whose text never holds
// token or key material.
package capability

import "time"

const (
	// Prefix starts every kka1 token.
	Prefix = "kka1."
	// MaxTokenChars bounds a token's length, checked first on decode and on issue.
	MaxTokenChars = 65536
	// MaxLifetime is the longest validity a token may carry (expiresAt − issuedAt) and Issue's default.
	MaxLifetime = 4 * time.Hour
	// MinLifetime is the shortest lifetime Issue accepts: anything shorter expires before it can be delivered.
	MinLifetime = time.Minute
	// ClockSkew is how far in the future issuedAt may lie before the token is refused (issuers' clocks drift).
	ClockSkew = 60 * time.Second
	// Version is the only claims version this package reads or writes.
	Version = 1
	// Purpose is the only claims purpose this package reads or writes.
	Purpose = "kilo_api_session"
	// KeySize is the length of every ring key (AES-256).
	KeySize = 32

	ivSize  = 16 // the original service's nonce size, not GCM's usual 12
	tagSize = 16

	maxSafeInteger = 1<<53 - 1 // JavaScript's Number.MAX_SAFE_INTEGER: the claims' integers must survive Node
	maxLifetimeMs  = int64(MaxLifetime / time.Millisecond)
	clockSkewMs    = int64(ClockSkew / time.Millisecond)
)

// Targets are the capability's upstream base URLs.
type Targets struct {
	BackendBaseURL       string `json:"backendBaseUrl"`
	ProviderBaseURL      string `json:"providerBaseUrl"`
	SessionIngestBaseURL string `json:"sessionIngestBaseUrl"`
}

// Subject is what a capability is issued for. In Kubernetes OutboundContainerID is the session pod's UID and
// CloudAgentSessionID the KiloSession's UID.
type Subject struct {
	UserID              string  `json:"userId"`
	CloudAgentSessionID string  `json:"cloudAgentSessionId"`
	KiloSessionID       string  `json:"kiloSessionId"`
	OutboundContainerID string  `json:"outboundContainerId"`
	UserToken           Secret  `json:"userToken"`
	ProviderToken       Secret  `json:"providerToken,omitempty"` // "" = absent
	Targets             Targets `json:"targets"`
}

// Claims are a decoded capability's verified contents, or what Issue sealed. Their wire form is the compact JSON
// object {version, purpose, userId, cloudAgentSessionId, kiloSessionId, outboundContainerId, userToken,
// [providerToken], targets{backendBaseUrl, providerBaseUrl, sessionIngestBaseUrl}, issuedAt, expiresAt} in exactly
// that order.
type Claims struct {
	Version int
	Purpose string
	Subject
	IssuedAt  int64 // epoch milliseconds
	ExpiresAt int64 // epoch milliseconds
}

// IssuedTime returns IssuedAt as a time.Time.
func (c *Claims) IssuedTime() time.Time { return time.UnixMilli(c.IssuedAt) }

// ExpiresTime returns ExpiresAt as a time.Time.
func (c *Claims) ExpiresTime() time.Time { return time.UnixMilli(c.ExpiresAt) }
