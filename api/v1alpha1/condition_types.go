package v1alpha1

// Condition types of a KiloSession.
const (
	// ReadyCondition is True when every selected pod holds a valid capability and nothing blocks issuance.
	ReadyCondition = "Ready"
	// TokenSourceReadyCondition is True when the referenced token Secrets exist, are opted in and hold the keys.
	TokenSourceReadyCondition = "TokenSourceReady"
	// TargetsValidCondition is True when the targets pass the policy's validation and the upstream allow-list.
	TargetsValidCondition = "TargetsValid"
)

// Condition reasons. They are stable API: alerts and scripts match on them.
const (
	// ReasonIssued: every selected pod holds a current capability.
	ReasonIssued = "CapabilitiesIssued"
	// ReasonNoPods: the selector matches no running pod yet.
	ReasonNoPods = "NoPods"
	// ReasonTokenSecretMissing: a referenced token Secret does not exist (or is not visible to the operator).
	ReasonTokenSecretMissing = "TokenSecretMissing"
	// ReasonTokenSecretKeyMissing: the token Secret exists but lacks the referenced key, or the value is empty.
	ReasonTokenSecretKeyMissing = "TokenSecretKeyMissing"
	// ReasonTokenSecretNotAllowed: the Secret lacks the kilo.ai/token-source: "true" opt-in label.
	ReasonTokenSecretNotAllowed = "TokenSecretNotAllowed"
	// ReasonInvalidTargets: a target URL fails validation or leaves the cluster-wide upstream allow-list.
	ReasonInvalidTargets = "InvalidTargets"
	// ReasonInvalidDenyRule: a backend deny rule does not parse.
	ReasonInvalidDenyRule = "InvalidDenyRule"
	// ReasonSuspended: spec.suspend is true and every capability has been revoked.
	ReasonSuspended = "Suspended"
	// ReasonKeyRingUnavailable: the operator cannot load its key ring, so it refuses to issue.
	ReasonKeyRingUnavailable = "KeyRingUnavailable"
	// ReasonIssuanceFailed: writing a capability Secret failed; the controller retries with backoff.
	ReasonIssuanceFailed = "IssuanceFailed"
	// ReasonSecretConflict: a Secret already exists under a pod's capability Secret name and is not this
	// session's capability Secret for that pod; the controller does not overwrite it.
	ReasonSecretConflict = "CapabilitySecretConflict"
	// ReasonInvalidPodSelector: spec.podSelector is not a valid label selector.
	ReasonInvalidPodSelector = "InvalidPodSelector"
	// ReasonProgressing: capabilities are being issued; some selected pods do not hold one yet.
	ReasonProgressing = "Progressing"
	// ReasonValid is the True reason of TokenSourceReady and TargetsValid.
	ReasonValid = "Valid"
)
