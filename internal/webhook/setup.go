// Package webhook is the mutating admission webhook that wires session pods (label kilo.ai/session) to their
// capability Secret, the egress proxy and the egress CA bundle (docs/DESIGN.md §6).
package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// The registration (config/webhook/manifests.yaml is generated from these markers by `make manifests`).
// +kubebuilder:webhookconfiguration:mutating=true,name=kilo-pod-injector
// +kubebuilder:webhook:path=/mutate-v1-pod,mutating=true,failurePolicy=fail,sideEffects=None,groups="",resources=pods,verbs=create,versions=v1,name=inject.pods.kilo.ai,admissionReviewVersions=v1,reinvocationPolicy=IfNeeded,timeoutSeconds=5,matchPolicy=Equivalent,serviceName=kilo-webhook,serviceNamespace=kilo-system,patch=`{"objectSelector":{"matchExpressions":[{"key":"kilo.ai/session","operator":"Exists"}]}}`

// +kubebuilder:rbac:groups=kilo.ai,resources=kilosessions,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch

// Path is where the handler is served.
const Path = "/mutate-v1-pod"

// DefaultProxyURL is the egress interceptor as session pods reach it.
var DefaultProxyURL = fmt.Sprintf("http://%s.%s.svc:%d", kiloai.DefaultEgressService, kiloai.DefaultOperatorNamespace, kiloai.DefaultProxyPort)

// DefaultNoProxy keeps cluster-local traffic direct. Suffix entries start with "." (matched as a suffix by curl,
// Go, Python and Node alike); Kubernetes short names ("myservice") cannot be listed, so session pods should call
// in-cluster services by their .svc names or the operator should add them with Options.NoProxy.
var DefaultNoProxy = []string{"localhost", "127.0.0.1", "::1", ".svc", ".cluster.local", "kubernetes.default", "kubernetes.default.svc"}

// Options configure the injection.
type Options struct {
	// ProxyURL is the egress interceptor's URL for HTTPS_PROXY/HTTP_PROXY. Default DefaultProxyURL.
	ProxyURL string
	// NoProxy entries are appended to DefaultNoProxy: the cluster's service CIDR (for example 10.96.0.0/12, the
	// kubeadm default; Go, curl ≥ 7.86 and Python match CIDRs, Node's proxy-from-env does not), the pod CIDR, and
	// any in-cluster names the session pods call.
	NoProxy []string
}

func (o Options) config() (config, error) {
	proxy := o.ProxyURL
	if proxy == "" {
		proxy = DefaultProxyURL
	}
	u, err := url.Parse(proxy)
	if err != nil {
		// url.Error quotes the input, which may hold credentials: report the shape only.
		return config{}, errors.New("webhook proxy URL does not parse; it must be http(s)://host[:port]")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return config{}, fmt.Errorf("webhook proxy URL must be http(s)://host[:port] without userinfo, path or query; got scheme %q host %q", u.Scheme, u.Host)
	}
	noProxy := append([]string(nil), DefaultNoProxy...)
	for _, e := range o.NoProxy {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if strings.ContainsAny(e, ", \t") {
			return config{}, fmt.Errorf("webhook NO_PROXY entry %q must not contain commas or spaces", e)
		}
		if strings.Contains(e, "/") {
			if _, _, err := net.ParseCIDR(e); err != nil {
				return config{}, fmt.Errorf("webhook NO_PROXY entry %q: %w", e, err)
			}
		}
		noProxy = append(noProxy, e)
	}
	return config{proxyURL: strings.TrimSuffix(proxy, "/"), noProxy: strings.Join(noProxy, ",")}, nil
}

// NewHandler builds the handler. reader should be the manager's cached client (mgr.GetClient()); apiReader the
// uncached one (mgr.GetAPIReader()), consulted only on a cache miss.
func NewHandler(reader, apiReader client.Reader, decoder admission.Decoder, opts Options) (*Handler, error) {
	cfg, err := opts.config()
	if err != nil {
		return nil, err
	}
	registerMetrics()
	return &Handler{
		reader:        reader,
		apiReader:     apiReader,
		decoder:       decoder,
		cfg:           cfg,
		newSecretName: randomSecretName,
		observe: func(outcome string, d time.Duration) {
			admissionDuration.WithLabelValues(outcome).Observe(d.Seconds())
		},
	}, nil
}

// Setup registers the injection webhook on the manager's webhook server at Path. The manager's scheme must include
// corev1 and kilo.ai/v1alpha1. For a small cache, configure the manager's cache with
// controller.TrustBundleCacheByObject() (only ConfigMaps named kilo-egress-ca-bundle).
func Setup(mgr manager.Manager, opts Options) error {
	_, err := setup(mgr, opts)
	return err
}

func setup(mgr manager.Manager, opts Options) (*Handler, error) {
	h, err := NewHandler(mgr.GetClient(), mgr.GetAPIReader(), admission.NewDecoder(mgr.GetScheme()), opts)
	if err != nil {
		return nil, err
	}
	mgr.GetWebhookServer().Register(Path, &admission.Webhook{
		Handler: h,
		// A panic becomes a 500, which failurePolicy Fail turns into a refused pod: fail closed, keep serving.
		RecoverPanic: new(true),
	})
	return h, nil
}

var admissionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "kilo_webhook_admission_duration_seconds",
	Help:    "Time the pod-injection handler spends on one admission request (decode to response), by outcome.",
	Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1},
}, []string{"outcome"})

var registerOnce sync.Once

func registerMetrics() { registerOnce.Do(func() { metrics.Registry.MustRegister(admissionDuration) }) }
