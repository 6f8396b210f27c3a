// Package redeem is the one redeem decision shared by every front door (the egress interceptor and the redeem
// API): decode the capability with the key ring, bind it to the calling pod, check revocation against informer
// state, classify the request URL, and check the URL's origin against the cluster allow-list (docs/DESIGN.md §7).
//
// The order is part of the contract. The binding is checked before the URL is looked at, so a capability copied
// out of its pod learns nothing about which URLs it would open; revocation is checked before classification for
// the same reason. Nothing in this package writes a capability, a token or an Authorization value to a log, an
// error, or a metric.
package redeem

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// Reason is a stable refusal reason: the codec's and the policy's, plus the ones below (docs/DESIGN.md §3).
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
	Detail string // a fixed phrase (this package's, the codec's or the policy's): never token material or URL text
}

func (r *Refusal) Error() string { return string(r.Reason) }

// KeyRingSource yields the current key ring, or nil while none is loaded (every redemption then fails with
// capability_configuration_error). The Decider notices a different ring by pointer and drops every cached claim
// decoded under the old one.
type KeyRingSource interface {
	KeyRing() *capability.KeyRing
}

// KeyRingHolder is a KeyRingSource the egress swaps when the key ring Secret changes.
type KeyRingHolder struct {
	p atomic.Pointer[capability.KeyRing]
}

// NewKeyRingHolder returns a holder with ring (which may be nil: not loaded yet).
func NewKeyRingHolder(ring *capability.KeyRing) *KeyRingHolder {
	h := &KeyRingHolder{}
	h.p.Store(ring)
	return h
}

// KeyRing implements KeyRingSource.
func (h *KeyRingHolder) KeyRing() *capability.KeyRing { return h.p.Load() }

// Store replaces the ring. Store a new *KeyRing on every reload, even with the same keys: the pointer is how the
// Decider knows to clear its cache.
func (h *KeyRingHolder) Store(ring *capability.KeyRing) { h.p.Store(ring) }

// Config configures NewDecider.
type Config struct {
	Keys  KeyRingSource // required
	State State         // required
	// AllowList is the cluster-wide upstream allow-list; nil means policy.DefaultAllowList.
	AllowList *policy.AllowList
	// Now is the clock for expiry; nil means time.Now.
	Now func() time.Time
	// CacheSize bounds the verified-claims cache (entries); 0 means 10,000. Each entry holds one capability's
	// claims and pre-built Authorization values, about 1 KiB with the key.
	CacheSize int
	// Metrics receives kilo_redeem_total, kilo_redeem_duration_seconds and kilo_redeem_claims_cache_total; nil
	// registers nothing.
	Metrics prometheus.Registerer
	// Logger gets one V(1) line per refusal (reason, and the URL's scheme, host and path), at most
	// RefusalLogsPerSecond per second with a burst of the same size; 0 means 10.
	Logger               logr.Logger
	RefusalLogsPerSecond float64
}

// Decider is the one redeem decision shared by the redeem API and the egress interceptor. It is safe for
// concurrent use.
type Decider struct {
	keys    KeyRingSource
	state   State
	allow   *policy.AllowList
	now     func() time.Time
	cache   *boundedCache[*claimsEntry]
	metrics *metrics
	log     logr.Logger
	logRate *rate.Limiter
	// cachedRing is the ring the cache's entries were decoded under.
	cachedRing atomic.Pointer[capability.KeyRing]
}

// claimsEntry is a verified capability, reduced to what the decision needs and immutable once cached. Parsed
// targets and the Authorization values are built once, so a warm redemption allocates nothing for them.
type claimsEntry struct {
	ring          *capability.KeyRing
	containerID   string
	sessionUID    string
	kiloSessionID string
	expiresAtMs   int64
	targets       *policy.ParsedTargets // nil when the targets do not pass the policy's target rules
	hasProvider   bool
	userAuth      capability.Secret
	providerAuth  capability.Secret
}

