package controller

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Issue causes, the values of the cause label of kilo_capabilities_issued_total.
const (
	causeNew          = "new"
	causeRenewal      = "renewal"
	causeSourceChange = "source_change"
)

var (
	capabilitiesIssued = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kilo_capabilities_issued_total",
		Help: "Capabilities issued, by cause: new (first capability of a pod), renewal (before expiry), source_change (token Secret, targets or sealing key changed).",
	}, []string{"cause"})
	capabilitiesRevoked = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kilo_capabilities_revoked_total",
		Help: "Capability Secrets deleted because their pod stopped matching, finished, or the session was suspended or deleted.",
	})
	capabilityIssueErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kilo_capability_issue_errors_total",
		Help: "Reconciles of a KiloSession that could not issue every capability, by condition reason.",
	}, []string{"reason"})

	earliestExpiry = &expiryTracker{byKey: map[types.NamespacedName]time.Time{}, clock: clock.RealClock{}}
)

func init() {
	metrics.Registry.MustRegister(capabilitiesIssued, capabilitiesRevoked, capabilityIssueErrors, earliestExpiry)
}

// expiryTracker is the kilo_capability_earliest_expiry_seconds gauge: seconds from now until the earliest expiry of
// any capability the controller holds, computed at scrape time so it keeps falling between reconciles (an alert on
// "< 600" fires when renewal has stalled). It reports nothing while no capability exists, rather than a made-up
// value a dashboard would plot.
type expiryTracker struct {
	mu    sync.Mutex
	byKey map[types.NamespacedName]time.Time
	clock clock.PassiveClock
}

var earliestExpiryDesc = prometheus.NewDesc("kilo_capability_earliest_expiry_seconds",
	"Seconds until the earliest expiry among all capabilities issued by this controller.", nil, nil)

func (t *expiryTracker) Describe(ch chan<- *prometheus.Desc) { ch <- earliestExpiryDesc }

func (t *expiryTracker) Collect(ch chan<- prometheus.Metric) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var earliest time.Time
	for _, at := range t.byKey {
		if earliest.IsZero() || at.Before(earliest) {
			earliest = at
		}
	}
	if earliest.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(earliestExpiryDesc, prometheus.GaugeValue, earliest.Sub(t.clock.Now()).Seconds())
}

// set records the earliest expiry of one session; a zero time forgets the session.
func (t *expiryTracker) set(key types.NamespacedName, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if at.IsZero() {
		delete(t.byKey, key)
		return
	}
	t.byKey[key] = at
}

func (t *expiryTracker) useClock(c clock.PassiveClock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.clock = c
}
