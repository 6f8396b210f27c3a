package redeem

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// Every label value comes from these fixed sets, so no request can grow the series count or smuggle its content
// into a label. A reason outside the set is counted as "other".
var (
	routeClasses = []policy.RouteClass{
		policy.RouteProviderModel, policy.RouteOrganizationModels, policy.RouteBackendAPI, policy.RouteSessionIngest,
	}
	refusalReasons = []Reason{
		ReasonInvalid, ReasonExpired, ReasonConfiguration, ReasonInvalidUpstreamURL, ReasonUpstreamNotAllowed,
		ReasonContainerMismatch, ReasonRevoked, ReasonUnauthenticated, ReasonInvalidRequest,
	}
)

const otherLabel = "other"

// metrics holds every series resolved up front: the hot path increments a pointer, it never hashes labels.
type metrics struct {
	allowed     map[policy.RouteClass]prometheus.Counter
	allowedElse prometheus.Counter
	refused     map[Reason]prometheus.Counter
	refusedElse prometheus.Counter
	latAllowed  prometheus.Observer
	latRefused  prometheus.Observer
	cacheHit    prometheus.Counter
	cacheMiss   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kilo_redeem_total",
		Help: "Capability redemptions by outcome, route class (allowed) and reason (refused).",
	}, []string{"outcome", "route_class", "reason"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kilo_redeem_duration_seconds",
		Help:    "Time to decide one redemption, in process (decode, bind, revocation, classify).",
		Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3},
	}, []string{"outcome"})
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kilo_redeem_claims_cache_total",
		Help: "Lookups of verified claims by capability: a hit skips decryption.",
	}, []string{"result"})
	if reg != nil {
		for _, c := range []prometheus.Collector{total, latency, cache} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering redeem metrics: %w", err)
			}
		}
	}
	m := &metrics{
		allowed:     map[policy.RouteClass]prometheus.Counter{},
		allowedElse: total.WithLabelValues("allowed", otherLabel, ""),
		refused:     map[Reason]prometheus.Counter{},
		refusedElse: total.WithLabelValues("refused", "", otherLabel),
		latAllowed:  latency.WithLabelValues("allowed"),
		latRefused:  latency.WithLabelValues("refused"),
		cacheHit:    cache.WithLabelValues("hit"),
		cacheMiss:   cache.WithLabelValues("miss"),
	}
	for _, rc := range routeClasses {
		m.allowed[rc] = total.WithLabelValues("allowed", string(rc), "")
	}
	for _, r := range refusalReasons {
		m.refused[r] = total.WithLabelValues("refused", "", string(r))
	}
	return m, nil
}

func (m *metrics) countAllowed(rc policy.RouteClass, seconds float64) {
	if c, ok := m.allowed[rc]; ok {
		c.Inc()
	} else {
		m.allowedElse.Inc()
	}
	m.latAllowed.Observe(seconds)
}

func (m *metrics) countRefused(r Reason, seconds float64) {
	if c, ok := m.refused[r]; ok {
		c.Inc()
	} else {
		m.refusedElse.Inc()
	}
	m.latRefused.Observe(seconds)
}

// Reasons re-exported so that a front door needs only this package.
const (
	ReasonInvalid            = Reason(capability.ReasonInvalid)
	ReasonExpired            = Reason(capability.ReasonExpired)
	ReasonConfiguration      = Reason(capability.ReasonConfiguration)
	ReasonInvalidUpstreamURL = Reason(policy.ReasonInvalidUpstreamURL)
	ReasonUpstreamNotAllowed = Reason(policy.ReasonUpstreamNotAllowed)
	// ReasonInvalidRequest is the redeem API's answer to a malformed request body; the decision never returns it.
	ReasonInvalidRequest Reason = "invalid_request"
)
