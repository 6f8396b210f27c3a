package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/pki"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

// CacheOptions restricts the egress's informer cache to what it needs: session pods only (redeem.CacheOptions),
// and of Secrets only the key ring, by a metadata.name field selector in the operator namespace, so the egress
// neither lists nor holds any other Secret. Managed fields are dropped to keep the pod cache small.
func CacheOptions(opts cache.Options, namespace, keyRingSecret string) cache.Options {
	opts = redeem.CacheOptions(opts)
	opts.ByObject[&corev1.Secret{}] = cache.ByObject{
		Namespaces: map[string]cache.Config{namespace: {}},
		Field:      fields.OneTermEqualSelector("metadata.name", keyRingSecret),
	}
	if opts.DefaultTransform == nil {
		opts.DefaultTransform = cache.TransformStripManagedFields()
	}
	return opts
}

// KeyRingWatcher loads the capability key ring from its Secret and stores every new version into a
// redeem.KeyRingHolder, so a rotation (a new first key) or a removal (a leaked key dropped) applies to the next
// redemption without a restart. A Secret that does not parse leaves the previous ring in force: refusing every
// capability because of a typo would be an outage, and the manager, which writes the Secret, reports it.
type KeyRingWatcher struct {
	key    types.NamespacedName
	holder *redeem.KeyRingHolder
	log    logr.Logger
	reg    toolscache.ResourceEventHandlerRegistration
}

// NewKeyRingWatcher registers on c's Secret informer (restricted by CacheOptions). Call before c.Start.
func NewKeyRingWatcher(ctx context.Context, c cache.Cache, key types.NamespacedName, holder *redeem.KeyRingHolder, log logr.Logger) (*KeyRingWatcher, error) {
	w := &KeyRingWatcher{key: key, holder: holder, log: log}
	inf, err := c.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return nil, fmt.Errorf("getting the Secret informer for key ring %s: %w", key, err)
	}
	w.reg, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.load(o) },
		UpdateFunc: func(_, o any) { w.load(o) },
		DeleteFunc: func(any) {
			w.log.Info("Key ring Secret deleted; keeping the last loaded ring until it is recreated", "Secret", w.key.String())
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watching key ring Secret %s: %w", key, err)
	}
	return w, nil
}

func (w *KeyRingWatcher) load(o any) {
	s, ok := o.(*corev1.Secret)
	if !ok || s.Namespace != w.key.Namespace || s.Name != w.key.Name {
		return
	}
	ring, err := capability.ParseKeyRing(s.Data[kilov1alpha1.KeyRingSecretKey])
	if err != nil {
		// capability errors never carry key material.
		w.log.Error(err, "Key ring Secret does not parse; keeping the previous ring", "Secret", w.key.String())
		return
	}
	w.holder.Store(ring)
	w.log.Info("Loaded capability key ring", "Secret", w.key.String(), "sealingKey", ring.Fingerprint())
}

// HasSynced reports whether the informer delivered its initial list (the ring may still be absent).
func (w *KeyRingWatcher) HasSynced() bool { return w.reg != nil && w.reg.HasSynced() }

// CAManager keeps the interceptor CA: it runs pki.EnsureCASecret (create if absent, rotate with overlap; safe
// across replicas), publishes the public bundle as the CA bundle ConfigMap, and serves the current signer to the
// proxy. Run it on every replica.
type CAManager struct {
	Client    client.Client // uncached: the informer cache holds no Secret but the key ring
	Secret    types.NamespacedName
	ConfigMap types.NamespacedName
	Options   pki.CAOptions
	Log       logr.Logger
	// Resync bounds the time between checks (another replica may have rotated); default 10 minutes.
	Resync time.Duration
	Now    func() time.Time

	signer  atomic.Pointer[pki.CA]
	lastErr atomic.Pointer[error]
}

// CA implements CASource.
func (m *CAManager) CA() LeafIssuer {
	if ca := m.signer.Load(); ca != nil {
		return ca
	}
	return nil
}

// Ready reports why no CA is in force yet.
func (m *CAManager) Ready() error {
	if m.signer.Load() != nil {
		return nil
	}
	if p := m.lastErr.Load(); p != nil {
		return fmt.Errorf("interceptor CA not loaded: %w", *p)
	}
	return errors.New("interceptor CA not loaded yet")
}

