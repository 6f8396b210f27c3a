package webhook

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	kiloai "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// Names the webhook adds to a pod. A pod that already uses one of the volume names for something else is refused
// rather than silently given a second name: a reader of the pod spec should find kilo's wiring under these names.
const (
	CapabilityVolume = "kilo-capability"
	CAVolume         = "kilo-ca"
	// SecretNamePrefix starts every capability Secret name the webhook chooses.
	SecretNamePrefix = "kilo-cap-"

	EnvToken          = "KILOCODE_TOKEN"
	EnvTokenFile      = "KILOCODE_TOKEN_FILE"
	EnvNodeExtraCA    = "NODE_EXTRA_CA_CERTS"
	EnvKiloCAFile     = "KILO_CA_FILE"
	injectedVersion   = 1
	maxInjectNamesLen = 4096
)

// envGroup is a set of variables that mean one thing. The proxy variables come in both cases because tools
// disagree on which they read: curl and wget read only the lower-case http_proxy (curl ignores HTTP_PROXY as an
// httpoxy defence), Python and Node's undici prefer lower case, Go reads upper case first. A container that sets
// either spelling has made its own choice, so the whole group is left alone — adding only the other spelling would
// let some tools in the same container use kilo's proxy and others the container's.
type envGroup struct {
	names []string
	vars  []corev1.EnvVar
}

// injection is what one admission decided; it is recorded in kilo.ai/injected.
type injection struct {
	Version        int                 `json:"v"`
	Containers     []string            `json:"containers"`
	InitContainers []string            `json:"initContainers,omitempty"`
	Kept           map[string][]string `json:"kept,omitempty"`
}

// config is the part of Options the planner needs, resolved once at setup.
type config struct {
	proxyURL string
	noProxy  string
}

// refusal is a reason to deny the pod; its text is shown to whoever created the pod.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refusef(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

