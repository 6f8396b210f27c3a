package redeem

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

// UIDIndex is the field index InformerState registers on Pods and KiloSessions, for callers that want to look an
// object up by UID through the cache's client (client.MatchingFields{UIDIndex: uid}). The redeem hot path does
// not use it: a cache List deep-copies and allocates, while State lookups are one map read.
const UIDIndex = "metadata.uid"

// SessionPodSelector selects session pods: every pod the webhook injected carries the kilo.ai/session label, so
// the egress caches only those and never the rest of the cluster's pods.
func SessionPodSelector() labels.Selector {
	req, err := labels.NewRequirement(kilov1alpha1.SessionLabel, selection.Exists, nil)
	if err != nil {
		// The label key is a compile-time constant that is a valid key; this cannot fail.
		panic(fmt.Sprintf("building the session pod selector: %v", err))
	}
	return labels.NewSelector().Add(*req)
}

// CacheOptions returns opts with Pods restricted to session pods (SessionPodSelector). Use it to build the
// cache handed to NewInformerState; a front door that also needs pods (the egress, by IP) shares the same cache.
func CacheOptions(opts cache.Options) cache.Options {
	byObject := make(map[client.Object]cache.ByObject, len(opts.ByObject)+1)
	for k, v := range opts.ByObject {
		byObject[k] = v
	}
	byObject[&corev1.Pod{}] = cache.ByObject{Label: SessionPodSelector()}
	opts.ByObject = byObject
	return opts
}

// InformerStateOptions configure NewInformerState.
type InformerStateOptions struct {
	// DenyRules are the operator-wide backend deny rules, compiled into every session's policy.
	DenyRules []policy.DenyRule
	Logger    logr.Logger
}

// InformerState is the State of the egress: it follows Pods and KiloSessions through informers of a
// controller-runtime cache and keeps what the decision needs in memory, so a delete or a suspend revokes the
// next redemption and a redemption costs no API call.
type InformerState struct {
	*MemoryState
	operatorRules []policy.DenyRule
	log           logr.Logger
	synced        []toolscache.ResourceEventHandlerRegistration
}

// NewInformerState registers informers, UID indexes and event handlers for Pods and KiloSessions on c. Call it
// before c.Start; the State is complete once HasSynced reports true. The cache's scheme must know core/v1 and
// kilo.ai/v1alpha1, and Pods should be restricted with CacheOptions.
func NewInformerState(ctx context.Context, c cache.Cache, opts InformerStateOptions) (*InformerState, error) {
	if _, err := policy.New(opts.DenyRules); err != nil {
		return nil, fmt.Errorf("compiling the operator deny rules: %w", err)
	}
	s := &InformerState{MemoryState: NewMemoryState(), operatorRules: opts.DenyRules, log: opts.Logger}
	uidOf := func(o client.Object) []string { return []string{string(o.GetUID())} }
	for _, obj := range []client.Object{&corev1.Pod{}, &kilov1alpha1.KiloSession{}} {
		if err := c.IndexField(ctx, obj, UIDIndex, uidOf); err != nil {
			return nil, fmt.Errorf("indexing %T by UID: %w", obj, err)
		}
	}

	podInf, err := c.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return nil, fmt.Errorf("getting the Pod informer: %w", err)
	}
	reg, err := podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.upsertPod(obj) },
		UpdateFunc: func(_, obj any) { s.upsertPod(obj) },
		DeleteFunc: func(obj any) { s.deletePod(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching Pods: %w", err)
	}
	s.synced = append(s.synced, reg)

	ksInf, err := c.GetInformer(ctx, &kilov1alpha1.KiloSession{})
	if err != nil {
		return nil, fmt.Errorf("getting the KiloSession informer: %w", err)
	}
	reg, err = ksInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.upsertSession(obj) },
		UpdateFunc: func(_, obj any) { s.upsertSession(obj) },
		DeleteFunc: func(obj any) { s.deleteSession(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching KiloSessions: %w", err)
	}
	s.synced = append(s.synced, reg)
	return s, nil
}

// HasSynced reports whether both informers have delivered their initial lists to this State. Until then a
// missing pod or session may only be not-yet-seen, so /readyz stays false.
func (s *InformerState) HasSynced() bool {
	for _, r := range s.synced {
		if !r.HasSynced() {
			return false
		}
	}
	return len(s.synced) > 0
}

func tombstone(obj any) any {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func (s *InformerState) upsertPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	s.SetPod(string(pod.UID), PodState{
		Namespace:   pod.Namespace,
		SessionName: pod.Labels[kilov1alpha1.SessionLabel],
		Live: pod.DeletionTimestamp == nil &&
			pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed,
	})
}

func (s *InformerState) deletePod(obj any) {
	if pod, ok := tombstone(obj).(*corev1.Pod); ok {
		s.DeletePod(string(pod.UID))
	}
}

func (s *InformerState) upsertSession(obj any) {
	ks, ok := obj.(*kilov1alpha1.KiloSession)
	if !ok {
		return
	}
	rules := make([]policy.DenyRule, 0, len(ks.Spec.BackendDenyRules))
	for _, r := range ks.Spec.BackendDenyRules {
		rules = append(rules, policy.DenyRule{Path: r.Path, Methods: r.Methods})
	}
	p, err := CompilePolicy(s.operatorRules, rules)
	if err != nil {
		// CEL admits rules the compiler may still reject; the session's redemptions then fail closed.
		s.log.Info("KiloSession deny rules do not compile; refusing its redemptions",
			"KiloSession", ks.Namespace+"/"+ks.Name, "error", err.Error())
		err = fmt.Errorf("compiling the deny rules of KiloSession %s/%s: %w", ks.Namespace, ks.Name, err)
	}
	s.SetSession(string(ks.UID), SessionState{
		Namespace: ks.Namespace, Name: ks.Name, Suspended: ks.Spec.Suspend, Policy: p, PolicyErr: err,
	})
}

func (s *InformerState) deleteSession(obj any) {
	if ks, ok := tombstone(obj).(*kilov1alpha1.KiloSession); ok {
		s.DeleteSession(string(ks.UID))
	}
}
