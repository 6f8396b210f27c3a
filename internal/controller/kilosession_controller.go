// Package controller holds the KiloSession reconciler: one capability Secret per session pod, renewed before
// expiry, re-issued when its inputs change and revoked when the pod, the session or the suspension says so.
package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

const (
	// ControllerName names the controller, its event reporter and its field manager.
	ControllerName = "kilosession"

	// tokenSecretIndex indexes KiloSessions by the names of the token Secrets they reference.
	tokenSecretIndex = "spec.tokenSecretRefs.name"

	// defaultWriteConcurrency bounds the capability Secret writes one reconcile has in flight. A session with a
	// thousand pods is one reconcile; writing its Secrets one by one would take a thousand round trips.
	defaultWriteConcurrency = 16

	// conflictRecheck is how soon a session blocked by a foreign Secret looks again. Foreign Secrets are, by
	// design, not in any cache the controller watches, so their removal raises no event.
	conflictRecheck = 2 * time.Minute

	// cacheSyncTimeout bounds the wait for the capability cache to show this pass's own writes.
	cacheSyncTimeout = 10 * time.Second
)

// Event reasons (the Warning reasons are the condition reasons of condition_types.go).
const (
	eventIssued   = "CapabilitiesIssued"
	eventRenewed  = "CapabilitiesRenewed"
	eventReissued = "CapabilitiesReissued"
	eventRevoked  = "CapabilitiesRevoked"
)

// KiloSessionReconciler issues, renews and revokes the capabilities of KiloSessions' pods.
//
// Required: KeyRing. Everything else defaults in SetupWithManager (clients and recorder from the manager, the real
// clock, the default upstream allow-list).
type KiloSessionReconciler struct {
	// Client reads KiloSessions, Pods and token Secrets through the manager's cache and writes everything.
	Client client.Client
	// APIReader reads uncached. It is used only for metadata (never a Secret's data): to tell a missing token
	// Secret from one that is not opted in, and to inspect a name conflict.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	// Recorder emits events; nothing secret ever reaches a note.
	Recorder events.EventRecorder
	// KeyRing seals capabilities. If it also has Changes() <-chan event.GenericEvent (KeyRingSource does), every
	// session is re-examined when the ring changes.
	KeyRing KeyRingProvider
	// AllowList is the cluster-wide upstream allow-list; targets outside it are InvalidTargets.
	AllowList *policy.AllowList
	// Clock is the time source for issuance and renewal; tests inject a fake one.
	Clock clock.PassiveClock
	// MaxConcurrentReconciles is the number of sessions reconciled at once (default 4).
	MaxConcurrentReconciles int
	// WriteConcurrency bounds the Secret writes in flight within one reconcile (default 16).
	WriteConcurrency int
	// WatchNamespaces restricts the controller's private capability Secret cache to these namespaces; set it to
	// the namespaces the manager's cache is restricted to (DefaultNamespaces). Empty means cluster-wide.
	WatchNamespaces []string

	// capabilities is the controller-private cache of capability Secrets (see cache.go).
	capabilities client.Reader
}

// +kubebuilder:rbac:groups=kilo.ai,resources=kilosessions,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=kilo.ai,resources=kilosessions/status,verbs=get;patch
// +kubebuilder:rbac:groups=kilo.ai,resources=kilosessions/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
//
// Secrets, cluster-wide because sessions live in any namespace: get/list/watch for token Secrets (the manager's
// cache holds only those labelled kilo.ai/token-source=true), capability Secrets (labelled kilo.ai/pod-uid) and
// the key ring Secret (by name); create/update/delete for the capability Secrets the controller owns and for
// generating the key ring on first start. No patch: every write is a create or an optimistic-concurrency update.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the reconciler, its field index, its private capability Secret cache and its
// watches with mgr.
func (r *KiloSessionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.KeyRing == nil {
		return errors.New("KiloSessionReconciler needs a KeyRing")
	}
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if r.Scheme == nil {
		r.Scheme = mgr.GetScheme()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder(ControllerName + "-controller")
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.AllowList == nil {
		al, err := policy.ParseAllowList(policy.DefaultAllowList)
		if err != nil {
			return fmt.Errorf("parsing the default upstream allow-list: %w", err)
		}
		r.AllowList = al
	}
	if r.MaxConcurrentReconciles <= 0 {
		r.MaxConcurrentReconciles = 4
	}
	if r.WriteConcurrency <= 0 {
		r.WriteConcurrency = defaultWriteConcurrency
	}
	earliestExpiry.useClock(r.Clock)

	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &kilov1alpha1.KiloSession{}, tokenSecretIndex,
		func(obj client.Object) []string {
			s := obj.(*kilov1alpha1.KiloSession)
			names := []string{s.Spec.UserTokenSecretRef.Name}
			if ref := s.Spec.ProviderTokenSecretRef; ref != nil && ref.Name != s.Spec.UserTokenSecretRef.Name {
				names = append(names, ref.Name)
			}
			return names
		}); err != nil {
		return fmt.Errorf("indexing KiloSessions by token Secret: %w", err)
	}

	capCache, err := newCapabilityCache(mgr, r.WatchNamespaces)
	if err != nil {
		return err
	}
	r.capabilities = capCache

	b := ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		// Spec changes, plus an explicit kilo.ai/reconcile-requested-at. Status and other metadata updates (our
		// own status patches included) are not a reason to reconcile.
		For(&kilov1alpha1.KiloSession{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, reconcileRequested()))).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.sessionsForPod),
			builder.WithPredicates(podChanged())).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.sessionsForTokenSecret)).
		WatchesRawSource(source.Kind[*corev1.Secret](capCache, &corev1.Secret{},
			handler.TypedEnqueueRequestsFromMapFunc(r.sessionForCapabilitySecret))).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles})
	if n, ok := r.KeyRing.(keyRingNotifier); ok {
		b = b.WatchesRawSource(source.Channel(n.Changes(), handler.EnqueueRequestsFromMapFunc(r.allSessions)))
	}
	return b.Complete(r)
}

