package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// Outcomes of one admission, the label of the duration histogram.
const (
	outcomeMutated   = "mutated"
	outcomeUnchanged = "unchanged"
	outcomeRefused   = "refused"
	outcomeError     = "error"
)

// Handler is the pod-injection admission handler.
type Handler struct {
	// reader serves the hot path from the manager's informer cache: a KiloSession and a ConfigMap per pod.
	reader client.Reader
	// apiReader confirms a cache miss against the API server before refusing, so that a KiloSession (or the CA
	// ConfigMap) created a moment before its pods — `kubectl apply -f` of one file — is not refused because the
	// watch event has not arrived yet. Refusals are rare, so the extra round trip costs nothing on the hot path.
	apiReader client.Reader
	decoder   admission.Decoder
	cfg       config

	newSecretName func() (string, error)
	observe       func(outcome string, d time.Duration)
}

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, outcome := h.handle(ctx, req)
	h.observe(outcome, time.Since(start))
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	// The registration limits calls to Pod CREATE; anything else reaching this path is allowed untouched rather
	// than mutated in a way nobody asked for.
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed(""), outcomeUnchanged
	}
	pod := &corev1.Pod{}
	if err := h.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding pod: %w", err)), outcomeError
	}
	ns := req.Namespace
	session, ok := pod.Labels[kiloai.SessionLabel]
	if !ok {
		// Only reachable if the objectSelector is edited away; such a pod is not a session pod.
		return admission.Allowed(""), outcomeUnchanged
	}
	if errs := validation.IsDNS1123Subdomain(session); len(errs) > 0 {
		return admission.Denied(fmt.Sprintf("label %s=%q in namespace %q must name a KiloSession: %s",
			kiloai.SessionLabel, truncate(session, 63), ns, errs[0])), outcomeRefused
	}
	if pod.Spec.HostNetwork {
		return admission.Denied(fmt.Sprintf("pod for KiloSession %q in namespace %q uses hostNetwork: the egress identifies session pods by their own IP, which a hostNetwork pod shares with its node",
			session, ns)), outcomeRefused
	}

	ks := &kiloai.KiloSession{}
	if err := h.get(ctx, client.ObjectKey{Namespace: ns, Name: session}, ks); err != nil {
		if apierrors.IsNotFound(err) {
			return admission.Denied(fmt.Sprintf("KiloSession %q not found in namespace %q: create it before pods labelled %s=%s",
				session, ns, kiloai.SessionLabel, session)), outcomeRefused
		}
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("reading KiloSession %s/%s: %w", ns, session, err)), outcomeError
	}
	if !ks.DeletionTimestamp.IsZero() {
		// The controller only revokes for a session being deleted, so this pod's capability would never be
		// issued and its non-optional Secret volume would hold it in ContainerCreating without a word.
		return admission.Denied(fmt.Sprintf("KiloSession %q in namespace %q is being deleted: its pods are refused",
			session, ns)), outcomeRefused
	}
	if ks.Spec.Suspend {
		return admission.Denied(fmt.Sprintf("KiloSession %q in namespace %q is suspended (spec.suspend is true): its pods are refused until it is resumed",
			session, ns)), outcomeRefused
	}

	// The checks above run on every pass; the mutation only once. A re-invocation (reinvocationPolicy IfNeeded,
	// after a later webhook changed the pod) sees its own annotation and leaves the pod — including containers
	// another webhook added since, such as a mesh sidecar, which must not receive the capability.
	if _, done := pod.Annotations[kiloai.InjectedAnnotation]; done {
		return admission.Allowed("already injected"), outcomeUnchanged
	}

	cm := &corev1.ConfigMap{}
	err := h.get(ctx, client.ObjectKey{Namespace: ns, Name: kiloai.CABundleConfigMap}, cm)
	if err != nil && !apierrors.IsNotFound(err) {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("reading ConfigMap %s/%s: %w", ns, kiloai.CABundleConfigMap, err)), outcomeError
	}
	if err != nil || len(cm.Data[kiloai.CABundleKey]) == 0 {
		return admission.Denied(fmt.Sprintf("ConfigMap %q with key %s is missing in namespace %q, so the egress CA cannot be mounted: the operator copies it there for KiloSession %q once the egress has published it; retry shortly",
			kiloai.CABundleConfigMap, kiloai.CABundleKey, ns, session)), outcomeRefused
	}

	ops, warnings, err := plan(pod, &h.cfg, h.newSecretName)
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			return admission.Denied(fmt.Sprintf("pod for KiloSession %q in namespace %q: %s", session, ns, r.msg)), outcomeRefused
		}
		return admission.Errored(http.StatusInternalServerError, err), outcomeError
	}
	logf.FromContext(ctx).V(1).Info("Injecting session pod", "KiloSession", session, "patchOps", len(ops), "warnings", len(warnings))
	return admission.Patched("", ops...).WithWarnings(warnings...), outcomeMutated
}

func (h *Handler) get(ctx context.Context, key client.ObjectKey, obj client.Object) error {
	err := h.reader.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) && h.apiReader != nil {
		return h.apiReader.Get(ctx, key, obj)
	}
	return err
}
