package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known labels, annotations and types shared by the controller, the webhook and the egress.
const (
	// SessionLabel selects a pod for the KiloSession of that name (the default pod selector), and labels the
	// capability Secrets the controller writes.
	SessionLabel = "kilo.ai/session"
	// PodUIDLabel labels a capability Secret with the UID of the pod it is bound to.
	PodUIDLabel = "kilo.ai/pod-uid"
	// TokenSourceLabel must be "true" on a Secret before a KiloSession may reference it as a token source. It is
	// the opt-in that stops a KiloSession author from exfiltrating arbitrary Secrets (docs/DESIGN.md §5).
	TokenSourceLabel = "kilo.ai/token-source"
	// CapabilitySecretAnnotation on a pod names the Secret that holds its capability; the webhook chooses the
	// name at admission because the pod's name and UID may not exist yet.
	CapabilitySecretAnnotation = "kilo.ai/capability-secret"
	// InjectContainersAnnotation narrows injection to a comma-separated list of container names.
	InjectContainersAnnotation = "kilo.ai/inject-containers"
	// InjectedAnnotation records what the webhook injected, which makes re-invocation a no-op.
	InjectedAnnotation = "kilo.ai/injected"

	// ReconcileRequestedAnnotation on a KiloSession asks the controller to reconcile it now (any new value does):
	// the KiloSession watch ignores metadata-only updates otherwise. It does not force re-issuance; capabilities
	// are re-issued only when due or when their inputs changed.
	ReconcileRequestedAnnotation = "kilo.ai/reconcile-requested-at"

	// Annotations the controller writes on every capability Secret. They describe the capability without holding
	// it, so renewal and change detection never need to decode the token.
	//
	// IssuedAtAnnotation and ExpiresAtAnnotation are RFC 3339 timestamps (UTC, millisecond precision, as in the
	// token's epoch-millisecond claims).
	IssuedAtAnnotation  = "kilo.ai/issued-at"
	ExpiresAtAnnotation = "kilo.ai/expires-at"
	// KeyFingerprintAnnotation identifies the key-ring key that sealed the token (non-secret fingerprint).
	KeyFingerprintAnnotation = "kilo.ai/key-fingerprint"
	// SourceHashAnnotation is a digest over every input of the token (token Secrets' values, targets, user and
	// session ids, pod UID, sealing-key fingerprint). A changed digest means the token is re-issued at once. It is
	// a one-way digest of inputs the reader of this Secret could read anyway, never the token.
	SourceHashAnnotation = "kilo.ai/source-hash"

	// CapabilitiesFinalizer holds a KiloSession until the controller has deleted its capability Secrets, so that
	// revocation does not wait for the pods' garbage collection.
	CapabilitiesFinalizer = "kilo.ai/capabilities"

	// CapabilitySecretType is the type of every capability Secret.
	CapabilitySecretType = "kilo.ai/capability"
	// CapabilitySecretKey is the data key of the kka1 token in a capability Secret.
	CapabilitySecretKey = "token"
)

