package controller

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// Which Secrets the manager may hold in memory, and why it takes two caches.
//
// docs/DESIGN.md §5 promises that the manager neither reads nor keeps any Secret a user did not opt in: a KiloSession
// author who cannot read Secrets must not be able to point the operator at one. The controller still needs two
// disjoint kinds of Secret: token Secrets (labelled kilo.ai/token-source=true by their owner) and the capability
// Secrets it writes (labelled kilo.ai/pod-uid). A label selector is a conjunction, so one informer cannot select
// "token-source=true OR has pod-uid"; the only single-selector way would be to give capability Secrets a value on
// the token-source key, which makes the opt-in label mean two things and lets a session name a capability Secret
// as its token source. So:
//
//   - the manager's cache (CacheOptions) holds only Secrets labelled kilo.ai/token-source=true: these are what
//     the manager's client can read, for the controller and anything else in the manager;
//   - a second, controller-private cache (newCapabilityCache) holds only Secrets labelled kilo.ai/pod-uid, with
//     their data stripped on the way in: the controller decides renewal from annotations and never needs a token
//     back, so no capability sits in the manager's memory.
//
// A Secret with neither label is never listed, watched or read. When a session names such a Secret the controller
// asks the API server for its metadata only (labels, no data) to tell "missing" from "not opted in".

// CacheOptions returns the manager's cache options: Secrets restricted to opted-in token Secrets, and Pods
// restricted to those carrying the kilo.ai/session label (the only pods the webhook injects, so the only pods a
// KiloSession can select). Merge them into the manager's options; other ByObject entries are left alone.
func CacheOptions() cache.Options {
	opts := cache.Options{}
	ConfigureCache(&opts)
	return opts
}

// ConfigureCache adds the controller's ByObject restrictions to opts (see CacheOptions).
func ConfigureCache(opts *cache.Options) {
	if opts.ByObject == nil {
		opts.ByObject = map[client.Object]cache.ByObject{}
	}
	opts.ByObject[&corev1.Secret{}] = cache.ByObject{
		Label:     labels.SelectorFromSet(labels.Set{kilov1alpha1.TokenSourceLabel: "true"}),
		Transform: stripTokenSecret,
	}
	opts.ByObject[&corev1.Pod{}] = cache.ByObject{
		Label:     labels.NewSelector().Add(mustRequirement(kilov1alpha1.SessionLabel, selection.Exists)),
		Transform: cache.TransformStripManagedFields(),
	}
}

// capabilitySecretSelector selects the Secrets the controller writes.
func capabilitySecretSelector() labels.Selector {
	return labels.NewSelector().Add(
		mustRequirement(kilov1alpha1.PodUIDLabel, selection.Exists),
		mustRequirement(kilov1alpha1.SessionLabel, selection.Exists),
	)
}

func mustRequirement(key string, op selection.Operator, vals ...string) labels.Requirement {
	r, err := labels.NewRequirement(key, op, vals)
	if err != nil {
		panic(fmt.Sprintf("label requirement on %s: %v", key, err)) // constant input: a bug, not a runtime state
	}
	return *r
}

// capabilityCache is a cache of capability Secrets only. GetCache puts it in the manager's cache group, so it is
// started (and stopped) with the manager's own cache and before any controller.
type capabilityCache struct{ cache.Cache }

func (c capabilityCache) GetCache() cache.Cache { return c.Cache }

func newCapabilityCache(mgr manager.Manager, namespaces []string) (cache.Cache, error) {
	var defaultNamespaces map[string]cache.Config
	if len(namespaces) > 0 {
		defaultNamespaces = make(map[string]cache.Config, len(namespaces))
		for _, ns := range namespaces {
			defaultNamespaces[ns] = cache.Config{}
		}
	}
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		DefaultNamespaces: defaultNamespaces,
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {
				Label:     capabilitySecretSelector(),
				Transform: stripCapabilitySecret,
			},
		},
		// Anything else through this cache is a programming error, not a reason to start a cluster-wide informer.
		ReaderFailOnMissingInformer: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the capability Secret cache: %w", err)
	}
	if err := mgr.Add(capabilityCache{c}); err != nil {
		return nil, fmt.Errorf("adding the capability Secret cache to the manager: %w", err)
	}
	return c, nil
}

// lastAppliedAnnotation is where client-side `kubectl apply` keeps a full copy of the object it applied. For a
// Secret that copy holds the token in plain text, and after a rotation by `kubectl patch` it still holds the
// previous token.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// stripTokenSecret keeps a token Secret's data (the controller seals it into capabilities) but drops managed
// fields and the last-applied copy before it enters the cache, so a rotated-away token does not live on in the
// manager's memory.
func stripTokenSecret(obj any) (any, error) {
	if s, ok := obj.(*corev1.Secret); ok {
		s.ManagedFields = nil
		if _, ok := s.Annotations[lastAppliedAnnotation]; ok {
			delete(s.Annotations, lastAppliedAnnotation)
		}
	}
	return obj, nil
}

// stripCapabilitySecret drops a capability Secret's data and managed fields before it enters the cache.
func stripCapabilitySecret(obj any) (any, error) {
	if s, ok := obj.(*corev1.Secret); ok {
		s.Data = nil
		s.StringData = nil
		s.ManagedFields = nil
	}
	return obj, nil
}
