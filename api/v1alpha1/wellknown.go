package v1alpha1

// Defaults shared by the manager, the egress, the webhook and kubectl-kilo. Each is overridable by a flag; these
// are the names the kustomize manifests use.
const (
	// DefaultOperatorNamespace is where the manager and the egress run.
	DefaultOperatorNamespace = "kilo-system"

	// DefaultKeyRingSecret holds the capability key ring (data key KeyRingSecretKey: one base64 32-byte key per
	// line, the first seals). The manager generates it on first start when absent; the egress reads it.
	DefaultKeyRingSecret = "kilo-capability-keys"
	// KeyRingSecretKey is the data key of the key ring in DefaultKeyRingSecret.
	KeyRingSecretKey = "keys"

	// DefaultEgressCASecret holds the egress interceptor's CA (certificate and private key), in the operator
	// namespace. Only the egress reads it.
	DefaultEgressCASecret = "kilo-egress-ca"
	// CABundleConfigMap is the public CA bundle (data key CABundleKey): the egress publishes it in the operator
	// namespace, and the manager copies it into every namespace that has a KiloSession, where the webhook mounts it.
	CABundleConfigMap = "kilo-egress-ca-bundle"
	// CABundleKey is the data key of the PEM bundle in CABundleConfigMap (current and, during rotation, next CA).
	CABundleKey = "ca.crt"

	// DefaultEgressService is the egress Service name; pods reach the proxy at <service>.<namespace>.svc:ProxyPort.
	DefaultEgressService = "kilo-egress"
	// DefaultProxyPort is the egress interceptor's HTTP proxy port.
	DefaultProxyPort = 3128
	// DefaultRedeemPort is the redeem API's port.
	DefaultRedeemPort = 8443

	// CapabilityMountPath is where the capability Secret is mounted (file CapabilitySecretKey inside).
	CapabilityMountPath = "/var/run/kilo/capability"
	// CAMountPath is where the CA bundle ConfigMap is mounted (file CABundleKey inside).
	CAMountPath = "/var/run/kilo/ca"
)
