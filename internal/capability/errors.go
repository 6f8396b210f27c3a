package capability

import "errors"

// Reason is a stable failure reason string (docs/DESIGN.md §3). It is part of the wire and metrics contract: never
// rename one.
type Reason string

const (
	// ReasonInvalid: the token is malformed, was sealed with no key in the ring, or its claims break the schema
	// or are issued too far in the future.
	ReasonInvalid Reason = "invalid_capability"
	// ReasonExpired: the token was valid but its expiresAt has passed (a token is expired at exactly expiresAt).
	ReasonExpired Reason = "expired_capability"
	// ReasonConfiguration: the key ring or the issuing parameters are unusable; no token can be checked.
	ReasonConfiguration Reason = "capability_configuration_error"
)

// Error is the only error type Decode, Issue, ParseKeyRing and NewKeyRing return; errors.As(err, *Error) gives
// the reason. Detail is a fixed description chosen by this package (plus line numbers or byte counts): it never
// contains token, claim or key material, so an Error may be logged, returned to a caller or put in an event.
type Error struct {
	Reason Reason
	Detail string // never token or key material
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Detail
}

// Is reports whether target is an *Error with the same Reason, so errors.Is(err, &Error{Reason: ReasonExpired})
// works regardless of the detail.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason && t.Detail == ""
}

// ReasonOf returns the Reason of err, or ReasonInvalid when err is not an *Error (fail closed: an unknown error is
// never taken as success or as a configuration problem).
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonInvalid
}

func invalid(detail string) *Error       { return &Error{Reason: ReasonInvalid, Detail: detail} }
func configuration(detail string) *Error { return &Error{Reason: ReasonConfiguration, Detail: detail} }