// plan computes the JSON patch that wires pod to its capability and the egress, the admission warnings, or a
// refusal. It only ever adds: every operation is an "add" of a member the pod does not have, or an append to a
// list, so nothing the pod (or an earlier webhook) set can be changed — including fields this build's k8s.io/api
// does not know, which a marshal-and-diff patch would silently drop under version skew.
func plan(pod *corev1.Pod, cfg *config, newSecretName func() (string, error)) ([]jsonpatch.JsonPatchOperation, []string, error) {
	// Mutating admission runs before validation, so a pod with no spec or no containers reaches us. There is
	// nothing to wire, and the patch's list appends assume a spec to append to: refuse with the reason the API
	// server's validation would give a moment later.
	if len(pod.Spec.Containers) == 0 {
		return nil, nil, refusef("pod has no containers: there is nothing to inject the capability into")
	}
	containers, inits, err := selectContainers(pod)
	if err != nil {
		return nil, nil, err
	}
	secretName := pod.Annotations[kiloai.CapabilitySecretAnnotation]
	if secretName != "" {
		if errs := validation.IsDNS1123Subdomain(secretName); len(errs) > 0 {
			return nil, nil, refusef("annotation %s=%q is not a valid Secret name: %s", kiloai.CapabilitySecretAnnotation, secretName, strings.Join(errs, "; "))
		}
	} else if secretName, err = newSecretName(); err != nil {
		return nil, nil, fmt.Errorf("choosing a capability Secret name: %w", err)
	}

	var ops []jsonpatch.JsonPatchOperation
	var warnings []string

	// Volumes.
	wantVolumes := []corev1.Volume{
		{Name: CapabilityVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secretName,
			Items:      []corev1.KeyToPath{{Key: kiloai.CapabilitySecretKey, Path: kiloai.CapabilitySecretKey}},
			// Not optional: the container starts only once the controller has issued the capability, instead of
			// starting without one and failing its first call.
			Optional: new(false),
		}}},
		{Name: CAVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: kiloai.CABundleConfigMap},
			Items:                []corev1.KeyToPath{{Key: kiloai.CABundleKey, Path: kiloai.CABundleKey}},
			Optional:             new(false),
		}}},
	}
	var addVolumes []corev1.Volume
	for _, want := range wantVolumes {
		existing := findVolume(pod.Spec.Volumes, want.Name)
		switch {
		case existing == nil:
			addVolumes = append(addVolumes, want)
		case sameSource(existing, &want):
			// Already there (a pod copied from an injected one without the annotations): reuse it.
		default:
			return nil, nil, refusef("pod already has a volume named %q that is not kilo's; kilo.ai reserves the volume names %q and %q for its injection",
				want.Name, CapabilityVolume, CAVolume)
		}
	}
	ops = appendList(ops, "/spec/volumes", len(pod.Spec.Volumes), addVolumes)

	// Each mount comes with the variables that point into it: when a container already mounts something of its
	// own at that path, pointing kilo's variables there would describe a file kilo does not control.
	mounts := []struct {
		mount   corev1.VolumeMount
		depends []string
	}{
		// Never a subPath: a subPath mount is a bind of the file at start time and never sees the renewed token.
		{corev1.VolumeMount{Name: CapabilityVolume, MountPath: kiloai.CapabilityMountPath, ReadOnly: true}, []string{EnvTokenFile}},
		{corev1.VolumeMount{Name: CAVolume, MountPath: kiloai.CAMountPath, ReadOnly: true}, []string{EnvNodeExtraCA, EnvKiloCAFile}},
	}
	groups := envGroups(cfg, secretName)

	rec := injection{Version: injectedVersion, Containers: []string{}}
	inject := func(kind string, i int, c *corev1.Container) {
		base := "/spec/" + kind + "/" + strconv.Itoa(i)
		var kept []string
		skip := map[string]bool{}
		var addMounts []corev1.VolumeMount
		for _, m := range mounts {
			if hasMountPath(c.VolumeMounts, m.mount.MountPath) {
				kept = append(kept, m.mount.MountPath)
				warnings = append(warnings, fmt.Sprintf("container %q mounts its own volume at %s; kilo did not mount there nor set %s",
					c.Name, m.mount.MountPath, strings.Join(m.depends, ", ")))
				for _, d := range m.depends {
					skip[d] = true
				}
				continue
			}
			addMounts = append(addMounts, m.mount)
		}
		ops = appendList(ops, base+"/volumeMounts", len(c.VolumeMounts), addMounts)
		var addEnv []corev1.EnvVar
		var keptEnv []string
		for _, g := range groups {
			if set := definedNames(c.Env, g.names); len(set) > 0 {
				keptEnv = append(keptEnv, set...)
				continue
			}
			if skip[g.names[0]] {
				continue
			}
			addEnv = append(addEnv, g.vars...)
		}
		ops = appendList(ops, base+"/env", len(c.Env), addEnv)
		if len(keptEnv) > 0 {
			kept = append(kept, keptEnv...)
			warnings = append(warnings, fmt.Sprintf("container %q keeps its own %s; kilo did not inject them", c.Name, strings.Join(keptEnv, ", ")))
		}
		if len(kept) > 0 {
			if rec.Kept == nil {
				rec.Kept = map[string][]string{}
			}
			rec.Kept[c.Name] = kept
		}
		if len(c.EnvFrom) > 0 {
			// env wins over envFrom in Kubernetes, and the webhook cannot see inside referenced ConfigMaps/Secrets.
			warnings = append(warnings, fmt.Sprintf("container %q uses envFrom: a variable there named like one kilo injects (%s, HTTPS_PROXY, ...) is overridden by kilo's env entry", c.Name, EnvToken))
		}
	}
	for _, i := range inits {
		inject("initContainers", i, &pod.Spec.InitContainers[i])
		rec.InitContainers = append(rec.InitContainers, pod.Spec.InitContainers[i].Name)
	}
	for _, i := range containers {
		inject("containers", i, &pod.Spec.Containers[i])
		rec.Containers = append(rec.Containers, pod.Spec.Containers[i].Name)
	}

	record, err := json.Marshal(rec)
	if err != nil {
		return nil, nil, fmt.Errorf("recording the injection: %w", err)
	}
	annotations := map[string]string{kiloai.InjectedAnnotation: string(record)}
	if pod.Annotations[kiloai.CapabilitySecretAnnotation] == "" {
		annotations[kiloai.CapabilitySecretAnnotation] = secretName
	}
	if pod.Annotations == nil {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations", annotations))
	} else {
		// Fixed order keeps the patch (and the golden files) deterministic.
		for _, k := range []string{kiloai.CapabilitySecretAnnotation, kiloai.InjectedAnnotation} {
			if v, ok := annotations[k]; ok {
				ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escapePointer(k), v))
			}
		}
	}
	return ops, warnings, nil
}

