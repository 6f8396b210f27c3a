package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/cliflag"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// Webhook certificate modes.
const (
	// certModeSelfManaged: the manager keeps a CA and a serving certificate in a Secret, rotates them, and patches
	// the caBundle of the MutatingWebhookConfiguration (the default: no dependency on cert-manager).
	certModeSelfManaged = "self-managed"
	// certModeCertManager: a cert-manager Certificate writes the serving certificate into --webhook-secret-name
	// and cainjector patches the caBundle; the manager only serves it, reloading when the Secret changes.
	certModeCertManager = "cert-manager"
)

// options are the manager's flags. Each field's flag help says what it is for; defaults match config/default.
type options struct {
	metricsAddr             string
	metricsSecure           bool
	metricsCertDir          string
	probeAddr               string
	enableHTTP2             bool
	leaderElect             bool
	leaderElectionID        string
	webhookHost             string
	webhookPort             int
	webhookCertMode         string
	webhookCertDir          string
	webhookConfigName       string
	webhookServiceName      string
	webhookSecretName       string
	webhookExtraSANs        stringList
	watchNamespaces         stringList
	operatorNamespace       string
	keyRingSecret           string
	upstreamAllowList       stringList
	egressProxyURL          string
	noProxy                 stringList
	serviceCIDRs            stringList
	maxConcurrentReconciles int
}

// stringList is a comma-separated, repeatable list flag.
type stringList = cliflag.StringList

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "address the metrics endpoint binds to; \"0\" disables it")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve metrics over HTTPS behind Kubernetes authentication and authorization (the caller needs get on the /metrics non-resource URL)")
	fs.StringVar(&o.metricsCertDir, "metrics-cert-dir", "", "directory with tls.crt and tls.key for the metrics endpoint (default: a self-signed certificate)")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address the /healthz and /readyz probes bind to")
	fs.BoolVar(&o.enableHTTP2, "enable-http2", false, "serve HTTP/2 on the webhook and metrics endpoints; off by default because of the HTTP/2 stream-reset and rapid-reset CVEs (GHSA-qppj-fm5r-hxr3, GHSA-4374-p667-p6c8)")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "elect a leader so that only one replica reconciles and writes certificates")
	fs.StringVar(&o.leaderElectionID, "leader-election-id", "kilo-session-operator.kilo.ai", "name of the leader election Lease")
	fs.StringVar(&o.webhookHost, "webhook-bind-host", "", "address the webhook server binds to (default: all)")
	fs.IntVar(&o.webhookPort, "webhook-port", 9443, "port the webhook server listens on")
	fs.StringVar(&o.webhookCertMode, "webhook-cert-mode", certModeSelfManaged, "who provides the webhook serving certificate: self-managed or cert-manager")
	fs.StringVar(&o.webhookConfigName, "webhook-config-name", pki.DefaultWebhookConfiguration, "self-managed mode: MutatingWebhookConfiguration whose caBundle the manager patches")
	fs.StringVar(&o.webhookServiceName, "webhook-service-name", pki.DefaultWebhookService, "Service fronting the webhook; the self-managed serving certificate names <service>.<namespace>.svc")
	fs.StringVar(&o.webhookSecretName, "webhook-secret-name", pki.DefaultWebhookSecret, "Secret in the operator namespace holding the webhook serving certificate (self-managed: written by the manager; cert-manager: by the Certificate)")
	fs.Var(&o.webhookExtraSANs, "webhook-extra-san", "self-managed mode: extra DNS names or IP addresses for the serving certificate (comma-separated, repeatable), e.g. 127.0.0.1 when the API server calls the webhook by URL")
	fs.Var(&o.watchNamespaces, "namespace", "namespaces to watch for KiloSessions and session pods (comma-separated, repeatable; default: all)")
	fs.StringVar(&o.operatorNamespace, "operator-namespace", cliflag.OperatorNamespace(), "namespace the manager and egress run in (holds the key ring, the certificates and the CA bundle); $POD_NAMESPACE when set")
	fs.StringVar(&o.keyRingSecret, "key-ring-secret", kilov1alpha1.DefaultKeyRingSecret, "Secret in the operator namespace holding the capability key ring; created with a fresh key when absent")
	fs.Var(&o.upstreamAllowList, "upstream-allowlist", "upstream origins credentials may ever be sent to (comma-separated, repeatable; default "+strings.Join(policy.DefaultAllowList, ",")+"); a KiloSession cannot widen it")
	fs.StringVar(&o.egressProxyURL, "egress-proxy-url", "", fmt.Sprintf("proxy URL injected into session pods (default http://%s.<operator-namespace>.svc:%d)", kilov1alpha1.DefaultEgressService, kilov1alpha1.DefaultProxyPort))
	fs.Var(&o.noProxy, "no-proxy", "extra NO_PROXY entries injected into session pods, on top of the cluster-local defaults (comma-separated, repeatable)")
	fs.Var(&o.serviceCIDRs, "service-cidr", "the cluster's Service CIDRs, added to session pods' NO_PROXY so in-cluster traffic stays direct (comma-separated, repeatable)")
	fs.IntVar(&o.maxConcurrentReconciles, "max-concurrent-reconciles", 4, "KiloSessions reconciled in parallel")
}

// validate checks the flags before anything connects to the cluster, so a typo fails at start with a message
// rather than later as a confusing condition.
func (o *options) validate() error {
	var errs []error
	switch o.webhookCertMode {
	case certModeSelfManaged, certModeCertManager:
	default:
		errs = append(errs, fmt.Errorf("--webhook-cert-mode %q: want %s or %s", o.webhookCertMode, certModeSelfManaged, certModeCertManager))
	}
	if o.operatorNamespace == "" {
		errs = append(errs, errors.New("--operator-namespace must not be empty"))
	}
	if o.keyRingSecret == "" {
		errs = append(errs, errors.New("--key-ring-secret must not be empty"))
	}
	if len(o.upstreamAllowList) == 0 {
		o.upstreamAllowList = append(stringList(nil), policy.DefaultAllowList...)
	}
	if _, err := policy.ParseAllowList(o.upstreamAllowList); err != nil {
		errs = append(errs, fmt.Errorf("--upstream-allowlist: %w", err))
	}
	if o.egressProxyURL == "" {
		o.egressProxyURL = fmt.Sprintf("http://%s.%s.svc:%d", kilov1alpha1.DefaultEgressService, o.operatorNamespace, kilov1alpha1.DefaultProxyPort)
	}
	for _, c := range o.serviceCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			errs = append(errs, fmt.Errorf("--service-cidr %q: %w", c, err))
		}
	}
	if o.maxConcurrentReconciles < 1 {
		errs = append(errs, errors.New("--max-concurrent-reconciles must be at least 1"))
	}
	return errors.Join(errs...)
}
