package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// capabilitySecretPrefix starts every capability Secret name the controller derives itself.
const capabilitySecretPrefix = "kilo-cap-"

// CapabilitySecretName is the name of the Secret that holds pod's capability: the name the webhook recorded in the
// pod's kilo.ai/capability-secret annotation, else a name derived from the pod's name. The webhook records the
// name at admission because the volume that mounts the Secret must name it before the pod has a name or UID; the
// derived name covers pods admitted without the webhook (they cannot mount it, but kubectl-kilo and the status
// still find it). An annotation that is not a valid Secret name is an error: such a pod could not mount it either.
func CapabilitySecretName(pod *corev1.Pod) (string, error) {
	if name, ok := pod.Annotations[kilov1alpha1.CapabilitySecretAnnotation]; ok {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return "", fmt.Errorf("annotation %s of Pod %s is not a valid Secret name: %s",
				kilov1alpha1.CapabilitySecretAnnotation, pod.Name, strings.Join(errs, "; "))
		}
		return name, nil
	}
	return DerivedCapabilitySecretName(pod.Name), nil
}

// DerivedCapabilitySecretName is "kilo-cap-<podName>", or, when that would exceed the 253 characters of a Secret
// name, a truncated pod name plus a digest of the full one, so two long pod names that share a prefix still get
// different Secrets. The result is deterministic: the same pod name always maps to the same Secret.
func DerivedCapabilitySecretName(podName string) string {
	name := capabilitySecretPrefix + podName
	if len(name) <= validation.DNS1123SubdomainMaxLength {
		return name
	}
	sum := sha256.Sum256([]byte(podName))
	suffix := "-" + hex.EncodeToString(sum[:])[:10]
	keep := validation.DNS1123SubdomainMaxLength - len(capabilitySecretPrefix) - len(suffix)
	// A pod name is a DNS subdomain, so cutting it can leave a trailing '-' or '.', which may not precede the
	// suffix's '-' (".-" is not a valid label boundary); drop them.
	head := strings.TrimRight(podName[:keep], "-.")
	return capabilitySecretPrefix + head + suffix
}