// Sync runs one pass and returns when the next one is due.
func (m *CAManager) Sync(ctx context.Context) (time.Time, error) {
	now := time.Now()
	if m.Now != nil {
		now = m.Now()
	}
	state, wake, err := pki.EnsureCASecret(ctx, m.Client, m.Secret, m.Options, now)
	if err != nil {
		return time.Time{}, err
	}
	// Keep the pointer when the signer did not change, so cached leaves stay valid across resyncs.
	if cur := m.signer.Load(); cur == nil || !cur.Cert.Equal(state.Signer.Cert) {
		m.signer.Store(state.Signer)
		m.Log.Info("Interceptor CA in force", "Secret", m.Secret.String(), "notAfter", state.Signer.Cert.NotAfter)
	}
	if err := m.publish(ctx, state.Bundle()); err != nil {
		return time.Time{}, err
	}
	return wake, nil
}

// publish writes the bundle (public certificates only) to the ConfigMap the manager copies to session namespaces.
func (m *CAManager) publish(ctx context.Context, bundle []byte) error {
	cm := &corev1.ConfigMap{}
	err := m.Client.Get(ctx, m.ConfigMap, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: m.ConfigMap.Namespace, Name: m.ConfigMap.Name,
				Labels: map[string]string{pki.ManagedByLabel: "kilo-session-operator"}},
			Data: map[string]string{kilov1alpha1.CABundleKey: string(bundle)},
		}
		if err := m.Client.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating CA bundle ConfigMap %s: %w", m.ConfigMap, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("reading CA bundle ConfigMap %s: %w", m.ConfigMap, err)
	}
	if cm.Data[kilov1alpha1.CABundleKey] == string(bundle) {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[kilov1alpha1.CABundleKey] = string(bundle)
	if err := m.Client.Update(ctx, cm); err != nil {
		return fmt.Errorf("updating CA bundle ConfigMap %s: %w", m.ConfigMap, err)
	}
	return nil
}

// Start implements manager.Runnable: sync now, then at the rotation wake-up or Resync, retrying failures with
// backoff.
func (m *CAManager) Start(ctx context.Context) error {
	resync := m.Resync
	if resync <= 0 {
		resync = 10 * time.Minute
	}
	backoff := time.Second
	for {
		wake, err := m.Sync(ctx)
		var wait time.Duration
		if err != nil {
			m.lastErr.Store(&err)
			m.Log.Error(err, "Syncing the interceptor CA; retrying", "in", backoff.String())
			wait, backoff = backoff, min(backoff*2, time.Minute)
		} else {
			m.lastErr.Store(nil)
			backoff = time.Second
			wait = min(time.Until(wake), resync)
			if wait < time.Second {
				wait = time.Second
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica keeps its own CA view.
func (m *CAManager) NeedLeaderElection() bool { return false }

// ServingCertificate returns a tls.Config GetCertificate that serves leaves for names (the egress Service's DNS
// names), signed by ca and renewed like interception leaves. The first name is used when the client sends no
// SNI or one that is not in names.
func ServingCertificate(ca CASource, names []string, validity time.Duration) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cache := newLeafCache(ca, validity, time.Now)
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		name := names[0]
		for _, n := range names {
			if strings.EqualFold(n, hello.ServerName) {
				name = n
			}
		}
		return cache.get(name)
	}
}

// UpstreamRoots returns the system roots plus the PEM certificates in file (for private upstreams); "" means the
// system roots alone. A file without any certificate is an error, not a silent no-op.
func UpstreamRoots(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading upstream CA bundle: %w", err)
	}
	if !pool.AppendCertsFromPEM(bytes.TrimSpace(pem)) {
		return nil, fmt.Errorf("upstream CA bundle %s holds no PEM certificate", file)
	}
	return pool, nil
}

// Run listens on addr and serves until ctx ends, then shuts down gracefully within shutdownTimeout. It is the
// proxy's manager.Runnable body.
func (p *Proxy) Run(ctx context.Context, addr string, shutdownTimeout time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for proxy connections on %s: %w", addr, err)
	}
	return p.runOn(ctx, ln, shutdownTimeout)
}

func (p *Proxy) runOn(ctx context.Context, ln net.Listener, shutdownTimeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	p.log.Info("Draining proxy connections", "timeout", shutdownTimeout.String())
	err := p.Shutdown(sctx)
	<-errc
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down the proxy: %w", err)
	}
	return nil
}

// RunServer serves srv (the redeem API) on addr until ctx ends, over TLS when srv.TLSConfig is set.
func RunServer(ctx context.Context, srv *http.Server, shutdownTimeout time.Duration) error {
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", srv.Addr, err)
	}
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-errc
	return err
}
