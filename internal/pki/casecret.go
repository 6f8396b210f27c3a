package pki

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// ManagedByLabel marks Secrets whose CA this package writes.
const ManagedByLabel = "app.kubernetes.io/managed-by"

// managedByValue is the ManagedByLabel value.
const managedByValue = "kilo-session-operator"

// EnsureCASecret is the reusable "CA in a Secret, created if absent, rotated with overlap" step. It reads the
// Secret key, applies PlanCA at now, writes the Secret back if the plan changed it, and returns the CA state now
// in force and when to call again (also call it when the Secret changes).
//
// Concurrent callers are safe: creation uses Create (AlreadyExists → re-read) and changes use Update with the read
// resourceVersion (Conflict → the caller retries and adopts the winner's CA), so N egress replicas converge on one
// CA without leader election. Data keys other than the CA layout are preserved. The Secret is Opaque; its
// BundleKey (ca.crt) is the public bundle to publish.
func EnsureCASecret(ctx context.Context, c client.Client, key types.NamespacedName, opts CAOptions, now time.Time) (*CAState, time.Time, error) {
	secret := &corev1.Secret{}
	err := c.Get(ctx, key, secret)
	switch {
	case apierrors.IsNotFound(err):
		secret = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: map[string]string{ManagedByLabel: managedByValue}},
			Type:       corev1.SecretTypeOpaque,
		}
	case err != nil:
		return nil, time.Time{}, fmt.Errorf("reading CA Secret %s: %w", key, err)
	}

	cur, err := CAStateFromData(secret.Data)
	if err != nil && !errors.Is(err, ErrNoCA) {
		// A Secret we cannot parse is replaced: keeping it would mean never serving again. The error names the
		// part that failed, never key material.
		logf.FromContext(ctx).Error(err, "CA Secret is unusable; generating a new CA", "Secret", key.String())
		cur = nil
	}
	state, changed, wake, err := PlanCA(cur, now, opts)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("planning CA rotation for Secret %s: %w", key, err)
	}
	if !changed {
		return state, wake, nil
	}
	if err := writeCAData(ctx, c, secret, state, nil); err != nil {
		return nil, time.Time{}, fmt.Errorf("writing CA Secret %s: %w", key, err)
	}
	logf.FromContext(ctx).Info("CA Secret updated", "Secret", key.String(), "signerNotAfter", state.Signer.Cert.NotAfter,
		"announced", state.Next != nil, "retired", len(state.Retired))
	return state, wake, nil
}

// writeCAData merges the CA layout of state (and extra keys) into secret and creates or updates it.
func writeCAData(ctx context.Context, c client.Client, secret *corev1.Secret, state *CAState, extra map[string][]byte) error {
	data, err := state.Data()
	if err != nil {
		return err
	}
	maps.Copy(data, extra)
	if secret.Data == nil {
		secret.Data = map[string][]byte{}
	}
	// Keys of the layout that the new state no longer has (next.* after a promotion) must go.
	for _, k := range []string{NextCertKey, NextKeyKey} {
		if _, ok := data[k]; !ok {
			delete(secret.Data, k)
		}
	}
	maps.Copy(secret.Data, data)
	if secret.ResourceVersion == "" {
		return c.Create(ctx, secret)
	}
	return c.Update(ctx, secret)
}
