package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	admissionregistrationv1ac "k8s.io/client-go/applyconfigurations/admissionregistration/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Defaults of the self-managed webhook certificate; config/webhook uses these names.
const (
	DefaultWebhookSecret        = "kilo-webhook-tls"
	DefaultWebhookConfiguration = "kilo-pod-injector"
	DefaultWebhookService       = "kilo-webhook"
	// DefaultFieldManager owns exactly the caBundle fields of the MutatingWebhookConfiguration, nothing else, so
	// that whoever applies the rest of that object (kubectl, Argo CD, Flux) never conflicts with it.
	DefaultFieldManager = "kilo-webhook-cert-manager"
)

// WebhookCertOptions configure NewWebhookCertManager.
type WebhookCertOptions struct {
	// Namespace of the Secret (the operator namespace). Required.
	Namespace string
	// SecretName holds tls.crt, tls.key (serving pair), ca.crt (trust bundle) and the CA layout. Default
	// DefaultWebhookSecret.
	SecretName string
	// ReadOnly serves whatever the Secret holds and never writes it or the caBundle: the cert-manager mode, where
	// a Certificate writes the Secret and cainjector patches caBundle.
	ReadOnly bool
	// WebhookConfigName is the MutatingWebhookConfiguration whose webhooks get caBundle. Empty disables injection.
	// Default DefaultWebhookConfiguration.
	WebhookConfigName string
	// ServiceName and the Namespace give the default serving names. Default DefaultWebhookService.
	ServiceName string
	// Hosts overrides the serving certificate's names (DNS names or IPs).
	Hosts []string
	// CA configures the webhook CA and its rotation.
	CA CAOptions
	// ServingValidity of the serving certificate. Default 90 days.
	ServingValidity time.Duration
	// ServingRenewBefore: the serving certificate is re-issued this long before it expires. Default 30 days.
	ServingRenewBefore time.Duration
	// FieldManager for the caBundle server-side apply. Default DefaultFieldManager.
	FieldManager string
	// ResyncInterval bounds how long drift (someone wiping caBundle while no event arrives) can last. Default 10m.
	ResyncInterval time.Duration
	// Clock is for tests. Default the real clock.
	Clock clock.WithTicker
}

