package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/cliflag"
	"github.com/Kilo-Org/kilo-session-operator/internal/egress"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// options are the egress's flags. Defaults match config/egress.
type options struct {
	proxyAddr       string
	redeemAddr      string
	redeemTLS       bool
	probeAddr       string
	metricsAddr     string
	metricsSecure   bool
	metricsCertDir  string
	enableHTTP2     bool
	namespace       string
	keyRingSecret   string
	caSecret        string
	caBundleMap     string
	serviceName     string
	caValidity      time.Duration
	caRotateBefore  time.Duration
	caPromoteAfter  time.Duration
	allowList       stringList
	redeemSAs       stringList
	blindTunnel     string
	blockedCIDRs    stringList
	refuseUncred    bool
	upstreamCAFile  string
	maxPerPod       int
	maxTunnelsPod   int
	maxBody         int64
	requestTimeout  time.Duration
	headerTimeout   time.Duration
	idleTimeout     time.Duration
	tunnelIdle      time.Duration
	shutdownTimeout time.Duration
	disableTunnelH2 bool

	blind   egress.BlindPolicy
	blocked []netip.Prefix
}

// stringList is a comma-separated, repeatable list flag.
type stringList = cliflag.StringList

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.proxyAddr, "proxy-bind-address", fmt.Sprintf(":%d", kilov1alpha1.DefaultProxyPort), "address the HTTP forward proxy (session pods' HTTPS_PROXY) listens on")
	fs.StringVar(&o.redeemAddr, "redeem-bind-address", fmt.Sprintf(":%d", kilov1alpha1.DefaultRedeemPort), "address the redeem API (POST /v1/redeem, trusted gateways) listens on; \"0\" disables it")
	fs.BoolVar(&o.redeemTLS, "redeem-tls", true, "serve the redeem API over TLS with a certificate for <service>.<namespace>.svc signed by the interceptor CA (clients trust the CA bundle ConfigMap)")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address /healthz and /readyz bind to")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "address /metrics binds to; \"0\" disables it")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve metrics over HTTPS behind Kubernetes authentication and authorization")
	fs.StringVar(&o.metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for the metrics endpoint (default: self-signed)")
	fs.BoolVar(&o.enableHTTP2, "enable-http2", false, "serve HTTP/2 on the metrics endpoint (off: HTTP/2 rapid-reset CVEs)")
	fs.StringVar(&o.namespace, "operator-namespace", cliflag.OperatorNamespace(), "namespace holding the key ring, the CA Secret and the CA bundle ConfigMap; default $POD_NAMESPACE")
	fs.StringVar(&o.keyRingSecret, "key-ring-secret", kilov1alpha1.DefaultKeyRingSecret, "Secret holding the capability key ring (reloaded on change)")
	fs.StringVar(&o.caSecret, "ca-secret", kilov1alpha1.DefaultEgressCASecret, "Secret holding the interceptor CA (created when absent, rotated with overlap)")
	fs.StringVar(&o.caBundleMap, "ca-bundle-configmap", kilov1alpha1.CABundleConfigMap, "ConfigMap the public CA bundle is published to (key "+kilov1alpha1.CABundleKey+")")
	fs.StringVar(&o.serviceName, "service-name", kilov1alpha1.DefaultEgressService, "the egress Service; the redeem API's certificate names <service>.<namespace>.svc")
	fs.DurationVar(&o.caValidity, "ca-validity", 365*24*time.Hour, "lifetime of a generated interceptor CA")
	fs.DurationVar(&o.caRotateBefore, "ca-rotate-before", 90*24*time.Hour, "announce the successor CA this long before the signer expires")
	fs.DurationVar(&o.caPromoteAfter, "ca-promote-after", 7*24*time.Hour, "let an announced CA sign only after this long in the bundle (session pods read their CA file at start)")
	fs.Var(&o.allowList, "upstream-allowlist", "upstream origins credentials may ever go to (comma-separated, repeatable; default "+strings.Join(policy.DefaultAllowList, ",")+")")
	fs.Var(&o.redeemSAs, "redeem-service-account", "ServiceAccounts (namespace/name) allowed to call the redeem API (comma-separated, repeatable); none means nobody")
	fs.StringVar(&o.blindTunnel, "blind-tunnel", string(egress.BlindPublic), "uncredentialed traffic to non-target hosts: public (tunnel to public addresses only), refuse, or allow (anywhere; development only)")
	fs.Var(&o.blockedCIDRs, "blocked-cidr", "extra ranges blind tunnels never reach, e.g. the pod and Service CIDRs (comma-separated, repeatable)")
	fs.BoolVar(&o.refuseUncred, "refuse-uncredentialed", false, "refuse requests to session target hosts that carry no capability instead of forwarding them unchanged")
	fs.StringVar(&o.upstreamCAFile, "upstream-ca-file", "", "PEM file of extra CAs trusted for upstream TLS, on top of the system roots")
	fs.IntVar(&o.maxPerPod, "max-concurrent-per-pod", 64, "in-flight intercepted requests per session pod; more get 429")
	fs.IntVar(&o.maxTunnelsPod, "max-tunnels-per-pod", 256, "open blind tunnels per session pod; more get 429")
	fs.Int64Var(&o.maxBody, "max-request-body-bytes", 64<<20, "largest request body forwarded; larger gets 413")
	fs.DurationVar(&o.requestTimeout, "request-timeout", 30*time.Minute, "longest forwarded exchange, streamed body included")
	fs.DurationVar(&o.headerTimeout, "upstream-header-timeout", 10*time.Minute, "longest wait for an upstream's response headers")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 90*time.Second, "idle keep-alive timeout for client connections, tunnels and the upstream pool")
	fs.DurationVar(&o.tunnelIdle, "tunnel-idle-timeout", 5*time.Minute, "close a blind tunnel after this long without traffic either way")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 50*time.Second, "how long a shutdown waits for in-flight streams (keep below terminationGracePeriodSeconds)")
	fs.BoolVar(&o.disableTunnelH2, "disable-tunnel-http2", false, "speak only HTTP/1.1 inside intercepted tunnels")
}

// validate checks the flags before anything connects to the cluster.
func (o *options) validate() error {
	var errs []error
	if o.namespace == "" || o.keyRingSecret == "" || o.caSecret == "" || o.caBundleMap == "" || o.serviceName == "" {
		errs = append(errs, errors.New("--operator-namespace, --key-ring-secret, --ca-secret, --ca-bundle-configmap and --service-name must not be empty"))
	}
	if len(o.allowList) == 0 {
		o.allowList = append(stringList(nil), policy.DefaultAllowList...)
	}
	if _, err := policy.ParseAllowList(o.allowList); err != nil {
		errs = append(errs, fmt.Errorf("--upstream-allowlist: %w", err))
	}
	var err error
	if o.blind, err = egress.ParseBlindPolicy(o.blindTunnel); err != nil {
		errs = append(errs, fmt.Errorf("--blind-tunnel: %w", err))
	}
	for _, c := range o.blockedCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("--blocked-cidr %q: %w", c, err))
			continue
		}
		o.blocked = append(o.blocked, p.Masked())
	}
	for _, sa := range o.redeemSAs {
		if ns, name, ok := strings.Cut(sa, "/"); !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("--redeem-service-account %q: want namespace/name", sa))
		}
	}
	if o.maxPerPod < 1 || o.maxTunnelsPod < 1 || o.maxBody < 1 {
		errs = append(errs, errors.New("--max-concurrent-per-pod, --max-tunnels-per-pod and --max-request-body-bytes must be positive"))
	}
	return errors.Join(errs...)
}