// observations is what one pass saw and did; the deferred status patch turns it into conditions.
type observations struct {
	tokenSource condition // TokenSourceReady
	targets     condition // TargetsValid
	// blocked is the first reason issuance could not run (key ring, selector); empty when it could.
	blocked condition
	// keyRingPending: the key ring source has not loaded yet; conditions are left as they are.
	keyRingPending bool
	// specError is the user's error that stopped this pass (invalid targets, deny rule or selector). It keeps
	// observedGeneration back even when the pass returns no error to wait for live capabilities to expire.
	specError      error
	suspended      bool
	selected       int32
	issued         int32
	nextRenewal    time.Time
	earliestExpiry time.Time
	pods           []kilov1alpha1.PodCapabilityStatus
	conflicts      []string
	issueErrors    []error
}

type condition struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

func (c condition) set() bool { return c.reason != "" }

// Reconcile brings one KiloSession's capability Secrets in line with its pods and spec.
func (r *KiloSessionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	session := &kilov1alpha1.KiloSession{}
	if err := r.Client.Get(ctx, req.NamespacedName, session); err != nil {
		if apierrors.IsNotFound(err) {
			earliestExpiry.set(req.NamespacedName, time.Time{})
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading KiloSession %s: %w", req.NamespacedName, err)
	}

	if !session.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, session)
	}

	// The finalizer comes first: a capability issued before it is in place could outlive a deleted session.
	if !controllerutil.ContainsFinalizer(session, kilov1alpha1.CapabilitiesFinalizer) {
		patch := client.MergeFromWithOptions(session.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(session, kilov1alpha1.CapabilitiesFinalizer)
		if err := r.Client.Patch(ctx, session, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer to KiloSession %s: %w", req.NamespacedName, err)
		}
	}

	original := session.DeepCopy()
	obs := &observations{}
	defer func() {
		if err := r.patchStatus(ctx, original, session, obs, retErr); err != nil {
			retErr = kerrors.NewAggregate([]error{retErr, err})
			result = ctrl.Result{}
		}
	}()
	return r.reconcileNormal(ctx, session, obs)
}

// reconcileNormal runs the phases of a live session in order: inputs (token Secrets, targets, deny rules, key
// ring), pods, plan, revoke, issue, schedule.
func (r *KiloSessionReconciler) reconcileNormal(ctx context.Context, session *kilov1alpha1.KiloSession, obs *observations) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	now := r.Clock.Now()
	lifetime, renewBefore := lifetimes(&session.Spec)

	subject, err := r.gatherTokens(ctx, session, obs)
	if err != nil {
		return ctrl.Result{}, err
	}
	var terminal error
	if err := r.validateTargets(session, obs); err != nil {
		terminal = err
	}

	var ring *capability.KeyRing
	if obs.tokenSource.status == metav1.ConditionTrue && obs.targets.status == metav1.ConditionTrue {
		var err error
		ring, err = r.KeyRing.KeyRing()
		switch {
		case errors.Is(err, ErrKeyRingNotLoaded):
			// Loading is under way; its first event re-enqueues every session.
			obs.keyRingPending = true
		case err != nil:
			obs.blocked = condition{metav1.ConditionFalse, kilov1alpha1.ReasonKeyRingUnavailable,
				fmt.Sprintf("The operator cannot load its capability key ring, so it issues nothing: %v", err)}
		}
	}

	pods, err := r.selectedPods(ctx, session)
	if err != nil {
		var sel *selectorError
		if !errors.As(err, &sel) {
			return ctrl.Result{}, err
		}
		obs.blocked = condition{metav1.ConditionFalse, kilov1alpha1.ReasonInvalidPodSelector, sel.Error()}
		terminal = errors.Join(terminal, err)
	}
	obs.selected = int32(len(pods))

	var secrets corev1.SecretList
	// Read-only as well: writeCapability copies a Secret before changing it.
	if err := r.capabilities.List(ctx, &secrets, client.InNamespace(session.Namespace), client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing capability Secrets in namespace %s: %w", session.Namespace, err)
	}

	in := planInput{
		now:         now,
		sessionName: session.Name,
		pods:        pods,
		secrets:     ptrs(secrets.Items),
		lifetime:    lifetime,
		renewBefore: renewBefore,
		revokeAll:   session.Spec.Suspend,
	}
	obs.suspended = session.Spec.Suspend
	if ring != nil && !obs.blocked.set() {
		in.inputs = newIssueInputs(ring, subject, lifetime, renewBefore)
	}
	plan := planCapabilities(in)

	written := r.revoke(ctx, session, plan.revoke, obs)
	written = append(written, r.issue(ctx, session, plan.pods, in.inputs, now, obs)...)
	r.waitForCache(ctx, written)

	earliestExpiry.set(client.ObjectKeyFromObject(session), obs.earliestExpiry)
	if in.inputs == nil {
		obs.nextRenewal = time.Time{} // nothing is renewed while issuance is blocked
	}

	if err := errors.Join(obs.issueErrors...); err != nil {
		return ctrl.Result{}, err
	}
	if terminal != nil {
		obs.specError = terminal
		log.V(1).Info("KiloSession spec is invalid; waiting for it to change", "reason", terminal.Error())
		// Capabilities issued under the last valid spec stay until they expire, and the status and the expiry
		// gauge must notice when they do. controller-runtime drops the result of a pass that returns an error, so
		// the error becomes terminal only once nothing is left to wait for.
		if obs.earliestExpiry.After(now) {
			return ctrl.Result{RequeueAfter: obs.earliestExpiry.Sub(now)}, nil
		}
		return ctrl.Result{}, reconcile.TerminalError(terminal)
	}
	result := ctrl.Result{}
	switch {
	case in.inputs == nil:
		// Nothing can be renewed until the blocking input changes, and that change is watched. Pods keep their
		// capabilities until they expire; come back then, only to report them expired.
		if obs.earliestExpiry.After(now) {
			result.RequeueAfter = obs.earliestExpiry.Sub(now)
		}
	case !obs.nextRenewal.IsZero():
		result.RequeueAfter = max(obs.nextRenewal.Sub(now), time.Second)
	}
	if len(obs.conflicts) > 0 && (result.RequeueAfter == 0 || result.RequeueAfter > conflictRecheck) {
		result.RequeueAfter = conflictRecheck
	}
	return result, nil
}

