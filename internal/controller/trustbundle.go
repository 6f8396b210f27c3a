package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=kilo.ai,resources=kilosessions,verbs=get;list;watch

// TrustBundleManagedLabel marks the ConfigMap copies this reconciler writes; only those are ever deleted.
const TrustBundleManagedLabel = "kilo.ai/trust-bundle"

// TrustBundleReconciler keeps the egress CA bundle (ConfigMap kilo-egress-ca-bundle, key ca.crt) present and
// current in every namespace that has a KiloSession, copied from the ConfigMap of the same name that the egress
// publishes in the operator namespace. The webhook mounts that copy into session pods and refuses pods while it is
// missing, so this is what makes a new session namespace usable. The bundle holds public certificates only.
//
// One reconcile request per namespace (name = the ConfigMap). The source going missing never deletes copies: pods
// already running rely on them and the egress may only be restarting; the copies simply stop being updated.
type TrustBundleReconciler struct {
	client.Client
	// OperatorNamespace holds the source ConfigMap.
	OperatorNamespace string
}

// TrustBundleCacheByObject restricts the manager's ConfigMap informer to ConfigMaps named kilo-egress-ca-bundle
// (the source and its copies), instead of every ConfigMap in the cluster. The webhook reads the same objects.
func TrustBundleCacheByObject() cache.ByObject {
	return cache.ByObject{Field: fields.OneTermEqualSelector("metadata.name", kilov1alpha1.CABundleConfigMap)}
}

// ConfigureTrustBundleCache adds TrustBundleCacheByObject to opts. Call it after DefaultNamespaces is set: when the
// manager watches only some namespaces, the operator namespace is added for ConfigMaps so the source stays visible.
func ConfigureTrustBundleCache(opts *cache.Options, operatorNamespace string) {
	if opts.ByObject == nil {
		opts.ByObject = map[client.Object]cache.ByObject{}
	}
	by := TrustBundleCacheByObject()
	if len(opts.DefaultNamespaces) > 0 {
		by.Namespaces = map[string]cache.Config{operatorNamespace: {}}
		for ns, c := range opts.DefaultNamespaces {
			by.Namespaces[ns] = c
		}
	}
	opts.ByObject[&corev1.ConfigMap{}] = by
}

// SetupWithManager watches KiloSessions (a namespace gains or loses its first session) and the bundle ConfigMaps
// (the source changed → every session namespace; a copy was edited or deleted → that namespace).
func (r *TrustBundleReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.OperatorNamespace == "" {
		return fmt.Errorf("trust bundle reconciler: OperatorNamespace is required")
	}
	isBundle := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == kilov1alpha1.CABundleConfigMap })
	return ctrl.NewControllerManagedBy(mgr).
		Named("trustbundle").
		Watches(&kilov1alpha1.KiloSession{}, handler.EnqueueRequestsFromMapFunc(r.sessionNamespace)).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.bundleNamespaces), builder.WithPredicates(isBundle)).
		Complete(r)
}

func (r *TrustBundleReconciler) sessionNamespace(_ context.Context, o client.Object) []reconcile.Request {
	if o.GetNamespace() == r.OperatorNamespace {
		return nil
	}
	return []reconcile.Request{bundleRequest(o.GetNamespace())}
}

func (r *TrustBundleReconciler) bundleNamespaces(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetNamespace() != r.OperatorNamespace {
		return []reconcile.Request{bundleRequest(o.GetNamespace())}
	}
	sessions := &kilov1alpha1.KiloSessionList{}
	if err := r.List(ctx, sessions); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing KiloSessions to fan out the CA bundle")
		return nil
	}
	seen := map[string]bool{}
	var reqs []reconcile.Request
	for i := range sessions.Items {
		ns := sessions.Items[i].Namespace
		if ns != r.OperatorNamespace && !seen[ns] {
			seen[ns] = true
			reqs = append(reqs, bundleRequest(ns))
		}
	}
	return reqs
}

