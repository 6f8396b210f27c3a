package controller

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

// KeyRingProvider gives the reconciler the key ring to seal capabilities with. An error means "do not issue":
// the reconciler reports it as KeyRingUnavailable and keeps the capabilities it already issued.
type KeyRingProvider interface {
	KeyRing() (*capability.KeyRing, error)
}

// keyRingNotifier is implemented by providers whose ring can change at run time; the reconciler watches Changes
// and re-examines every session (a new sealing key means every capability is re-issued).
type keyRingNotifier interface {
	Changes() <-chan event.GenericEvent
}

// StaticKeyRing is a KeyRingProvider with a fixed ring (tests, or a ring loaded from a file by the caller).
type StaticKeyRing struct{ Ring *capability.KeyRing }

// KeyRing returns the fixed ring, or an error when none was set.
func (s StaticKeyRing) KeyRing() (*capability.KeyRing, error) {
	if s.Ring == nil {
		return nil, errors.New("no key ring configured")
	}
	return s.Ring, nil
}

// ErrKeyRingNotLoaded is what a KeyRingSource returns before it has read its Secret once. The reconciler treats it
// as "come back later" rather than as a failure: the first load re-enqueues every session.
var ErrKeyRingNotLoaded = errors.New("the key ring has not been loaded yet")

// KeyRingSource loads the capability key ring from a Secret (DefaultKeyRingSecret, data key KeyRingSecretKey) and
// keeps it current: it watches that one Secret through a cache scoped to its namespace and name, so no other
// Secret of the operator namespace is read. On start it creates the Secret with a fresh random key when absent,
// so a new installation works without a manual step. It runs on every replica (no leader election): a standby
// that becomes leader must already hold the ring.
type KeyRingSource struct {
	key    types.NamespacedName
	reader client.Reader // uncached, for the first-start existence check
	writer client.Client
	cache  cache.Cache

	mu          sync.RWMutex
	ring        *capability.KeyRing
	err         error
	fingerprint string

	changes chan event.GenericEvent
}

// NewKeyRingSource creates a KeyRingSource for Secret namespace/name and adds it to mgr. Pass it as the reconciler's
// KeyRing.
func NewKeyRingSource(mgr manager.Manager, namespace, name string) (*KeyRingSource, error) {
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultNamespaces: map[string]cache.Config{namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Field: fields.OneTermEqualSelector("metadata.name", name)},
		},
		ReaderFailOnMissingInformer: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the cache for key ring Secret %s/%s: %w", namespace, name, err)
	}
	s := &KeyRingSource{
		key:     types.NamespacedName{Namespace: namespace, Name: name},
		reader:  mgr.GetAPIReader(),
		writer:  mgr.GetClient(),
		cache:   c,
		err:     ErrKeyRingNotLoaded,
		changes: make(chan event.GenericEvent, 1),
	}
	if err := mgr.Add(s); err != nil {
		return nil, fmt.Errorf("adding the key ring source to the manager: %w", err)
	}
	return s, nil
}

// KeyRing returns the current ring, or why there is none.
func (s *KeyRingSource) KeyRing() (*capability.KeyRing, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ring, s.err
}

// Changes delivers an event whenever the ring (or its error) changes. Events coalesce: a reader that is behind
// sees one event for several changes, which is enough because the reader re-reads KeyRing.
func (s *KeyRingSource) Changes() <-chan event.GenericEvent { return s.changes }

// NeedLeaderElection is false: every replica keeps its ring current.
func (s *KeyRingSource) NeedLeaderElection() bool { return false }