// gatherTokens reads the token Secrets into a Subject (without the pod binding) and records TokenSourceReady.
// A returned error is transient (the API server could not be asked); every user-fixable problem is a condition.
func (r *KiloSessionReconciler) gatherTokens(ctx context.Context, session *kilov1alpha1.KiloSession, obs *observations) (capability.Subject, error) {
	subject := capability.Subject{
		UserID:              session.Spec.UserID,
		CloudAgentSessionID: string(session.UID),
		KiloSessionID:       session.Spec.KiloSessionID,
		Targets: capability.Targets{
			BackendBaseURL:       session.Spec.Targets.BackendBaseURL,
			ProviderBaseURL:      session.Spec.Targets.ProviderBaseURL,
			SessionIngestBaseURL: session.Spec.Targets.SessionIngestBaseURL,
		},
	}
	user, cond, err := r.readToken(ctx, session.Namespace, session.Spec.UserTokenSecretRef, "userTokenSecretRef")
	if err != nil || cond.set() {
		obs.tokenSource = cond
		return subject, err
	}
	subject.UserToken = user
	if ref := session.Spec.ProviderTokenSecretRef; ref != nil {
		provider, cond, err := r.readToken(ctx, session.Namespace, *ref, "providerTokenSecretRef")
		if err != nil || cond.set() {
			obs.tokenSource = cond
			return subject, err
		}
		subject.ProviderToken = provider
	}
	obs.tokenSource = condition{metav1.ConditionTrue, kilov1alpha1.ReasonValid, "Token Secrets exist, are opted in and hold their keys"}
	return subject, nil
}

// readToken returns the value of ref, or a False condition saying what is wrong with it. It reads a Secret's data
// only after seeing the opt-in label; for a Secret outside the manager's cache it asks for metadata only.
func (r *KiloSessionReconciler) readToken(ctx context.Context, namespace string, ref kilov1alpha1.SecretKeyRef, field string) (capability.Secret, condition, error) {
	key := types.NamespacedName{Namespace: namespace, Name: ref.Name}
	var sec corev1.Secret
	err := r.Client.Get(ctx, key, &sec)
	switch {
	case apierrors.IsNotFound(err):
		cond, err := r.explainInvisibleSecret(ctx, key, field)
		return "", cond, err
	case err != nil:
		return "", condition{}, fmt.Errorf("reading token Secret %s (%s): %w", key, field, err)
	}
	// Defence in depth: the manager's cache holds only opted-in Secrets, but a manager built without
	// CacheOptions would hand us any Secret.
	if sec.Labels[kilov1alpha1.TokenSourceLabel] != "true" {
		return "", notAllowed(ref.Name, field), nil
	}
	// Surrounding whitespace is never part of a token, and "kubectl create secret --from-file" keeps the file's
	// trailing newline.
	value := strings.TrimSpace(string(sec.Data[ref.Key]))
	if value == "" {
		return "", condition{metav1.ConditionFalse, kilov1alpha1.ReasonTokenSecretKeyMissing,
			fmt.Sprintf("Secret %s (%s) has no non-empty key %q", ref.Name, field, ref.Key)}, nil
	}
	return capability.Secret(value), condition{}, nil
}