// NewDecider builds a Decider. Missing Keys or State is a programming error and reported as such.
func NewDecider(cfg Config) (*Decider, error) {
	if cfg.Keys == nil || cfg.State == nil {
		return nil, errors.New("building the redeem decider: Keys and State are required")
	}
	allow := cfg.AllowList
	if allow == nil {
		var err error
		if allow, err = policy.ParseAllowList(policy.DefaultAllowList); err != nil {
			return nil, fmt.Errorf("parsing the default upstream allow-list: %w", err)
		}
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	size := cfg.CacheSize
	if size <= 0 {
		size = 10000
	}
	perSec := cfg.RefusalLogsPerSecond
	if perSec <= 0 {
		perSec = 10
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	return &Decider{
		keys: cfg.Keys, state: cfg.State, allow: allow, now: now,
		cache:   newBoundedCache[*claimsEntry](size),
		metrics: m, log: cfg.Logger,
		logRate: rate.NewLimiter(rate.Limit(perSec), int(perSec+1)),
	}, nil
}

// KeyRingLoaded reports whether a key ring is loaded; readiness depends on it.
func (d *Decider) KeyRingLoaded() bool { return d.keys.KeyRing() != nil }

// Decide redeems req or returns a *Refusal. Every outcome is counted and timed.
func (d *Decider) Decide(ctx context.Context, req Request) (Result, error) {
	start := time.Now()
	res, ref := d.decide(req)
	elapsed := time.Since(start).Seconds()
	if ref != nil {
		d.metrics.countRefused(ref.Reason, elapsed)
		d.logRefusal(req, ref)
		return Result{}, ref
	}
	d.metrics.countAllowed(res.RouteClass, elapsed)
	return res, nil
}

func refuse(r Reason, detail string) *Refusal { return &Refusal{Reason: r, Detail: detail} }

func (d *Decider) decide(req Request) (Result, *Refusal) {
	ring := d.keys.KeyRing()
	if ring == nil {
		return Result{}, refuse(ReasonConfiguration, "no key ring is loaded")
	}
	if d.cachedRing.Load() != ring {
		// The ring changed (or this is the first call): claims decoded under the old ring must not outlive it,
		// e.g. after a key was removed because it leaked. Entries inserted concurrently by a call still holding
		// the old ring are caught by the per-entry ring check below.
		d.cache.clear()
		d.cachedRing.Store(ring)
	}
	now := d.now()
	e, hit := d.cache.get(req.Capability)
	if hit && e.ring != ring {
		hit = false
	}
	if hit {
		d.metrics.cacheHit.Inc()
		if e.expiresAtMs <= now.UnixMilli() {
			d.cache.remove(req.Capability)
			return Result{}, refuse(ReasonExpired, "the capability expired")
		}
	} else {
		d.metrics.cacheMiss.Inc()
		claims, err := capability.Decode(ring, req.Capability, now)
		if err != nil {
			detail := "the capability did not decode"
			var ce *capability.Error
			if errors.As(err, &ce) && ce.Detail != "" {
				detail = ce.Detail // a fixed phrase of the codec, never token material
			}
			return Result{}, refuse(Reason(capability.ReasonOf(err)), detail)
		}
		e = newClaimsEntry(ring, claims)
		d.cache.put(req.Capability, e)
	}

	// Binding, before anything about the URL: a capability presented by any pod but its own is refused the same
	// way whatever it asks for.
	if !constantTimeEqual(e.containerID, req.CallerPodUID) {
		return Result{}, refuse(ReasonContainerMismatch, "the capability is bound to another pod")
	}

	// Revocation, from informer state: the pod and the session must exist now, under the UIDs the capability
	// names, and the session must not be suspended.
	pod, ok := d.state.Pod(e.containerID)
	if !ok {
		return Result{}, refuse(ReasonRevoked, "the pod no longer exists")
	}
	if !pod.Live {
		return Result{}, refuse(ReasonRevoked, "the pod is terminating or has terminated")
	}
	sess, ok := d.state.Session(e.sessionUID)
	if !ok {
		return Result{}, refuse(ReasonRevoked, "the KiloSession no longer exists")
	}
	if sess.Suspended {
		return Result{}, refuse(ReasonRevoked, "the KiloSession is suspended")
	}
	if pod.Namespace != sess.Namespace || pod.SessionName != sess.Name {
		return Result{}, refuse(ReasonRevoked, "the pod no longer belongs to the KiloSession")
	}
	if sess.PolicyErr != nil {
		return Result{}, refuse(ReasonConfiguration, "the KiloSession's deny rules do not compile")
	}

	if e.targets == nil {
		return Result{}, refuse(ReasonUpstreamNotAllowed, "the capability's targets are not valid upstreams")
	}
	dec := sess.Policy.Classify(policy.Request{
		URL:                req.URL,
		Method:             req.Method,
		KiloSessionID:      e.kiloSessionID,
		BootstrapSessionID: req.BootstrapSessionID,
		HasProviderToken:   e.hasProvider,
	}, e.targets)
	if !dec.Allowed {
		r := Reason(dec.Reason)
		if r == "" {
			r = ReasonUpstreamNotAllowed // fail closed on a refusal without a reason
		}
		detail := dec.Detail // one of the policy's fixed Detail* constants
		if detail == "" {
			detail = "the policy refused the request"
		}
		return Result{}, refuse(r, detail)
	}
	// Defence in depth: even a capability whose targets were wider than the allow-list cannot reach an origin
	// outside it (docs/DESIGN.md §5).
	if dec.Origin == "" || !d.allow.Allows(dec.Origin) {
		return Result{}, refuse(ReasonUpstreamNotAllowed, "the origin is not in the cluster allow-list")
	}
	auth := e.userAuth
	if dec.Credential == policy.CredentialProvider && e.hasProvider {
		auth = e.providerAuth
	}
	return Result{RouteClass: dec.RouteClass, Authorization: auth}, nil
}

func newClaimsEntry(ring *capability.KeyRing, c *capability.Claims) *claimsEntry {
	e := &claimsEntry{
		ring:          ring,
		containerID:   c.OutboundContainerID,
		sessionUID:    c.CloudAgentSessionID,
		kiloSessionID: c.KiloSessionID,
		expiresAtMs:   c.ExpiresAt,
		hasProvider:   c.ProviderToken != "",
		userAuth:      capability.Secret("Bearer " + string(c.UserToken)),
	}
	if e.hasProvider {
		e.providerAuth = capability.Secret("Bearer " + string(c.ProviderToken))
	}
	if t, err := policy.ParseTargets(policy.Targets{
		BackendBaseURL:       c.Targets.BackendBaseURL,
		ProviderBaseURL:      c.Targets.ProviderBaseURL,
		SessionIngestBaseURL: c.Targets.SessionIngestBaseURL,
	}); err == nil {
		e.targets = t
	}
	return e
}

// constantTimeEqual compares without an early exit on the first differing byte, so the time taken does not tell
// a caller how much of a pod UID it guessed right. Lengths are not secret (UIDs have one fixed shape).
func constantTimeEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// logRefusal writes one rate-limited debug line. It carries the reason, the fixed detail, and the URL's scheme,
// host and escaped path: never the query or fragment, never userinfo, and never a path that contains any piece
// of the capability (a pod can put its capability in a URL; the log must not become a place to find it).
func (d *Decider) logRefusal(req Request, ref *Refusal) {
	if !d.log.V(1).Enabled() || !d.logRate.Allow() {
		return
	}
	scheme, host, path := "", "", ""
	if len(req.URL) <= 8192 {
		if u, err := url.Parse(req.URL); err == nil {
			scheme, host, path = u.Scheme, u.Host, u.EscapedPath()
		}
	}
	const maxLogged = 256
	if len(path) > maxLogged {
		path = path[:maxLogged] + "…"
	}
	if len(host) > maxLogged {
		host = host[:maxLogged] + "…"
	}
	d.log.V(1).Info("Redeem refused", "reason", string(ref.Reason), "detail", ref.Detail,
		"method", methodLabel(req.Method),
		"scheme", scrub(scheme, req.Capability), "host", scrub(host, req.Capability),
		"path", scrub(path, req.Capability))
}

const redacted = "[REDACTED]"

// scrub redacts s when it holds the capability marker or shares any run of scrubRun characters with the
// presented capability: a URL holding a fragment of the capability, however cut or escaped, is not logged. It
// costs O(len(s)·len(capability)), which only the rate-limited refusal log pays.
func scrub(s, capability string) string {
	if s == "" {
		return s
	}
	if strings.Contains(strings.ToLower(s), "kka1") {
		return redacted
	}
	for i := 0; i+scrubRun <= len(s) && len(capability) >= scrubRun; i++ {
		if strings.Contains(capability, s[i:i+scrubRun]) {
			return redacted
		}
	}
	return s
}

// scrubRun is long enough that ordinary path text never matches a base64 run by chance, short enough that any
// useful piece of a capability does.
const scrubRun = 10

// methodLabel keeps a caller-chosen method out of the log unless it is a standard one.
func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE":
		return m
	}
	return "other"
}
