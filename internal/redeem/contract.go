// CONTRACT STUB — the redeem helper replaces this file with the real implementation, keeping these exported
// names and signatures (the egress compiles against them).
package redeem

import (
	"context"
	"errors"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// Reason is a stable refusal reason: the codec's and the policy's, plus the ones below.
type Reason string

const (
	ReasonContainerMismatch Reason = "container_mismatch"
	ReasonRevoked           Reason = "capability_revoked"
	ReasonUnauthenticated   Reason = "unauthenticated"
)

// Request is one redemption, as established by a front door.
type Request struct {
	Capability         string // the kka1 token; never logged
	CallerPodUID       string // the calling pod's UID, as the front door established it
	URL                string
	Method             string
	BootstrapSessionID string
}

// Result is an allowed redemption.
type Result struct {
	RouteClass    policy.RouteClass
	Authorization capability.Secret // "Bearer <token>"
}

// Refusal is the error Decide returns for every refused redemption.
type Refusal struct {
	Reason Reason
	Detail string // never token material, never the URL's query
}

func (r *Refusal) Error() string { return string(r.Reason) }

// Decider is the one redeem decision shared by the redeem API and the egress interceptor.
type Decider struct{}

// Decide redeems req or returns a *Refusal.
func (d *Decider) Decide(ctx context.Context, req Request) (Result, error) {
	return Result{}, errors.New("unimplemented")
}