// explainInvisibleSecret tells apart, for a Secret the manager's cache does not hold, "does not exist" from "not
// opted in" with a metadata-only GET: the API server returns labels, never data.
func (r *KiloSessionReconciler) explainInvisibleSecret(ctx context.Context, key types.NamespacedName, field string) (condition, error) {
	missing := condition{metav1.ConditionFalse, kilov1alpha1.ReasonTokenSecretMissing,
		fmt.Sprintf("Secret %s (%s) does not exist", key.Name, field)}
	if r.APIReader == nil {
		missing.message = fmt.Sprintf("Secret %s (%s) does not exist or is not labelled %s=\"true\"", key.Name, field, kilov1alpha1.TokenSourceLabel)
		return missing, nil
	}
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	err := r.APIReader.Get(ctx, key, m)
	switch {
	case apierrors.IsNotFound(err):
		return missing, nil
	case err != nil:
		return condition{}, fmt.Errorf("reading metadata of token Secret %s (%s): %w", key, field, err)
	case m.Labels[kilov1alpha1.TokenSourceLabel] != "true":
		return notAllowed(key.Name, field), nil
	default:
		// Opted in but not in the cache yet: the watch delivers it in a moment and re-enqueues the session.
		missing.message = fmt.Sprintf("Secret %s (%s) is not yet visible to the operator", key.Name, field)
		return missing, nil
	}
}

func notAllowed(name, field string) condition {
	return condition{metav1.ConditionFalse, kilov1alpha1.ReasonTokenSecretNotAllowed,
		fmt.Sprintf("Secret %s (%s) is not labelled %s=\"true\"; only opted-in Secrets can be token sources", name, field, kilov1alpha1.TokenSourceLabel)}
}

// validateTargets runs the policy's target validation, the cluster allow-list and the deny rule syntax, and
// records TargetsValid. The error it returns is the user's to fix.
func (r *KiloSessionReconciler) validateTargets(session *kilov1alpha1.KiloSession, obs *observations) error {
	t := session.Spec.Targets
	parsed, err := policy.ParseTargets(policy.Targets{
		BackendBaseURL:       t.BackendBaseURL,
		ProviderBaseURL:      t.ProviderBaseURL,
		SessionIngestBaseURL: t.SessionIngestBaseURL,
	})
	if err != nil {
		obs.targets = condition{metav1.ConditionFalse, kilov1alpha1.ReasonInvalidTargets, fmt.Sprintf("Invalid targets: %v", err)}
		return fmt.Errorf("validating targets: %w", err)
	}
	for _, origin := range parsed.Origins() {
		if !r.AllowList.Allows(origin) {
			obs.targets = condition{metav1.ConditionFalse, kilov1alpha1.ReasonInvalidTargets,
				fmt.Sprintf("Target origin %s is not in the operator's upstream allow-list; a cluster administrator must add it", origin)}
			return fmt.Errorf("target origin %s is not in the upstream allow-list", origin)
		}
	}
	rules := make([]policy.DenyRule, 0, len(session.Spec.BackendDenyRules))
	for _, rule := range session.Spec.BackendDenyRules {
		rules = append(rules, policy.DenyRule{Path: rule.Path, Methods: rule.Methods})
	}
	if _, err := policy.New(rules); err != nil {
		obs.targets = condition{metav1.ConditionFalse, kilov1alpha1.ReasonInvalidDenyRule, fmt.Sprintf("Invalid backend deny rule: %v", err)}
		return fmt.Errorf("compiling backend deny rules: %w", err)
	}
	obs.targets = condition{metav1.ConditionTrue, kilov1alpha1.ReasonValid, "Targets are valid and inside the upstream allow-list"}
	return nil
}

type selectorError struct{ err error }

func (e *selectorError) Error() string { return fmt.Sprintf("spec.podSelector is invalid: %v", e.err) }
func (e *selectorError) Unwrap() error { return e.err }

