// Command manager runs the kilo-session-operator control plane: the KiloSession controller (one capability per
// session pod, renewed and revoked), the mutating webhook that wires session pods to their capability and to the
// egress, the webhook's certificate management and the trust-bundle reconciler that publishes the egress CA to
// session namespaces. It is wiring and flags only; behaviour lives in internal/.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // exec and OIDC kubeconfig auth for running outside the cluster
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/controller"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	kilowebhook "github.com/Kilo-Org/kilo-session-operator/internal/webhook"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(kilov1alpha1.AddToScheme(scheme))
}

func main() {
	var o options
	o.register(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(&o); err != nil {
		setupLog.Error(err, "Manager failed")
		os.Exit(1)
	}
}

func run(o *options) error {
	if err := o.validate(); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}
	allowList, err := policy.ParseAllowList(o.upstreamAllowList)
	if err != nil {
		return fmt.Errorf("parsing --upstream-allowlist: %w", err)
	}

	// HTTP/2 stays off unless asked for: the HTTP/2 stream-cancellation and rapid-reset vulnerabilities let an
	// unauthenticated client exhaust the server, and neither the API server (webhook) nor Prometheus needs it.
	var tlsOpts []func(*tls.Config)
	if !o.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the kubeconfig: %w", err)
	}

	// The webhook serving certificate comes from a Secret, served through GetCertificate and swapped on the next
	// handshake when the Secret changes. Self-managed: this manager's leader also creates, renews and rotates it
	// and patches the caBundle. cert-manager: a Certificate writes it and cainjector patches, so read only.
	hosts := []string{o.webhookServiceName + "." + o.operatorNamespace + ".svc", o.webhookServiceName + "." + o.operatorNamespace + ".svc.cluster.local"}
	hosts = append(hosts, o.webhookExtraSANs...)
	certs, err := pki.NewWebhookCertManager(cfg, pki.WebhookCertOptions{
		Namespace:         o.operatorNamespace,
		SecretName:        o.webhookSecretName,
		ReadOnly:          o.webhookCertMode == certModeCertManager,
		WebhookConfigName: o.webhookConfigName,
		ServiceName:       o.webhookServiceName,
		Hosts:             hosts,
	})
	if err != nil {
		return fmt.Errorf("setting up webhook certificates: %w", err)
	}
	webhookTLSOpts := append([]func(*tls.Config){}, tlsOpts...)
	webhookTLSOpts = append(webhookTLSOpts, certs.ConfigureTLS)
	webhookOpts := webhook.Options{Host: o.webhookHost, Port: o.webhookPort, TLSOpts: webhookTLSOpts}

	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.metricsSecure,
		TLSOpts:       tlsOpts,
		CertDir:       o.metricsCertDir,
	}
	if o.metricsSecure {
		// Every scrape is authenticated (TokenReview) and authorized (SubjectAccessReview on GET /metrics), as
		// the kubebuilder scaffold does: session counts, refusal rates and expiry times are not for anonymous readers.
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	// The manager's cache holds only what the design allows it to read: opted-in token Secrets, session-labelled
	// pods, KiloSessions, and the egress CA bundle ConfigMaps (by name) — never other Secrets or ConfigMaps.
	cacheOpts := controller.CacheOptions()
	if len(o.watchNamespaces) > 0 {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range o.watchNamespaces {
			cacheOpts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	// After DefaultNamespaces: with namespace scoping it adds the operator namespace for the source bundle.
	controller.ConfigureTrustBundleCache(&cacheOpts, o.operatorNamespace)

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		WebhookServer:           webhook.NewServer(webhookOpts),
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        o.leaderElectionID,
		LeaderElectionNamespace: o.operatorNamespace,
		// The Lease is released on a clean shutdown so a rolling update hands over at once instead of waiting out
		// the lease duration. Safe because the process exits right after the manager stops.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         cacheOpts,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}

	// The key ring: loaded on every replica (a standby must hold it before it leads), created when absent.
	keyRing, err := controller.NewKeyRingSource(mgr, o.operatorNamespace, o.keyRingSecret)
	if err != nil {
		return fmt.Errorf("setting up the key ring source: %w", err)
	}
	if err := (&controller.KiloSessionReconciler{
		KeyRing:                 keyRing,
		AllowList:               allowList,
		MaxConcurrentReconciles: o.maxConcurrentReconciles,
		WatchNamespaces:         o.watchNamespaces,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the KiloSession controller: %w", err)
	}
	if err := certs.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up webhook certificate management: %w", err)
	}
	if err := kilowebhook.Setup(mgr, kilowebhook.Options{
		ProxyURL: o.egressProxyURL,
		NoProxy:  append(append([]string{}, o.serviceCIDRs...), o.noProxy...),
	}); err != nil {
		return fmt.Errorf("setting up the pod-injection webhook: %w", err)
	}
	// The egress CA bundle follows every namespace with a KiloSession: the webhook mounts it into session pods.
	if err := (&controller.TrustBundleReconciler{OperatorNamespace: o.operatorNamespace}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the trust-bundle reconciler: %w", err)
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the health check: %w", err)
	}
	// Ready once the webhook server is serving: the API server sends admissions only to ready endpoints, and with
	// failurePolicy Fail an unready webhook would block every session pod.
	if err := mgr.AddReadyzCheck("webhook", mgr.GetWebhookServer().StartedChecker()); err != nil {
		return fmt.Errorf("adding the readiness check: %w", err)
	}
	if err := mgr.AddReadyzCheck("webhook-certificate", certs.ReadyCheck()); err != nil {
		return fmt.Errorf("adding the certificate readiness check: %w", err)
	}

	setupLog.Info("Starting manager", "operatorNamespace", o.operatorNamespace, "watchNamespaces", o.watchNamespaces.String(),
		"upstreamAllowList", o.upstreamAllowList.String(), "webhookCertMode", o.webhookCertMode)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		return fmt.Errorf("running the manager: %w", err)
	}
	return nil
}