// Start ensures the Secret exists, then watches it until ctx ends.
func (s *KeyRingSource) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithValues("Secret", s.key.String())
	if err := EnsureKeyRing(ctx, s.reader, s.writer, s.key.Namespace, s.key.Name); err != nil {
		// Not fatal: the manager keeps serving, sessions show KeyRingUnavailable with this reason, and the watch
		// below picks the Secret up as soon as someone creates it.
		log.Error(err, "Cannot ensure the key ring Secret exists")
		s.set(nil, err)
	}
	inf, err := s.cache.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return fmt.Errorf("watching key ring Secret %s: %w", s.key, err)
	}
	reload := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		s.load(sec)
		if r, err := s.KeyRing(); err != nil {
			log.Error(err, "Key ring Secret cannot be used; issuance is paused")
		} else {
			log.Info("Loaded key ring", "fingerprint", r.Fingerprint())
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    reload,
		UpdateFunc: func(_, obj any) { reload(obj) },
		DeleteFunc: func(any) {
			// Fail closed until a ring exists again: issuing with a key the egress no longer holds would hand
			// out capabilities nobody can redeem. Re-create it, as on first start; the add event loads it and,
			// the sealing key being new, every capability is re-issued.
			s.set(nil, fmt.Errorf("key ring Secret %s was deleted", s.key))
			log.Info("Key ring Secret deleted; generating a new one")
			if err := EnsureKeyRing(ctx, s.reader, s.writer, s.key.Namespace, s.key.Name); err != nil {
				log.Error(err, "Cannot re-create the key ring Secret")
			}
		},
	}); err != nil {
		return fmt.Errorf("watching key ring Secret %s: %w", s.key, err)
	}
	return s.cache.Start(ctx)
}

func (s *KeyRingSource) load(sec *corev1.Secret) {
	data, ok := sec.Data[kilov1alpha1.KeyRingSecretKey]
	if !ok || len(data) == 0 {
		s.set(nil, fmt.Errorf("key ring Secret %s has no data key %q", s.key, kilov1alpha1.KeyRingSecretKey))
		return
	}
	ring, err := capability.ParseKeyRing(data)
	if err != nil {
		// capability errors never carry key material, so err is safe to surface in conditions and logs.
		s.set(nil, fmt.Errorf("parsing key ring Secret %s: %w", s.key, err))
		return
	}
	s.set(ring, nil)
}

// set records the new state and notifies when it differs from the old one (a different sealing key, or a
// different error), so an unrelated update of the Secret does not make every session reconcile.
func (s *KeyRingSource) set(ring *capability.KeyRing, err error) {
	fp := ""
	if ring != nil {
		fp = ring.Fingerprint()
	}
	s.mu.Lock()
	changed := fp != s.fingerprint || (s.err == nil) != (err == nil) || (s.err != nil && err != nil && s.err.Error() != err.Error())
	s.ring, s.err, s.fingerprint = ring, err, fp
	s.mu.Unlock()
	if !changed {
		return
	}
	evt := event.GenericEvent{Object: &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: s.key.Namespace, Name: s.key.Name}}}
	select {
	case s.changes <- evt:
	default: // an event is already pending; it covers this change too
	}
}

// EnsureKeyRing creates Secret namespace/name holding one new random 32-byte key when it does not exist. It never
// touches an existing Secret: rotating keys is an administrator's decision (add the new key first, then remove the
// old one after the longest capability lifetime). Concurrent replicas are safe: the loser of the create race sees
// AlreadyExists and uses the winner's ring.
func EnsureKeyRing(ctx context.Context, reader client.Reader, writer client.Client, namespace, name string) error {
	// A metadata-only read: existence is all we need, and the key stays out of this process until the watch
	// loads it.
	meta := &metav1.PartialObjectMetadata{}
	meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	err := reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, meta)
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading key ring Secret %s/%s: %w", namespace, name, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generating a key ring key: %w", err)
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      name,
			Labels:    map[string]string{"app.kubernetes.io/part-of": "kilo-session-operator"},
			Annotations: map[string]string{
				"kilo.ai/description": "Capability key ring: one base64 32-byte key per line; the first seals, all open. Generated by the manager.",
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{kilov1alpha1.KeyRingSecretKey: []byte(base64.StdEncoding.EncodeToString(key) + "\n")},
	}
	if err := writer.Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating key ring Secret %s/%s: %w", namespace, name, err)
	}
	return nil
}