// podSelector is the session's effective selector. It always requires the kilo.ai/session label key, whatever
// spec.podSelector says, so that the answer does not depend on whether the manager's Pod cache is restricted.
func podSelector(session *kilov1alpha1.KiloSession) (labels.Selector, error) {
	if session.Spec.PodSelector == nil {
		return labels.SelectorFromSet(labels.Set{kilov1alpha1.SessionLabel: session.Name}), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(session.Spec.PodSelector)
	if err != nil {
		return nil, &selectorError{err}
	}
	return sel.Add(mustRequirement(kilov1alpha1.SessionLabel, selection.Exists)), nil
}

// selectedPods are the pods that should hold a capability: matching, with a UID, not finished, not being deleted.
func (r *KiloSessionReconciler) selectedPods(ctx context.Context, session *kilov1alpha1.KiloSession) ([]*corev1.Pod, error) {
	sel, err := podSelector(session)
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	// Read-only: the cache's own objects, not copies. A session with a thousand pods is listed on every pass, and
	// copying them all each time is most of the controller's CPU. Nothing below mutates a pod.
	if err := r.Client.List(ctx, &list, client.InNamespace(session.Namespace), client.MatchingLabelsSelector{Selector: sel},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing pods of KiloSession %s/%s: %w", session.Namespace, session.Name, err)
	}
	pods := make([]*corev1.Pod, 0, len(list.Items))
	for i := range list.Items {
		if p := &list.Items[i]; wantsCapability(p) {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

func wantsCapability(p *corev1.Pod) bool {
	return p.UID != "" && p.DeletionTimestamp.IsZero() &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// written is a write of this pass the capability cache must reflect before the next pass plans on it.
type written struct {
	key types.NamespacedName
	// resourceVersion is what the cache held before the write ("" when absent); deleted means gone is the goal.
	resourceVersion string
	uid             types.UID
	deleted         bool
}

// revoke deletes capability Secrets. The UID precondition makes sure a Secret re-created under the same name in
// the meantime is not the one deleted.
func (r *KiloSessionReconciler) revoke(ctx context.Context, session *kilov1alpha1.KiloSession, secrets []*corev1.Secret, obs *observations) []written {
	var done []written
	for _, s := range secrets {
		err := r.Client.Delete(ctx, s, client.Preconditions{UID: &s.UID})
		if err != nil && !apierrors.IsNotFound(err) {
			obs.issueErrors = append(obs.issueErrors, fmt.Errorf("revoking capability Secret %s/%s: %w", s.Namespace, s.Name, err))
			continue
		}
		done = append(done, written{key: client.ObjectKeyFromObject(s), uid: s.UID, deleted: true})
	}
	if n := len(done); n > 0 {
		capabilitiesRevoked.Add(float64(n))
		r.Recorder.Eventf(session, nil, corev1.EventTypeNormal, eventRevoked, "Revoke",
			"Revoked the capabilities of %d pod(s)%s", n, suspendedNote(session))
		ctrl.LoggerFrom(ctx).Info("Revoked capabilities", "count", n)
	}
	return done
}

func suspendedNote(s *kilov1alpha1.KiloSession) string {
	if s.Spec.Suspend {
		return ": the session is suspended"
	}
	return ": their pods no longer match, finished or are gone"
}

// issue carries out the pod decisions: it writes the due capabilities (several at once), and records every
// pod's outcome for the status.
func (r *KiloSessionReconciler) issue(ctx context.Context, session *kilov1alpha1.KiloSession, decisions []podDecision, in *issueInputs, now time.Time, obs *observations) []written {
	var (
		mu     sync.Mutex
		done   []written
		counts = map[string]int{}
		wg     sync.WaitGroup
		sem    = make(chan struct{}, r.WriteConcurrency)
	)
	results := make([]kilov1alpha1.PodCapabilityStatus, len(decisions))
	expiries := make([]time.Time, len(decisions))
	renewals := make([]time.Time, len(decisions))
	for i := range decisions {
		d := &decisions[i]
		results[i] = kilov1alpha1.PodCapabilityStatus{Name: d.pod.Name, UID: string(d.pod.UID), SecretName: d.secretName}
		if d.conflict != "" {
			obs.conflicts = append(obs.conflicts, d.conflict)
			continue
		}
		if !d.issue {
			expiries[i], renewals[i] = d.expiresAt, d.renewAt
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			w, expiresAt, conflict, err := r.writeCapability(ctx, session, d, in, now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				obs.issueErrors = append(obs.issueErrors, err)
			case conflict != "":
				obs.conflicts = append(obs.conflicts, conflict)
			default:
				done = append(done, w)
				counts[d.cause]++
				expiries[i], renewals[i] = expiresAt, renewAt(expiresAt, in.renewBefore, d.pod.UID)
			}
		}()
	}
	wg.Wait()

	for i := range results {
		if expiries[i].IsZero() {
			continue
		}
		results[i].ExpiresAt = ptr.To(metav1.NewTime(expiries[i]))
		if expiries[i].After(now) {
			obs.issued++
		}
		if obs.nextRenewal.IsZero() || renewals[i].Before(obs.nextRenewal) {
			obs.nextRenewal = renewals[i]
		}
		if obs.earliestExpiry.IsZero() || expiries[i].Before(obs.earliestExpiry) {
			obs.earliestExpiry = expiries[i]
		}
	}
	if len(results) > kilov1alpha1.MaxPodStatuses {
		results = results[:kilov1alpha1.MaxPodStatuses]
	}
	obs.pods = results

	for _, c := range []struct{ cause, reason, verb string }{
		{causeNew, eventIssued, "Issued capabilities for %d new pod(s)"},
		{causeRenewal, eventRenewed, "Renewed the capabilities of %d pod(s) before expiry"},
		{causeSourceChange, eventReissued, "Re-issued the capabilities of %d pod(s) because the token Secret, targets or sealing key changed"},
	} {
		if n := counts[c.cause]; n > 0 {
			capabilitiesIssued.WithLabelValues(c.cause).Add(float64(n))
			r.Recorder.Eventf(session, nil, corev1.EventTypeNormal, c.reason, "Issue", c.verb, n)
			ctrl.LoggerFrom(ctx).Info("Issued capabilities", "cause", c.cause, "count", n)
		}
	}
	return done
}

// writeCapability seals a capability for d.pod and creates or updates its Secret. A conflict (the name belongs to
// a Secret that is not ours) is returned as a message, not an error: retrying cannot fix it.
func (r *KiloSessionReconciler) writeCapability(ctx context.Context, session *kilov1alpha1.KiloSession, d *podDecision, in *issueInputs, now time.Time) (written, time.Time, string, error) {
	subject := in.subject
	subject.OutboundContainerID = string(d.pod.UID)
	token, claims, err := capability.Issue(in.ring, subject, now, in.lifetime)
	if err != nil {
		// capability errors carry a reason and never token material.
		return written{}, time.Time{}, "", fmt.Errorf("sealing the capability of Pod %s: %w", d.pod.Name, err)
	}
	issuedAt, expiresAt := time.UnixMilli(claims.IssuedAt), time.UnixMilli(claims.ExpiresAt)

	sec := &corev1.Secret{}
	prevRV := ""
	if d.existing != nil {
		// Keep what others put on the Secret (labels, annotations of other tools); replace what is ours.
		sec = d.existing.DeepCopy()
		prevRV = d.existing.ResourceVersion
	}
	sec.Namespace, sec.Name = session.Namespace, d.secretName
	sec.Type = kilov1alpha1.CapabilitySecretType
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[kilov1alpha1.SessionLabel] = session.Name
	sec.Labels[kilov1alpha1.PodUIDLabel] = string(d.pod.UID)
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[kilov1alpha1.IssuedAtAnnotation] = formatTime(issuedAt)
	sec.Annotations[kilov1alpha1.ExpiresAtAnnotation] = formatTime(expiresAt)
	sec.Annotations[kilov1alpha1.KeyFingerprintAnnotation] = in.ring.Fingerprint()
	sec.Annotations[kilov1alpha1.SourceHashAnnotation] = in.sourceHash(d.pod.UID)
	// The pod owns its capability: garbage collection removes the Secret with the pod even if the controller is
	// down. Not a controller reference (the pod does not manage it) and no blockOwnerDeletion (that would need
	// update on pods/finalizers, and nothing should wait for a Secret).
	sec.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: "v1", Kind: "Pod", Name: d.pod.Name, UID: d.pod.UID,
	}}
	sec.Data = map[string][]byte{kilov1alpha1.CapabilitySecretKey: []byte(token)}
	sec.StringData = nil

	key := client.ObjectKeyFromObject(sec)
	if d.existing == nil {
		err = r.Client.Create(ctx, sec, client.FieldOwner(ControllerName))
		if apierrors.IsAlreadyExists(err) {
			return r.onCreateConflict(ctx, session, d)
		}
	} else {
		err = r.Client.Update(ctx, sec, client.FieldOwner(ControllerName))
	}
	if err != nil {
		return written{}, time.Time{}, "", fmt.Errorf("writing capability Secret %s for Pod %s: %w", key, d.pod.Name, err)
	}
	return written{key: key, resourceVersion: prevRV, uid: sec.UID}, expiresAt, "", nil
}

// onCreateConflict handles a create that found the name taken. Either the capability cache has not caught up with
// a Secret this controller wrote (then the next pass sees it; retry) or the Secret is foreign (a conflict). Only
// metadata is read.
func (r *KiloSessionReconciler) onCreateConflict(ctx context.Context, session *kilov1alpha1.KiloSession, d *podDecision) (written, time.Time, string, error) {
	key := types.NamespacedName{Namespace: session.Namespace, Name: d.secretName}
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := r.APIReader.Get(ctx, key, m); err != nil {
		return written{}, time.Time{}, "", fmt.Errorf("reading metadata of existing Secret %s: %w", key, err)
	}
	if m.Labels[kilov1alpha1.SessionLabel] == session.Name && m.Labels[kilov1alpha1.PodUIDLabel] != "" {
		return written{}, time.Time{}, "", fmt.Errorf("capability Secret %s exists but is not in the cache yet; retrying", key)
	}
	return written{}, time.Time{}, fmt.Sprintf("Secret %s already exists and is not this session's capability Secret for Pod %s; it is left untouched", d.secretName, d.pod.Name), nil
}

// waitForCache waits, briefly, until the capability cache shows this pass's writes, so that the next pass (which
// the writes themselves trigger) does not plan on stale state and write twice. A timeout is harmless: a stale
// update fails on its resourceVersion and a stale create is recognised in onCreateConflict.
func (r *KiloSessionReconciler) waitForCache(ctx context.Context, writes []written) {
	if len(writes) == 0 {
		return
	}
	pending := writes
	_ = wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, cacheSyncTimeout, true, func(ctx context.Context) (bool, error) {
		rest := pending[:0]
		for _, w := range pending {
			var s corev1.Secret
			err := r.capabilities.Get(ctx, w.key, &s)
			switch {
			case w.deleted && (apierrors.IsNotFound(err) || (err == nil && s.UID != w.uid)):
			case !w.deleted && err == nil && s.ResourceVersion != w.resourceVersion:
			default:
				rest = append(rest, w)
			}
		}
		pending = rest
		return len(pending) == 0, nil
	})
}

// reconcileDelete revokes every capability of a session being deleted, then releases it. The Secrets are listed
// from the API server (metadata only), not the cache, so that none escapes because the cache lagged.
func (r *KiloSessionReconciler) reconcileDelete(ctx context.Context, session *kilov1alpha1.KiloSession) error {
	earliestExpiry.set(client.ObjectKeyFromObject(session), time.Time{})
	if !controllerutil.ContainsFinalizer(session, kilov1alpha1.CapabilitiesFinalizer) {
		return nil
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("SecretList"))
	if err := r.APIReader.List(ctx, list, client.InNamespace(session.Namespace),
		client.MatchingLabels{kilov1alpha1.SessionLabel: session.Name},
		client.HasLabels{kilov1alpha1.PodUIDLabel}); err != nil {
		return fmt.Errorf("listing capability Secrets of deleted KiloSession %s/%s: %w", session.Namespace, session.Name, err)
	}
	n := 0
	for i := range list.Items {
		m := &list.Items[i]
		if !issuedBy(m, session.Name) {
			continue // look-alike labels on a Secret the controller did not write: not ours to delete
		}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name}}
		if err := r.Client.Delete(ctx, sec, client.Preconditions{UID: &m.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("revoking capability Secret %s/%s of deleted KiloSession: %w", m.Namespace, m.Name, err)
		}
		n++
	}
	if n > 0 {
		capabilitiesRevoked.Add(float64(n))
		r.Recorder.Eventf(session, nil, corev1.EventTypeNormal, eventRevoked, "Revoke",
			"Revoked the capabilities of %d pod(s): the session is being deleted", n)
		ctrl.LoggerFrom(ctx).Info("Revoked capabilities of deleted session", "count", n)
	}
	patch := client.MergeFromWithOptions(session.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(session, kilov1alpha1.CapabilitiesFinalizer)
	if err := r.Client.Patch(ctx, session, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing finalizer from KiloSession %s/%s: %w", session.Namespace, session.Name, err)
	}
	return nil
}

// patchStatus sets every condition the controller owns from this pass's observations and patches the status once.
func (r *KiloSessionReconciler) patchStatus(ctx context.Context, original, session *kilov1alpha1.KiloSession, obs *observations, reconcileErr error) error {
	if obs.keyRingPending {
		return nil // nothing was decided; the key ring's first load re-enqueues this session
	}
	st := &session.Status
	gen := session.Generation
	setCond := func(t string, c condition) {
		if !c.set() {
			return
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: c.status, Reason: c.reason, Message: c.message, ObservedGeneration: gen,
		})
	}
	setCond(kilov1alpha1.TokenSourceReadyCondition, obs.tokenSource)
	setCond(kilov1alpha1.TargetsValidCondition, obs.targets)

	ready := r.readyCondition(obs, reconcileErr)
	setCond(kilov1alpha1.ReadyCondition, ready)

	st.SelectedPods, st.IssuedPods = obs.selected, obs.issued
	st.Pods = obs.pods
	st.NextRenewal = nil
	if !obs.nextRenewal.IsZero() {
		st.NextRenewal = ptr.To(metav1.NewTime(obs.nextRenewal.Truncate(time.Second)))
	}
	// observedGeneration means "this generation was acted on completely"; a pass that failed or stopped on a
	// user error leaves it at the last generation that succeeded.
	if reconcileErr == nil && obs.specError == nil {
		st.ObservedGeneration = gen
	}

	// Warn once per transition into a failure, not on every pass that observes it.
	if ready.status == metav1.ConditionFalse && ready.reason != kilov1alpha1.ReasonSuspended && ready.reason != kilov1alpha1.ReasonProgressing {
		capabilityIssueErrors.WithLabelValues(ready.reason).Inc()
		if prev := meta.FindStatusCondition(original.Status.Conditions, kilov1alpha1.ReadyCondition); prev == nil || prev.Reason != ready.reason {
			r.Recorder.Eventf(session, nil, corev1.EventTypeWarning, ready.reason, "Issue", "%s", eventNote(ready.message))
		}
	}

	if equality.Semantic.DeepEqual(original.Status, session.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, session, client.MergeFrom(original)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("patching status of KiloSession %s/%s: %w", session.Namespace, session.Name, err)
	}
	return nil
}

// readyCondition summarises the pass. The order is the order a user should fix things in: an intentional state
// first, then what blocks every pod, then what blocks some.
func (r *KiloSessionReconciler) readyCondition(obs *observations, reconcileErr error) condition {
	switch {
	case obs.suspended:
		return condition{metav1.ConditionFalse, kilov1alpha1.ReasonSuspended, "The session is suspended; every capability has been revoked"}
	case obs.tokenSource.set() && obs.tokenSource.status != metav1.ConditionTrue:
		return obs.tokenSource
	case obs.targets.set() && obs.targets.status != metav1.ConditionTrue:
		return obs.targets
	case obs.blocked.set():
		return obs.blocked
	case len(obs.conflicts) > 0:
		return condition{metav1.ConditionFalse, kilov1alpha1.ReasonSecretConflict, summarize(obs.conflicts)}
	case len(obs.issueErrors) > 0 || reconcileErr != nil:
		// reconcileErr joins issueErrors when there are any; otherwise it is the one transient error of the pass.
		errs := obs.issueErrors
		if len(errs) == 0 {
			errs = []error{reconcileErr}
		}
		msgs := make([]string, len(errs))
		for i, err := range errs {
			msgs[i] = err.Error()
		}
		return condition{metav1.ConditionFalse, kilov1alpha1.ReasonIssuanceFailed,
			"Writing capability Secrets failed; retrying: " + summarize(msgs)}
	case obs.selected == 0:
		return condition{metav1.ConditionTrue, kilov1alpha1.ReasonNoPods, "No running pod matches the session's pod selector"}
	case obs.issued < obs.selected:
		return condition{metav1.ConditionFalse, kilov1alpha1.ReasonProgressing,
			fmt.Sprintf("%d of %d pods hold a capability", obs.issued, obs.selected)}
	default:
		return condition{metav1.ConditionTrue, kilov1alpha1.ReasonIssued, fmt.Sprintf("All %d pods hold a current capability", obs.selected)}
	}
}

// summarize is one of msgs in full and a count of the others. A condition message is capped at 32 KiB and an
// events.k8s.io note at 1 KiB; a list of every failing pod of a large session would exceed both, and the API
// server would then refuse the status patch and the event outright. The messages are sorted first so that the
// same failures give the same text on every pass (writes run concurrently, so they arrive in any order) and the
// status is not rewritten for nothing.
func summarize(msgs []string) string {
	msgs = slices.Clone(msgs)
	slices.Sort(msgs)
	if len(msgs) == 1 {
		return msgs[0]
	}
	return fmt.Sprintf("%s (and %d more)", msgs[0], len(msgs)-1)
}

// maxEventNote is the events.k8s.io/v1 limit on an event's note; a longer note makes the API server reject the
// event, so the user would see none.
const maxEventNote = 1024

// eventNote cuts msg to fit an event note, on a UTF-8 boundary.
func eventNote(msg string) string {
	if len(msg) <= maxEventNote {
		return msg
	}
	const ellipsis = "…"
	cut := maxEventNote - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + ellipsis
}

// Watch mapping.

// sessionsForPod maps a pod to the sessions in its namespace whose selector matches it. For an update the
// handler calls this with the old and the new pod, so a relabelled pod reaches both its old and its new session.
func (r *KiloSessionReconciler) sessionsForPod(ctx context.Context, obj client.Object) []reconcile.Request {
	if _, ok := obj.GetLabels()[kilov1alpha1.SessionLabel]; !ok {
		return nil
	}
	var sessions kilov1alpha1.KiloSessionList
	if err := r.Client.List(ctx, &sessions, client.InNamespace(obj.GetNamespace())); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Cannot list KiloSessions to map a Pod", "Pod", client.ObjectKeyFromObject(obj))
		return nil
	}
	set := labels.Set(obj.GetLabels())
	var reqs []reconcile.Request
	for i := range sessions.Items {
		s := &sessions.Items[i]
		if sel, err := podSelector(s); err == nil && sel.Matches(set) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(s)})
		}
	}
	return reqs
}