func (o *WebhookCertOptions) setDefaults() error {
	if o.Namespace == "" {
		return errors.New("webhook certificates: Namespace is required")
	}
	if o.SecretName == "" {
		o.SecretName = DefaultWebhookSecret
	}
	if o.ServiceName == "" {
		o.ServiceName = DefaultWebhookService
	}
	if len(o.Hosts) == 0 {
		o.Hosts = []string{o.ServiceName + "." + o.Namespace + ".svc", o.ServiceName + "." + o.Namespace + ".svc.cluster.local"}
	}
	if o.CA.CommonName == "" {
		o.CA.CommonName = "kilo-session-operator webhook CA"
	}
	o.CA = o.CA.withDefaults()
	if o.ServingValidity == 0 {
		o.ServingValidity = 90 * 24 * time.Hour
	}
	if o.ServingRenewBefore == 0 {
		o.ServingRenewBefore = 30 * 24 * time.Hour
	}
	if o.FieldManager == "" {
		o.FieldManager = DefaultFieldManager
	}
	if o.ResyncInterval == 0 {
		o.ResyncInterval = 10 * time.Minute
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if err := o.CA.Validate(); err != nil {
		return fmt.Errorf("webhook certificates: %w", err)
	}
	if o.ServingRenewBefore >= o.ServingValidity {
		return fmt.Errorf("webhook certificates: serving renewBefore (%s) must be shorter than its validity (%s)", o.ServingRenewBefore, o.ServingValidity)
	}
	// A serving certificate is clipped to its signer's expiry; the signer is replaced at the latest
	// RotateBefore-PromoteAfter before it expires. If that were shorter than ServingRenewBefore a freshly issued,
	// clipped certificate would already be due for renewal and the writer would re-issue in a loop.
	if o.CA.RotateBefore-o.CA.PromoteAfter <= o.ServingRenewBefore {
		return fmt.Errorf("webhook certificates: CA rotateBefore-promoteAfter (%s) must exceed serving renewBefore (%s)",
			o.CA.RotateBefore-o.CA.PromoteAfter, o.ServingRenewBefore)
	}
	return nil
}

// WebhookCertManager serves the webhook's TLS certificate from a Secret, with hot reload, and (unless ReadOnly)
// keeps that Secret and the MutatingWebhookConfiguration's caBundle current.
//
// It is two manager Runnables: a reader on every replica (no leader election) that watches the one Secret and swaps
// the certificate the TLS listener presents on the next handshake, and a writer on the leader only that creates,
// renews and rotates. Serving goes through tls.Config.GetCertificate rather than files in CertDir, so nothing is
// written to the container filesystem and a rotation is visible to the listener as soon as the watch delivers it.
type WebhookCertManager struct {
	opts   WebhookCertOptions
	key    types.NamespacedName
	cache  cache.Cache
	client client.Client

	current atomic.Pointer[tls.Certificate]
	synced  chan struct{}
	poke    chan struct{}
}

// NewWebhookCertManager builds the manager on its own small cache: one Secret by name and one
// MutatingWebhookConfiguration by name. It does not use the controller-runtime manager's cache because that one
// deliberately holds only token-source Secrets (docs/DESIGN.md §5).
func NewWebhookCertManager(cfg *rest.Config, opts WebhookCertOptions) (*WebhookCertManager, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("webhook certificates: building scheme: %w", err)
	}
	byObject := map[client.Object]cache.ByObject{
		&corev1.Secret{}: {
			Namespaces: map[string]cache.Config{opts.Namespace: {}},
			Field:      fields.OneTermEqualSelector("metadata.name", opts.SecretName),
		},
	}
	if opts.WebhookConfigName != "" && !opts.ReadOnly {
		byObject[&admissionregistrationv1.MutatingWebhookConfiguration{}] = cache.ByObject{
			Field: fields.OneTermEqualSelector("metadata.name", opts.WebhookConfigName),
		}
	}
	c, err := cache.New(cfg, cache.Options{Scheme: scheme, ByObject: byObject})
	if err != nil {
		return nil, fmt.Errorf("webhook certificates: building cache: %w", err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("webhook certificates: building client: %w", err)
	}
	registerMetrics()
	return &WebhookCertManager{
		opts:   opts,
		key:    types.NamespacedName{Namespace: opts.Namespace, Name: opts.SecretName},
		cache:  c,
		client: cl,
		synced: make(chan struct{}),
		poke:   make(chan struct{}, 1),
	}, nil
}

// ConfigureTLS is a webhook.Options.TLSOpts entry: the listener presents whatever certificate the reader holds.
func (m *WebhookCertManager) ConfigureTLS(cfg *tls.Config) {
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if c := m.current.Load(); c != nil {
			return c, nil
		}
		return nil, fmt.Errorf("webhook serving certificate from Secret %s is not loaded yet", m.key)
	}
}

// ReadyCheck is a healthz.Checker: ready once a serving certificate is loaded.
func (m *WebhookCertManager) ReadyCheck() healthz.Checker {
	return func(*http.Request) error {
		if m.current.Load() == nil {
			return fmt.Errorf("webhook serving certificate from Secret %s is not loaded yet", m.key)
		}
		return nil
	}
}

// Current returns the certificate being served, or nil.
func (m *WebhookCertManager) Current() *tls.Certificate { return m.current.Load() }

// SetupWithManager adds the reader (every replica) and, unless ReadOnly, the leader-elected writer.
func (m *WebhookCertManager) SetupWithManager(mgr manager.Manager) error {
	if err := mgr.Add(&certReader{m}); err != nil {
		return fmt.Errorf("adding webhook certificate reader: %w", err)
	}
	if m.opts.ReadOnly {
		return nil
	}
	if err := mgr.Add(&certWriter{m}); err != nil {
		return fmt.Errorf("adding webhook certificate writer: %w", err)
	}
	return nil
}

type certReader struct{ m *WebhookCertManager }

func (*certReader) NeedLeaderElection() bool { return false }

func (r *certReader) Start(ctx context.Context) error {
	m := r.m
	log := logf.FromContext(ctx).WithName("webhook-cert-reader")
	cacheErr := make(chan error, 1)
	go func() { cacheErr <- m.cache.Start(ctx) }()
	if !m.cache.WaitForCacheSync(ctx) {
		select {
		case err := <-cacheErr:
			return fmt.Errorf("starting webhook certificate cache: %w", err)
		default:
			return ctx.Err()
		}
	}
	inf, err := m.cache.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return fmt.Errorf("watching Secret %s: %w", m.key, err)
	}
	load := func(obj any) {
		if s, ok := obj.(*corev1.Secret); ok && s.Namespace == m.key.Namespace && s.Name == m.key.Name {
			m.load(log, s)
		}
		m.wake()
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    load,
		UpdateFunc: func(_, obj any) { load(obj) },
		// A deleted Secret keeps the last certificate in service: it is still valid, and the writer recreates the
		// Secret. Dropping it would turn a mistaken delete into refused pods cluster-wide (failurePolicy Fail).
		DeleteFunc: func(any) {
			log.Info("Webhook certificate Secret deleted; serving the last certificate", "Secret", m.key.String())
			m.wake()
		},
	}); err != nil {
		return fmt.Errorf("watching Secret %s: %w", m.key, err)
	}
	close(m.synced)
	select {
	case <-ctx.Done():
		return nil
	case err := <-cacheErr:
		return err
	}
}

