package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A token Secret created with client-side `kubectl apply` and rotated with `kubectl patch` still carries the
// previous token in its last-applied annotation; the manager's cache must not keep that copy.
func TestTokenSecretCacheDropsLastAppliedCopy(t *testing.T) {
	opts := CacheOptions()
	var transform func(any) (any, error)
	for obj, by := range opts.ByObject {
		if _, ok := obj.(*corev1.Secret); ok {
			transform = by.Transform
		}
	}
	if transform == nil {
		t.Fatal("the manager's cache options set no transform for Secrets")
	}

	in := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: "user-token",
			Annotations: map[string]string{
				lastAppliedAnnotation: `{"stringData":{"token":"OLD-TOKEN-CANARY"}}`,
				"team":                "a",
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Data: map[string][]byte{"token": []byte("current")},
	}
	out, err := transform(in)
	if err != nil {
		t.Fatal(err)
	}
	s := out.(*corev1.Secret)
	if _, ok := s.Annotations[lastAppliedAnnotation]; ok {
		t.Error("the last-applied copy (holding the previous token) is still cached")
	}
	if s.Annotations["team"] != "a" {
		t.Error("other annotations must be kept")
	}
	if len(s.ManagedFields) != 0 {
		t.Error("managed fields are still cached")
	}
	if string(s.Data["token"]) != "current" {
		t.Error("the token data itself must be kept: the controller seals it")
	}
}