func (r *KiloSessionReconciler) sessionsForTokenSecret(ctx context.Context, obj client.Object) []reconcile.Request {
	var sessions kilov1alpha1.KiloSessionList
	if err := r.Client.List(ctx, &sessions, client.InNamespace(obj.GetNamespace()),
		client.MatchingFields{tokenSecretIndex: obj.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Cannot list KiloSessions to map a token Secret", "Secret", client.ObjectKeyFromObject(obj))
		return nil
	}
	return requestsFor(&sessions)
}

func (r *KiloSessionReconciler) sessionForCapabilitySecret(_ context.Context, s *corev1.Secret) []reconcile.Request {
	name := s.Labels[kilov1alpha1.SessionLabel]
	if name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: name}}}
}

func (r *KiloSessionReconciler) allSessions(ctx context.Context, _ client.Object) []reconcile.Request {
	var sessions kilov1alpha1.KiloSessionList
	if err := r.Client.List(ctx, &sessions); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Cannot list KiloSessions after a key ring change")
		return nil
	}
	return requestsFor(&sessions)
}

// podChanged passes pod updates that can change what the controller does: labels (selection), the capability
// Secret annotation, deletion, a terminal phase or a UID appearing. Status churn (conditions, container states)
// does not reach the queue.
func podChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Pod)
		n, ok2 := e.ObjectNew.(*corev1.Pod)
		if !ok1 || !ok2 {
			return true
		}
		return !equality.Semantic.DeepEqual(o.Labels, n.Labels) ||
			o.Annotations[kilov1alpha1.CapabilitySecretAnnotation] != n.Annotations[kilov1alpha1.CapabilitySecretAnnotation] ||
			o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() ||
			wantsCapability(o) != wantsCapability(n)
	}}
}

// reconcileRequested passes an update that changes kilo.ai/reconcile-requested-at.
func reconcileRequested() predicate.Predicate {
	return predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			a := kilov1alpha1.ReconcileRequestedAnnotation
			return e.ObjectNew.GetAnnotations()[a] != "" && e.ObjectOld.GetAnnotations()[a] != e.ObjectNew.GetAnnotations()[a]
		},
	}
}

func requestsFor(sessions *kilov1alpha1.KiloSessionList) []reconcile.Request {
	reqs := make([]reconcile.Request, 0, len(sessions.Items))
	for i := range sessions.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&sessions.Items[i])})
	}
	return reqs
}

func ptrs[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}