// SecretKeyRef names a key of a Secret in the KiloSession's namespace.
type SecretKeyRef struct {
	// name of the Secret. It must carry the label kilo.ai/token-source: "true".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// key in the Secret's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// Targets are the upstream base URLs a capability may be redeemed against. Each must be https (http only when the
// host is exactly localhost, 127.0.0.1 or host.docker.internal), without userinfo, query or fragment, and its
// origin must be in the operator's cluster-wide upstream allow-list. The schema compares the parsed host name, not a
// prefix, so http://localhost.evil.example is refused at admission rather than later as InvalidTargets. (A rule per
// field: one over the list of all three exceeds the API server's CEL cost budget.)
// +kubebuilder:validation:XValidation:rule="[self.backendBaseUrl, self.providerBaseUrl, self.sessionIngestBaseUrl].all(u, !u.contains('?') && !u.contains('#') && !u.contains('@'))",message="target URLs must not contain userinfo, a query or a fragment"
type Targets struct {
	// backendBaseUrl is the Kilo backend API, for example https://api.kilo.ai.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self)",message="backendBaseUrl must be an absolute URL"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || (self.startsWith('http://') && isURL(self) && url(self).getHostname() in ['localhost', '127.0.0.1', 'host.docker.internal'])",message="target URLs must use https (http is allowed only for the hosts localhost, 127.0.0.1 and host.docker.internal)"
	BackendBaseURL string `json:"backendBaseUrl"`

	// providerBaseUrl is the model-provider route base, for example https://api.kilo.ai/api/openrouter.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self)",message="providerBaseUrl must be an absolute URL"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || (self.startsWith('http://') && isURL(self) && url(self).getHostname() in ['localhost', '127.0.0.1', 'host.docker.internal'])",message="target URLs must use https (http is allowed only for the hosts localhost, 127.0.0.1 and host.docker.internal)"
	ProviderBaseURL string `json:"providerBaseUrl"`

	// sessionIngestBaseUrl is the session-ingest service, for example https://ingest.kilosessions.ai.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self)",message="sessionIngestBaseUrl must be an absolute URL"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || (self.startsWith('http://') && isURL(self) && url(self).getHostname() in ['localhost', '127.0.0.1', 'host.docker.internal'])",message="target URLs must use https (http is allowed only for the hosts localhost, 127.0.0.1 and host.docker.internal)"
	SessionIngestBaseURL string `json:"sessionIngestBaseUrl"`
}

// DenyRule refuses backend catch-all requests whose escaped path matches Path, on top of the built-in
// credential-minting deny. Path segments may be "*" (exactly one non-empty segment) and the pattern may end in
// "/**" (the path itself and everything below it).
type DenyRule struct {
	// path pattern, starting with "/".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="deny rule paths must start with /"
	Path string `json:"path"`

	// methods the rule applies to; empty means every method.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	Methods []string `json:"methods,omitempty"`
}

// KiloSessionSpec is what a session's pods may do with the user's Kilo credential.
// +kubebuilder:validation:XValidation:rule="!has(self.renewBefore) || !has(self.capabilityLifetime) || duration(self.renewBefore) < duration(self.capabilityLifetime)",message="renewBefore must be shorter than capabilityLifetime"
// +kubebuilder:validation:XValidation:rule="!has(self.renewBefore) || has(self.capabilityLifetime) || duration(self.renewBefore) < duration('4h')",message="renewBefore must be shorter than capabilityLifetime"
type KiloSessionSpec struct {
	// userId is the Kilo user the session acts for.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	UserID string `json:"userId"`

	// kiloSessionId is the Kilo session the pods belong to. It cannot change after creation.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="kiloSessionId is immutable"
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$')",message="kiloSessionId may contain only letters, digits and - . _ ~, and must not start with a dot"
	KiloSessionID string `json:"kiloSessionId"`

	// userTokenSecretRef points at the user's Kilo token.
	// +required
	UserTokenSecretRef SecretKeyRef `json:"userTokenSecretRef"`

	// providerTokenSecretRef optionally points at a separate token for model-provider routes.
	// +optional
	ProviderTokenSecretRef *SecretKeyRef `json:"providerTokenSecretRef,omitempty"`

	// targets are the upstream base URLs.
	// +required
	Targets Targets `json:"targets"`

	// podSelector selects the session's pods in the namespace. Default: pods labelled kilo.ai/session=<name>.
	// Only pods that carry the kilo.ai/session label (any value) are ever considered: the webhook injects only
	// those, and the manager caches no other pods.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`

	// capabilityLifetime is how long each issued capability lives. Default 4h; between 10m and 4h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10m') && duration(self) <= duration('4h')",message="capabilityLifetime must be between 10m and 4h"
	CapabilityLifetime *metav1.Duration `json:"capabilityLifetime,omitempty"`

	// renewBefore is how long before expiry a capability is renewed. Default a quarter of the lifetime.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="renewBefore must be at least 1m"
	RenewBefore *metav1.Duration `json:"renewBefore,omitempty"`

	// suspend revokes every capability of the session while true.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// backendDenyRules are extra backend paths no capability of this session may reach.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	BackendDenyRules []DenyRule `json:"backendDenyRules,omitempty"`
}

// PodCapabilityStatus is the state of one pod's capability. It never holds the token.
type PodCapabilityStatus struct {
	// name of the pod.
	// +required
	Name string `json:"name"`
	// uid of the pod the capability is bound to.
	// +required
	UID string `json:"uid"`
	// secretName holds the capability.
	// +required
	SecretName string `json:"secretName"`
	// expiresAt is when the current capability expires.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// MaxPodStatuses bounds status.pods so that a session with thousands of pods keeps a small object.
const MaxPodStatuses = 50

// KiloSessionStatus is the observed state of a KiloSession. It never echoes a secret.
type KiloSessionStatus struct {
	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready summarises the others.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// selectedPods counts the pods the selector matches (running or pending).
	// +optional
	SelectedPods int32 `json:"selectedPods,omitempty"`

	// issuedPods counts the pods holding a valid capability.
	// +optional
	IssuedPods int32 `json:"issuedPods,omitempty"`

	// nextRenewal is the earliest time a capability of this session will be renewed.
	// +optional
	NextRenewal *metav1.Time `json:"nextRenewal,omitempty"`

	// pods lists up to 50 pods and their capability Secrets.
	// +optional
	// +kubebuilder:validation:MaxItems=50
	// +listType=atomic
	Pods []PodCapabilityStatus `json:"pods,omitempty"`
}

// KiloSession gives the pods of one Kilo session pod-bound, short-lived capabilities instead of the raw token.
// +kubebuilder:object:root=true
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="KiloSession names must be at most 63 characters: the name is used as the kilo.ai/session label value"
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ks,categories=kilo
// +kubebuilder:printcolumn:name="Session ID",type=string,JSONPath=`.spec.kiloSessionId`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.issuedPods`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Next renewal",type=string,JSONPath=`.status.nextRenewal`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KiloSession struct {
	metav1.TypeMeta `json:",inline"`

	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec KiloSessionSpec `json:"spec"`

	// +optional
	Status KiloSessionStatus `json:"status,omitempty"`
}

// KiloSessionList is a list of KiloSessions.
// +kubebuilder:object:root=true
type KiloSessionList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KiloSession `json:"items"`
}

func init() {
	SchemeBuilder.Register(&KiloSession{}, &KiloSessionList{})
}
