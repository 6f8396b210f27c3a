// Command egress runs the egress interceptor (the HTTP forward proxy session pods use) and the redeem API (for
// trusted gateways), both on the one redeem decision, with informers for Pods, KiloSessions and the key ring
// Secret, and the interceptor CA kept in a Secret and published as a ConfigMap. Wiring and flags only; behaviour
// lives in internal/egress and internal/redeem.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // exec and OIDC kubeconfig auth for running outside the cluster
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/egress"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
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
	o.register(flag.CommandLine) // --kubeconfig is registered by controller-runtime's config package
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(&o); err != nil {
		setupLog.Error(err, "Egress failed")
		os.Exit(1)
	}
}

func run(o *options) error {
	if err := o.validate(); err != nil {
		return fmt.Errorf("invalid flags: %w", err)
	}
	allowList, err := policy.ParseAllowList(o.allowList)
	if err != nil {
		return fmt.Errorf("parsing --upstream-allowlist: %w", err)
	}
	roots, err := egress.UpstreamRoots(o.upstreamCAFile)
	if err != nil {
		return fmt.Errorf("loading --upstream-ca-file: %w", err)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the kubeconfig: %w", err)
	}

	var tlsOpts []func(*tls.Config)
	if !o.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: o.metricsAddr, SecureServing: o.metricsSecure, TLSOpts: tlsOpts, CertDir: o.metricsCertDir}
	if o.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	shutdownGrace := o.shutdownTimeout + 5*time.Second
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		Cache:                   egress.CacheOptions(ctrl.Options{}.Cache, o.namespace, o.keyRingSecret),
		GracefulShutdownTimeout: &shutdownGrace,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	ctx := ctrl.SetupSignalHandler()
	log := ctrl.Log.WithName("egress")

	// The redeem decision and the state it reads (pods, sessions, the key ring), all from the informer cache.
	state, err := redeem.NewInformerState(ctx, mgr.GetCache(), redeem.InformerStateOptions{Logger: ctrl.Log.WithName("redeem")})
	if err != nil {
		return fmt.Errorf("setting up the redeem state: %w", err)
	}
	keys := redeem.NewKeyRingHolder(nil)
	keyWatch, err := egress.NewKeyRingWatcher(ctx, mgr.GetCache(), types.NamespacedName{Namespace: o.namespace, Name: o.keyRingSecret}, keys, log)
	if err != nil {
		return err
	}
	decider, err := redeem.NewDecider(redeem.Config{Keys: keys, State: state, AllowList: allowList, Metrics: ctrlmetrics.Registry, Logger: ctrl.Log.WithName("redeem")})
	if err != nil {
		return fmt.Errorf("building the redeem decision: %w", err)
	}
	callers, err := egress.NewPodCallers(ctx, mgr.GetCache())
	if err != nil {
		return err
	}
	targets, err := egress.NewSessionTargets(ctx, mgr.GetCache(), allowList.Allows, log)
	if err != nil {
		return err
	}
	// Every allow-listed origin is intercepted too, whether or not a session names it right now: a CONNECT to
	// api.kilo.ai from a pod whose session was just deleted must be opened and refused here, not tunnelled blind
	// with its capability to the real upstream.
	allowHosts, err := egress.NewTargetSet(o.allowList)
	if err != nil {
		return fmt.Errorf("--upstream-allowlist: %w", err)
	}

	// The CA Secret and the bundle ConfigMap go through an uncached client: the cache holds no Secret but the key
	// ring, by design.
	direct, err := client.New(cfg, client.Options{Scheme: scheme, HTTPClient: mgr.GetHTTPClient(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("creating the API client: %w", err)
	}
	ca := &egress.CAManager{
		Client:    direct,
		Secret:    types.NamespacedName{Namespace: o.namespace, Name: o.caSecret},
		ConfigMap: types.NamespacedName{Namespace: o.namespace, Name: o.caBundleMap},
		Options:   pki.CAOptions{CommonName: "kilo-session-operator egress CA", Validity: o.caValidity, RotateBefore: o.caRotateBefore, PromoteAfter: o.caPromoteAfter},
		Log:       log.WithName("ca"),
	}
	if err := ca.Options.Validate(); err != nil {
		return fmt.Errorf("CA rotation flags: %w", err)
	}
	if err := mgr.Add(ca); err != nil {
		return fmt.Errorf("adding the CA manager: %w", err)
	}

	proxy, err := egress.New(egress.Config{
		RefuseUncredentialed:   o.refuseUncred,
		Blind:                  o.blind,
		BlockedCIDRs:           o.blocked,
		UpstreamRoots:          roots,
		MaxConcurrentPerCaller: o.maxPerPod,
		MaxTunnelsPerCaller:    o.maxTunnelsPod,
		MaxRequestBodyBytes:    o.maxBody,
		RequestTimeout:         o.requestTimeout,
		ResponseHeaderTimeout:  o.headerTimeout,
		IdleTimeout:            o.idleTimeout,
		TunnelIdleTimeout:      o.tunnelIdle,
		DisableHTTP2:           o.disableTunnelH2,
	}, egress.Deps{Redeemer: decider, Callers: callers, Targets: egress.AnyTarget{allowHosts, targets}, CA: ca, Log: log.WithName("proxy"), Registerer: ctrlmetrics.Registry})
	if err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return proxy.Run(ctx, o.proxyAddr, o.shutdownTimeout)
	})); err != nil {
		return fmt.Errorf("adding the proxy: %w", err)
	}

	if o.redeemAddr != "0" {
		clientset, err := kubernetes.NewForConfigAndClient(cfg, mgr.GetHTTPClient())
		if err != nil {
			return fmt.Errorf("creating the TokenReview client: %w", err)
		}
		auth, err := redeem.NewTokenReviewAuthenticator(redeem.TokenReviewConfig{
			Reviewer: clientset.AuthenticationV1().TokenReviews(),
			Allowed:  o.redeemSAs,
			IsSessionPod: func(uid string) bool {
				_, ok := state.Pod(uid)
				return ok
			},
		})
		if err != nil {
			return err
		}
		api, err := redeem.NewAPIHandler(redeem.APIConfig{Redeemer: decider, Authenticator: auth, Logger: ctrl.Log.WithName("redeem-api")})
		if err != nil {
			return err
		}
		srv := redeem.NewServer(o.redeemAddr, redeem.NewMux(redeem.MuxConfig{API: api}))
		if o.redeemTLS {
			names := []string{o.serviceName + "." + o.namespace + ".svc", o.serviceName + "." + o.namespace + ".svc.cluster.local"}
			srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"},
				GetCertificate: egress.ServingCertificate(ca, names, 24*time.Hour)}
		}
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			return egress.RunServer(ctx, srv, o.shutdownTimeout)
		})); err != nil {
			return fmt.Errorf("adding the redeem API: %w", err)
		}
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the health check: %w", err)
	}
	// Ready only when every answer would be right: informers synced (a pod not yet seen would be unknown_caller
	// or revoked), a key ring loaded, a CA to intercept with.
	redeemReady := redeem.ReadyCheck(state, decider)
	if err := mgr.AddReadyzCheck("egress", func(*http.Request) error {
		return errors.Join(redeemReady(), ca.Ready(), synced("Pod caller index", callers.HasSynced()),
			synced("session targets", targets.HasSynced()), synced("key ring Secret", keyWatch.HasSynced()))
	}); err != nil {
		return fmt.Errorf("adding the readiness check: %w", err)
	}

	setupLog.Info("Starting egress", "namespace", o.namespace, "proxy", o.proxyAddr, "redeem", o.redeemAddr,
		"blindTunnel", o.blind, "upstreamAllowList", o.allowList.String(), "redeemServiceAccounts", o.redeemSAs.String())
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running the egress: %w", err)
	}
	return nil
}

func synced(what string, ok bool) error {
	if ok {
		return nil
	}
	return fmt.Errorf("%s has not synced", what)
}
