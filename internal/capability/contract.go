// CONTRACT STUB — the capability helper replaces this file with the real implementation, keeping these exported
// names and signatures (other packages compile against them).
package capability

import (
	"errors"
	"time"
)

// Reason is a stable failure reason string (DESIGN.md §3).
type Reason string

const (
	ReasonInvalid       Reason = "invalid_capability"
	ReasonExpired       Reason = "expired_capability"
	ReasonConfiguration Reason = "capability_configuration_error"
)

// Error is the only error type Decode, Issue and ParseKeyRing return; errors.As(err, *Error) gives the reason.
type Error struct {
	Reason Reason
	Detail string // never token or key material
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Detail }

// ReasonOf returns the Reason of err, or ReasonInvalid when err is not an *Error.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInvalid
}

// Secret holds a raw token; its String/Format/GoString/LogValue/MarshalJSON redact it. string(s) reveals it.
type Secret string

// Targets are the capability's upstream base URLs.
type Targets struct {
	BackendBaseURL       string `json:"backendBaseUrl"`
	ProviderBaseURL      string `json:"providerBaseUrl"`
	SessionIngestBaseURL string `json:"sessionIngestBaseUrl"`
}

// Subject is what a capability is issued for.
type Subject struct {
	UserID              string
	CloudAgentSessionID string
	KiloSessionID       string
	OutboundContainerID string
	UserToken           Secret
	ProviderToken       Secret // "" = absent
	Targets             Targets
}

// Claims are a decoded capability's verified contents.
type Claims struct {
	Version   int
	Purpose   string
	Subject
	IssuedAt  int64 // epoch milliseconds
	ExpiresAt int64 // epoch milliseconds
}

// KeyRing: the first key seals, every key is tried to open.
type KeyRing struct{}

// ParseKeyRing reads one base64 32-byte key per line (blank lines and # comments ignored).
func ParseKeyRing(data []byte) (*KeyRing, error) { return nil, errors.New("unimplemented") }

// NewKeyRing builds a ring from raw 32-byte keys.
func NewKeyRing(keys ...[]byte) (*KeyRing, error) { return nil, errors.New("unimplemented") }

// Fingerprint identifies the sealing key without revealing it (non-secret, stable, short hex).
func (r *KeyRing) Fingerprint() string { return "" }

// Issue seals a token for s, valid from now for lifetime (1m..4h; 0 means 4h).
func Issue(r *KeyRing, s Subject, now time.Time, lifetime time.Duration) (string, *Claims, error) {
	return "", nil, errors.New("unimplemented")
}

// Decode opens and strictly validates token at time now.
func Decode(r *KeyRing, token string, now time.Time) (*Claims, error) {
	return nil, errors.New("unimplemented")
}