func (m *WebhookCertManager) load(log interface {
	Info(string, ...any)
	Error(error, string, ...any)
}, s *corev1.Secret) {
	pair, err := tls.X509KeyPair(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		// Keep the previous certificate: a half-written Secret must not take admission down.
		log.Error(err, "Webhook certificate Secret holds no usable tls.crt/tls.key pair; keeping the current one", "Secret", m.key.String())
		return
	}
	if cur := m.current.Load(); cur != nil && bytes.Equal(cur.Certificate[0], pair.Certificate[0]) {
		return
	}
	m.current.Store(&pair)
	servingNotAfter.Set(float64(pair.Leaf.NotAfter.Unix()))
	log.Info("Serving webhook certificate", "Secret", m.key.String(), "serial", pair.Leaf.SerialNumber.Text(16), "notAfter", pair.Leaf.NotAfter)
}

func (m *WebhookCertManager) wake() {
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

type certWriter struct{ m *WebhookCertManager }

func (*certWriter) NeedLeaderElection() bool { return true }

func (w *certWriter) Start(ctx context.Context) error {
	m := w.m
	log := logf.FromContext(ctx).WithName("webhook-cert-writer")
	ctx = logf.IntoContext(ctx, log)
	select {
	case <-m.synced:
	case <-ctx.Done():
		return nil
	}
	if m.opts.WebhookConfigName != "" {
		inf, err := m.cache.GetInformer(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{})
		if err != nil {
			return fmt.Errorf("watching MutatingWebhookConfiguration %s: %w", m.opts.WebhookConfigName, err)
		}
		poke := func(any) { m.wake() }
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
		}); err != nil {
			return fmt.Errorf("watching MutatingWebhookConfiguration %s: %w", m.opts.WebhookConfigName, err)
		}
	}
	backoff := time.Second
	for {
		wake, err := m.Reconcile(ctx)
		var delay time.Duration
		if err != nil {
			log.Error(err, "Reconciling webhook certificates failed; retrying", "after", backoff)
			delay, backoff = backoff, min(2*backoff, time.Minute)
		} else {
			backoff = time.Second
			delay = min(max(wake.Sub(m.opts.Clock.Now()), time.Second), m.opts.ResyncInterval)
		}
		t := m.opts.Clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.poke:
			t.Stop()
		case <-t.C():
		}
	}
}

// Reconcile performs one pass of the writer: create, renew or rotate the Secret, then make caBundle match its
// bundle. It returns when the next pass is due. It is exported for tests and for tools that want a one-shot run.
func (m *WebhookCertManager) Reconcile(ctx context.Context) (time.Time, error) {
	now := m.opts.Clock.Now()
	log := logf.FromContext(ctx)
	secret := &corev1.Secret{}
	// Read from the API, not the cache: this is the leader's read-modify-write and a stale read would only buy a
	// conflict.
	err := m.client.Get(ctx, m.key, secret)
	switch {
	case apierrors.IsNotFound(err):
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: m.key.Namespace, Name: m.key.Name, Labels: map[string]string{ManagedByLabel: managedByValue}},
			Type:       corev1.SecretTypeTLS,
		}
	case err != nil:
		return time.Time{}, fmt.Errorf("reading webhook certificate Secret %s: %w", m.key, err)
	}
	cur, err := CAStateFromData(secret.Data)
	if err != nil && !errors.Is(err, ErrNoCA) {
		log.Error(err, "Webhook CA in Secret is unusable; generating a new CA", "Secret", m.key.String())
		cur = nil
	}
	state, caChanged, wake, err := PlanCA(cur, now, m.opts.CA)
	if err != nil {
		return time.Time{}, fmt.Errorf("planning webhook CA rotation: %w", err)
	}
	renewAt, reissue := m.servingRenewal(secret.Data, state, now)
	var extra map[string][]byte
	if reissue {
		leaf, err := state.Signer.IssueLeaf(m.opts.Hosts, m.opts.ServingValidity, now)
		if err != nil {
			return time.Time{}, fmt.Errorf("issuing webhook serving certificate: %w", err)
		}
		certPEM, keyPEM, err := EncodeTLSCertificate(leaf)
		if err != nil {
			return time.Time{}, fmt.Errorf("encoding webhook serving certificate: %w", err)
		}
		extra = map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM}
		renewAt = leaf.Leaf.NotAfter.Add(-m.opts.ServingRenewBefore)
	}
	if caChanged || reissue {
		if err := writeCAData(ctx, m.client, secret, state, extra); err != nil {
			return time.Time{}, fmt.Errorf("writing webhook certificate Secret %s: %w", m.key, err)
		}
		log.Info("Webhook certificate Secret updated", "Secret", m.key.String(), "caChanged", caChanged,
			"servingReissued", reissue, "announcedCA", state.Next != nil, "retiredCAs", len(state.Retired))
	}
	if renewAt.Before(wake) {
		wake = renewAt
	}
	if err := m.injectCABundle(ctx, state.Bundle()); err != nil {
		return time.Time{}, err
	}
	return wake, nil
}