func envGroups(cfg *config, secretName string) []envGroup {
	tokenFile := path.Join(kiloai.CapabilityMountPath, kiloai.CapabilitySecretKey)
	caFile := path.Join(kiloai.CAMountPath, kiloai.CABundleKey)
	pair := func(upper, value string) envGroup {
		lower := strings.ToLower(upper)
		return envGroup{names: []string{upper, lower}, vars: []corev1.EnvVar{{Name: upper, Value: value}, {Name: lower, Value: value}}}
	}
	one := func(name, value string) envGroup {
		return envGroup{names: []string{name}, vars: []corev1.EnvVar{{Name: name, Value: value}}}
	}
	return []envGroup{
		// The env value is fixed at container start and goes stale after a renewal; KILOCODE_TOKEN_FILE is the
		// rotation-aware source. Both exist because existing Kilo tooling reads KILOCODE_TOKEN.
		{names: []string{EnvToken}, vars: []corev1.EnvVar{{Name: EnvToken, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secretName},
			Key:                  kiloai.CapabilitySecretKey,
			Optional:             new(false),
		}}}}},
		one(EnvTokenFile, tokenFile),
		pair("HTTPS_PROXY", cfg.proxyURL),
		pair("HTTP_PROXY", cfg.proxyURL),
		pair("NO_PROXY", cfg.noProxy),
		// Additive trust for Node (the Kilo CLI). SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and
		// GIT_SSL_CAINFO are deliberately not set: each REPLACES the system roots, which would break every TLS
		// connection that is not intercepted (NO_PROXY hosts and tunnelled non-target hosts). KILO_CA_FILE is the
		// hint for images and wrappers that want to append the bundle to their own trust store.
		one(EnvNodeExtraCA, caFile),
		one(EnvKiloCAFile, caFile),
	}
}

// selectContainers returns the indexes of the app and init containers to wire. Default: every app container and
// no init container. The annotation narrows to the named ones (and is the only way to include an init container);
// a name the pod does not have is refused, because a typo would otherwise leave the agent without credentials
// and nobody would notice until its first call failed.
func selectContainers(pod *corev1.Pod) (containers, inits []int, err error) {
	raw, ok := pod.Annotations[kiloai.InjectContainersAnnotation]
	if !ok {
		for i := range pod.Spec.Containers {
			containers = append(containers, i)
		}
		return containers, nil, nil
	}
	if len(raw) > maxInjectNamesLen {
		return nil, nil, refusef("annotation %s is longer than %d characters", kiloai.InjectContainersAnnotation, maxInjectNamesLen)
	}
	seen := map[string]bool{}
	for _, name := range strings.Split(raw, ",") {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		found := false
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == name {
				containers, found = append(containers, i), true
			}
		}
		for i := range pod.Spec.InitContainers {
			if pod.Spec.InitContainers[i].Name == name {
				inits, found = append(inits, i), true
			}
		}
		if !found {
			return nil, nil, refusef("annotation %s names container %q, which the pod does not have", kiloai.InjectContainersAnnotation, truncate(name, 63))
		}
	}
	if len(seen) == 0 {
		return nil, nil, refusef("annotation %s names no container; remove it to inject into every container", kiloai.InjectContainersAnnotation)
	}
	slices.Sort(containers)
	slices.Sort(inits)
	return containers, inits, nil
}

// appendList adds items to the JSON list at p, which currently has n elements.
func appendList[T any](ops []jsonpatch.JsonPatchOperation, p string, n int, items []T) []jsonpatch.JsonPatchOperation {
	if len(items) == 0 {
		return ops
	}
	if n == 0 {
		// The member is absent (or an empty list): "add" creates it whole.
		return append(ops, jsonpatch.NewOperation("add", p, items))
	}
	for _, it := range items {
		ops = append(ops, jsonpatch.NewOperation("add", p+"/-", it))
	}
	return ops
}

func findVolume(vols []corev1.Volume, name string) *corev1.Volume {
	for i := range vols {
		if vols[i].Name == name {
			return &vols[i]
		}
	}
	return nil
}

func sameSource(have, want *corev1.Volume) bool {
	switch {
	case want.Secret != nil:
		return have.Secret != nil && have.Secret.SecretName == want.Secret.SecretName
	case want.ConfigMap != nil:
		return have.ConfigMap != nil && have.ConfigMap.Name == want.ConfigMap.Name
	}
	return false
}

func hasMountPath(mounts []corev1.VolumeMount, p string) bool {
	for _, m := range mounts {
		if path.Clean(m.MountPath) == p {
			return true
		}
	}
	return false
}

func definedNames(env []corev1.EnvVar, names []string) []string {
	var out []string
	for _, n := range names {
		for _, e := range env {
			if e.Name == n {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// escapePointer escapes a JSON pointer token (RFC 6901 §3): "~" → "~0", "/" → "~1".
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// randomSecretName returns SecretNamePrefix and 10 characters of [a-z0-9] from crypto/rand (about 51 bits): a
// name nobody can pre-create to plant a Secret of their own choosing under a victim pod's mount.
func randomSecretName() (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	out := []byte(SecretNamePrefix)
	for _, c := range b {
		// 256 % 36 = 4, so the first four characters are very slightly likelier; irrelevant for uniqueness.
		out = append(out, alphabet[int(c)%len(alphabet)])
	}
	return string(out), nil
}
