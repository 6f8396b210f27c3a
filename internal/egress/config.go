// Package egress is the egress interceptor: the HTTP forward proxy session pods use (their HTTPS_PROXY points at
// it). It identifies the calling pod by the connection's source address, terminates TLS for CONNECT tunnels to
// session target hosts with a leaf certificate signed by the interceptor CA, redeems the kka1 capability a request
// carries through the shared redeem decision, swaps in the real Authorization and streams the upstream response
// back unbuffered. docs/DESIGN.md §7.
package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"

	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// Redeemer is the redeem decision (internal/redeem.(*Decider)); an interface so the proxy can be tested alone.
type Redeemer interface {
	Decide(ctx context.Context, req redeem.Request) (redeem.Result, error)
}

// Caller is the pod a connection comes from.
type Caller struct {
	Namespace string
	Name      string
	UID       string
}

// CallerResolver maps a connection's source address to the pod whose status.podIP(s) it is. ok is false when no
// pod, or more than one pod, claims the address: an ambiguous address identifies nobody.
type CallerResolver interface {
	Resolve(ctx context.Context, addr netip.Addr) (c Caller, ok bool)
}

// TargetHosts reports whether host:port (lower-case host, explicit port, IPv6 in brackets) is one of the targets
// of a live session. Only those are intercepted; other CONNECTs are blind tunnels (or refused).
type TargetHosts interface {
	IsTarget(hostport string) bool
}

// LeafIssuer signs interception leaves; *pki.CA is one.
type LeafIssuer interface {
	IssueLeaf(hosts []string, validity time.Duration, now time.Time) (*tls.Certificate, error)
}

var _ LeafIssuer = (*pki.CA)(nil)

// CASource returns the CA that signs interception leaves now (nil when none is loaded yet). It may change
// (rotation); leaves signed by an older CA are re-issued on their next use.
type CASource interface {
	CA() LeafIssuer
}

// BlindPolicy says what happens to traffic without a capability to hosts that are not session targets.
type BlindPolicy string

const (
	// BlindRefuse refuses every such CONNECT or request.
	BlindRefuse BlindPolicy = "refuse"
	// BlindPublic (the default) tunnels to public addresses only: the host is resolved, every address is checked
	// against the blocked ranges (loopback, private, link-local, CGNAT, multicast, unspecified and the configured
	// cluster CIDRs) and the connection is made to the checked address, so DNS rebinding cannot slip past the check.
	BlindPublic BlindPolicy = "public"
	// BlindAllow tunnels anywhere. For local development only: it makes the proxy an SSRF hop into the cluster.
	BlindAllow BlindPolicy = "allow"
)

// ParseBlindPolicy parses a --blind-tunnel flag value.
func ParseBlindPolicy(s string) (BlindPolicy, error) {
	switch p := BlindPolicy(s); p {
	case BlindRefuse, BlindPublic, BlindAllow:
		return p, nil
	}
	return "", fmt.Errorf("blind tunnel policy %q: want refuse, public or allow", s)
}

// Config tunes the proxy. Zero values take the defaults documented on each field.
type Config struct {
	// RefuseUncredentialed refuses requests to target hosts that carry no capability instead of forwarding them
	// unchanged.
	RefuseUncredentialed bool
	// Blind is the policy for traffic to non-target hosts (default BlindPublic).
	Blind BlindPolicy
	// BlockedCIDRs are extra ranges BlindPublic never reaches (pod and service CIDRs of the cluster).
	BlockedCIDRs []netip.Prefix

	// UpstreamRoots verifies upstream TLS; nil means the system roots. Callers add an extra bundle to a copy of
	// the system pool.
	UpstreamRoots *x509.CertPool

	// MaxConcurrentPerCaller bounds in-flight intercepted requests per calling pod (default 64); over it the
	// proxy answers 429 at once rather than queueing, so one pod cannot starve the others.
	MaxConcurrentPerCaller int
	// MaxTunnelsPerCaller bounds open blind tunnels per calling pod (default 256).
	MaxTunnelsPerCaller int
	// MaxRequestBodyBytes bounds an intercepted request body (default 64 MiB); over it 413.
	MaxRequestBodyBytes int64
	// ReadHeaderTimeout bounds reading a request's headers from the client (default 10 s).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client keep-alive connections and intercepted tunnels (default 90 s).
	IdleTimeout time.Duration
	// TunnelIdleTimeout closes a blind tunnel when no byte moved either way for this long (default 5 m).
	TunnelIdleTimeout time.Duration
	// RequestTimeout bounds a whole forwarded exchange, streamed body included (default 30 m: long enough for a
	// model's streamed answer, short enough that a stuck upstream is eventually released).
	RequestTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response headers (default 10 m: non-streaming
	// model calls answer only when done).
	ResponseHeaderTimeout time.Duration
	// DialTimeout bounds upstream TCP connects and TLS handshakes (default 10 s).
	DialTimeout time.Duration
	// LeafValidity is the lifetime of interception leaf certificates (default 24 h).
	LeafValidity time.Duration
	// DisableHTTP2 keeps intercepted tunnels on HTTP/1.1 (ALPN offers only http/1.1).
	DisableHTTP2 bool

	// Now is the clock for leaf certificates (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Blind == "" {
		c.Blind = BlindPublic
	}
	if c.MaxConcurrentPerCaller <= 0 {
		c.MaxConcurrentPerCaller = 64
	}
	if c.MaxTunnelsPerCaller <= 0 {
		c.MaxTunnelsPerCaller = 256
	}
	if c.MaxRequestBodyBytes <= 0 {
		c.MaxRequestBodyBytes = 64 << 20
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.TunnelIdleTimeout <= 0 {
		c.TunnelIdleTimeout = 5 * time.Minute
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Minute
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 10 * time.Minute
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.LeafValidity <= 0 {
		c.LeafValidity = 24 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
