package egress

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Label values. Route classes come from the policy; these are the extra ones for traffic that carries none.
const (
	routeNone  = "none"  // no capability, to a target host
	routeBlind = "blind" // no capability, to a non-target host

	outcomeForwarded     = "forwarded"
	outcomeRefused       = "refused"
	outcomeRedeemError   = "redeem_error"
	outcomeUpstreamError = "upstream_error"
	outcomeLimited       = "limited"
	outcomeBadRequest    = "bad_request"
	outcomeTunnelled     = "tunnelled"
)

type metrics struct {
	requests      *prometheus.CounterVec
	upstream      *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	latency       *prometheus.HistogramVec
	activeTunnels *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kilo_egress_requests_total",
			Help: "Requests and blind tunnels handled by the egress interceptor, by route class and outcome.",
		}, []string{"route_class", "outcome"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kilo_egress_upstream_responses_total",
			Help: "Upstream responses by route class and status class (2xx, 3xx, 4xx, 5xx).",
		}, []string{"route_class", "code_class"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kilo_egress_bytes_total",
			Help: "Body bytes through the interceptor: in = from clients to upstreams, out = from upstreams to clients (blind tunnels included).",
		}, []string{"direction"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kilo_egress_request_duration_seconds",
			Help:    "Time from a request's arrival to the upstream's response headers (or the refusal), by route class.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route_class"}),
		activeTunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kilo_egress_active_tunnels",
			Help: "Open CONNECT tunnels, by kind (intercepted or blind).",
		}, []string{"kind"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.upstream, m.bytes, m.latency, m.activeTunnels} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	m.bytesIn = m.bytes.WithLabelValues("in")
	m.bytesOut = m.bytes.WithLabelValues("out")
	return m, nil
}

func codeClass(code int) string {
	switch {
	case code < 200:
		return "1xx"
	case code < 300:
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	default:
		return "5xx"
	}
}
