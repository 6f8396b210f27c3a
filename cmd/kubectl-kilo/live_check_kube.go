package main

import (
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// kubeFlags are the cluster-access flags shared by the subcommands that read live objects (status, live check).
// They follow kubectl's names so `kubectl kilo …` behaves like any other kubectl command.
type kubeFlags struct {
	kubeconfig string
	context    string
	namespace  string
	timeout    time.Duration
}

func (k *kubeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&k.context, "context", "", "kubeconfig context to use (default: the current context)")
	fs.StringVar(&k.namespace, "namespace", "", "namespace of the KiloSession (default: the context's namespace)")
	fs.StringVar(&k.namespace, "n", "", "shorthand for --namespace")
	fs.DurationVar(&k.timeout, "request-timeout", 30*time.Second, "timeout for the whole command's API requests")
}

// client builds a read-only-in-practice client and resolves the namespace the way kubectl does: the flag, else the
// context's namespace, else "default".
func (k *kubeFlags) client() (client.Client, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if k.kubeconfig != "" {
		rules.ExplicitPath = k.kubeconfig
	}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: k.context}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.Timeout = k.timeout
	ns := k.namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, "", fmt.Errorf("resolving the namespace from kubeconfig: %w", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, "", fmt.Errorf("building the scheme: %w", err)
	}
	if err := kilov1alpha1.AddToScheme(scheme); err != nil {
		return nil, "", fmt.Errorf("building the scheme: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("creating the API client: %w", err)
	}
	return c, ns, nil
}

// parseInterleaved parses flags that may appear before, between or after positional arguments (kubectl style:
// `status NAME -n NS` and `status -n NS NAME` both work). Everything after "--" is positional, byte for byte.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		// flag.Parse stops at the first non-flag or after "--"; find out which by looking at what it consumed.
		consumed := args[:len(args)-len(rest)]
		if len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// sessionSelectorString renders the pod selector a session uses, defaulting as the controller does.
func sessionSelectorString(ks *kilov1alpha1.KiloSession) string {
	if ks.Spec.PodSelector == nil {
		return kilov1alpha1.SessionLabel + "=" + ks.Name
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(ks.Spec.PodSelector.MatchLabels)) {
		parts = append(parts, k+"="+ks.Spec.PodSelector.MatchLabels[k])
	}
	for _, e := range ks.Spec.PodSelector.MatchExpressions {
		parts = append(parts, fmt.Sprintf("%s %s (%s)", e.Key, strings.ToLower(string(e.Operator)), strings.Join(e.Values, ",")))
	}
	return strings.Join(parts, ", ")
}