func bundleRequest(ns string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: kilov1alpha1.CABundleConfigMap}}
}

// Reconcile brings one namespace's copy in line with the source.
func (r *TrustBundleReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ns := req.Namespace
	if ns == r.OperatorNamespace {
		return reconcile.Result{}, nil
	}
	log := ctrl.LoggerFrom(ctx)

	sessions := &kilov1alpha1.KiloSessionList{}
	if err := r.List(ctx, sessions, client.InNamespace(ns)); err != nil {
		return reconcile.Result{}, fmt.Errorf("listing KiloSessions in %s: %w", ns, err)
	}
	current := &corev1.ConfigMap{}
	err := r.Get(ctx, req.NamespacedName, current)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, fmt.Errorf("reading ConfigMap %s: %w", req.NamespacedName, err)
	}
	exists := err == nil

	if len(sessions.Items) == 0 {
		// Last session gone: remove our copy, never a ConfigMap someone else made under that name.
		if exists && current.Labels[TrustBundleManagedLabel] == "true" {
			if err := r.Delete(ctx, current, client.Preconditions{UID: &current.UID}); client.IgnoreNotFound(err) != nil {
				return reconcile.Result{}, fmt.Errorf("deleting ConfigMap %s: %w", req.NamespacedName, err)
			}
			log.Info("Removed the CA bundle from a namespace without KiloSessions", "namespace", ns)
		}
		return reconcile.Result{}, nil
	}

	source := &corev1.ConfigMap{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: r.OperatorNamespace, Name: kilov1alpha1.CABundleConfigMap}, source); err != nil {
		if apierrors.IsNotFound(err) {
			// Waiting on the egress; its ConfigMap's creation event requeues every session namespace.
			log.Info("CA bundle source not published yet", "ConfigMap", r.OperatorNamespace+"/"+kilov1alpha1.CABundleConfigMap)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("reading the CA bundle source: %w", err)
	}
	bundle := source.Data[kilov1alpha1.CABundleKey]
	if bundle == "" {
		log.Info("CA bundle source has no "+kilov1alpha1.CABundleKey+" yet", "ConfigMap", r.OperatorNamespace+"/"+kilov1alpha1.CABundleConfigMap)
		return reconcile.Result{}, nil
	}

	if !exists {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: kilov1alpha1.CABundleConfigMap, Labels: trustBundleLabels()},
			Data:       map[string]string{kilov1alpha1.CABundleKey: bundle},
		}
		if err := r.Create(ctx, cm); err != nil {
			return reconcile.Result{}, fmt.Errorf("creating ConfigMap %s: %w", req.NamespacedName, err)
		}
		log.Info("Published the CA bundle", "namespace", ns)
		return reconcile.Result{}, nil
	}
	if current.Data[kilov1alpha1.CABundleKey] == bundle && len(current.Data) == 1 && len(current.BinaryData) == 0 &&
		current.Labels[TrustBundleManagedLabel] == "true" {
		return reconcile.Result{}, nil
	}
	// The name is reserved for the operator (the webhook mounts it as the pods' trust anchor): a hand-made or
	// edited copy is overwritten, not merged, so that it holds exactly the published bundle.
	updated := current.DeepCopy()
	updated.Data = map[string]string{kilov1alpha1.CABundleKey: bundle}
	updated.BinaryData = nil
	if updated.Labels == nil {
		updated.Labels = map[string]string{}
	}
	for k, v := range trustBundleLabels() {
		updated.Labels[k] = v
	}
	if err := r.Update(ctx, updated); err != nil {
		return reconcile.Result{}, fmt.Errorf("updating ConfigMap %s: %w", req.NamespacedName, err)
	}
	log.Info("Updated the CA bundle", "namespace", ns)
	return reconcile.Result{}, nil
}

func trustBundleLabels() map[string]string {
	return map[string]string{TrustBundleManagedLabel: "true", "app.kubernetes.io/managed-by": "kilo-session-operator"}
}
