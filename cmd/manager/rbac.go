package main

// RBAC for what this binary wires in from packages that carry no markers of their own. controller-gen reads these
// into config/rbac/role.yaml (make manifests).
//
// Self-managed webhook certificates (internal/pki): the leader patches the caBundle of the one
// MutatingWebhookConfiguration it serves, through a cache that lists and watches it by name. resourceNames pins the
// default name; a renamed configuration (--webhook-config-name) needs the same rule for its name.
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=kilo-pod-injector,verbs=get;list;watch;patch