// servingRenewal reports when the serving pair in data is due and whether it must be re-issued now: missing or
// broken, not signed by the current signer (after a promotion), for other names, or within ServingRenewBefore of
// expiry.
func (m *WebhookCertManager) servingRenewal(data map[string][]byte, state *CAState, now time.Time) (time.Time, bool) {
	pair, err := tls.X509KeyPair(data[corev1.TLSCertKey], data[corev1.TLSPrivateKeyKey])
	if err != nil || pair.Leaf == nil {
		return time.Time{}, true
	}
	leaf := pair.Leaf
	if leaf.CheckSignatureFrom(state.Signer.Cert) != nil {
		return time.Time{}, true
	}
	have := make([]string, 0, len(leaf.DNSNames)+len(leaf.IPAddresses))
	have = append(have, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		have = append(have, ip.String())
	}
	if !slices.Equal(normalizeHosts(have), normalizeHosts(m.opts.Hosts)) {
		return time.Time{}, true
	}
	renewAt := leaf.NotAfter.Add(-m.opts.ServingRenewBefore)
	return renewAt, !now.Before(renewAt)
}

func normalizeHosts(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		}
		out = append(out, strings.ToLower(h))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// injectCABundle server-side applies caBundle on every webhook of the configuration, and nothing else. The apply
// configuration names each webhook (the list's map key) and its clientConfig.caBundle only, so this field manager
// owns those fields alone and an apply of the rest of the object by GitOps neither conflicts nor shows drift.
// ForceOwnership takes caBundle over from whoever set it before (an older install, envtest, a manual patch).
func (m *WebhookCertManager) injectCABundle(ctx context.Context, bundle []byte) error {
	name := m.opts.WebhookConfigName
	if name == "" {
		return nil
	}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := m.cache.Get(ctx, client.ObjectKey{Name: name}, mwc); err != nil {
		if apierrors.IsNotFound(err) {
			// Installed later (or by another tool): its creation event wakes the writer.
			logf.FromContext(ctx).Info("MutatingWebhookConfiguration not found; caBundle will be set when it appears", "name", name)
			return nil
		}
		return fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", name, err)
	}
	stale := false
	for _, wh := range mwc.Webhooks {
		stale = stale || !bytes.Equal(wh.ClientConfig.CABundle, bundle)
	}
	if !stale {
		return nil
	}
	ac := admissionregistrationv1ac.MutatingWebhookConfiguration(name)
	for _, wh := range mwc.Webhooks {
		ac.WithWebhooks(admissionregistrationv1ac.MutatingWebhook().WithName(wh.Name).
			WithClientConfig(admissionregistrationv1ac.WebhookClientConfig().WithCABundle(bundle...)))
	}
	if err := m.client.Apply(ctx, ac, client.FieldOwner(m.opts.FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying caBundle to MutatingWebhookConfiguration %s: %w", name, err)
	}
	logf.FromContext(ctx).Info("caBundle applied", "MutatingWebhookConfiguration", name, "webhooks", len(mwc.Webhooks))
	return nil
}

var (
	servingNotAfter = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kilo_webhook_serving_certificate_expiry_timestamp_seconds",
		Help: "NotAfter of the webhook serving certificate this replica presents, as a Unix timestamp.",
	})
	registerOnce sync.Once
)

func registerMetrics() {
	registerOnce.Do(func() { metrics.Registry.MustRegister(servingNotAfter) })
}
