package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
	"github.com/Kilo-Org/kilo-session-operator/internal/redeem"
)

const liveCheckUsage = `usage: kubectl kilo check [-n NAMESPACE] NAME [--method M] [--bootstrap-session ID]
                          [--upstream-allowlist ORIGINS] [--kubeconfig F] [--context C] [--] URL

The live form of check: reads the targets, kiloSessionId, provider-token presence and backend deny rules from the
KiloSession NAME and answers what the egress would answer a pod of that session asking for URL now: revoked when
the session is suspended, refused when its targets were rejected, else the policy's decision. With
--upstream-allowlist (comma-separated origins, as given to the manager) the URL's origin is checked against it too.
Prints one JSON line: {"allowed":true,"routeClass":…,"credential":…} exit 0, or {"allowed":false,"reason":…,
"detail":…} exit 1. Usage and API errors exit 2.
The offline form needs no cluster: kubectl kilo check --targets-file F --session ID [--] URL.
`

// isLiveCheck tells the two forms of `check` apart: the offline form always names a --targets-file, the live form
// never does. Only flags before "--" count, so a URL can never switch forms.
func isLiveCheck(args []string) bool {
	for _, a := range args {
		if a == "--" {
			break
		}
		name := strings.TrimLeft(a, "-")
		if strings.HasPrefix(a, "-") && (name == "targets-file" || strings.HasPrefix(name, "targets-file=")) {
			return false
		}
	}
	return true
}

func runLiveCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, liveCheckUsage) }
	var kf kubeFlags
	kf.register(fs)
	method := fs.String("method", "GET", "HTTP method of the request")
	bootstrap := fs.String("bootstrap-session", "", "bootstrap session id (the POST …/api/session bootstrap call)")
	allow := fs.String("upstream-allowlist", "", "comma-separated upstream origins the manager and egress allow (optional)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != 2 || pos[0] == "" {
		fmt.Fprint(stderr, "kubectl-kilo check: the live form takes a KiloSession name and a URL\n\n"+liveCheckUsage)
		return 2
	}
	name, rawURL := pos[0], pos[1]

	var allowList *policy.AllowList
	if *allow != "" {
		if allowList, err = policy.ParseAllowList(splitList(*allow)); err != nil {
			fmt.Fprintf(stderr, "kubectl-kilo check: --upstream-allowlist: %v\n", err)
			return 2
		}
	}

	c, ns, err := kf.client()
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo check: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), kf.timeout)
	defer cancel()
	var ks kilov1alpha1.KiloSession
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &ks); err != nil {
		if apierrors.IsNotFound(err) {
			fmt.Fprintf(stderr, "kubectl-kilo check: KiloSession %s/%s not found\n", ns, name)
		} else {
			fmt.Fprintf(stderr, "kubectl-kilo check: getting KiloSession %s/%s: %v\n", ns, name, err)
		}
		return 2
	}
	return writeAnswer(stdout, liveCheck(&ks, rawURL, *method, *bootstrap, allowList))
}

// liveCheck runs, in the egress's order, the parts of the redeem decision that do not need the capability itself:
// revocation by suspension, the session's target validity, the policy, the cluster allow-list.
func liveCheck(ks *kilov1alpha1.KiloSession, rawURL, method, bootstrap string, allow *policy.AllowList) checkAnswer {
	if ks.Spec.Suspend {
		return checkAnswer{Reason: string(redeem.ReasonRevoked), Detail: "session is suspended"}
	}
	if c := meta.FindStatusCondition(ks.Status.Conditions, kilov1alpha1.TargetsValidCondition); c != nil && c.Status != "True" {
		// The manager refused these targets (bad shape or outside its allow-list), so no capability exists for
		// them: nothing would be redeemed, whatever the URL.
		return checkAnswer{Reason: string(policy.ReasonUpstreamNotAllowed), Detail: "session targets rejected by the operator: " + c.Reason}
	}
	targets, err := policy.ParseTargets(policy.Targets{
		BackendBaseURL:       ks.Spec.Targets.BackendBaseURL,
		ProviderBaseURL:      ks.Spec.Targets.ProviderBaseURL,
		SessionIngestBaseURL: ks.Spec.Targets.SessionIngestBaseURL,
	})
	if err != nil {
		return checkAnswer{Reason: string(policy.ReasonUpstreamNotAllowed), Detail: "session targets invalid: " + err.Error()}
	}
	rules := make([]policy.DenyRule, 0, len(ks.Spec.BackendDenyRules))
	for _, r := range ks.Spec.BackendDenyRules {
		rules = append(rules, policy.DenyRule{Path: r.Path, Methods: r.Methods})
	}
	p, err := policy.New(rules)
	if err != nil {
		return checkAnswer{Reason: string(policy.ReasonUpstreamNotAllowed), Detail: "session deny rules invalid: " + err.Error()}
	}
	dec := p.Classify(policy.Request{
		URL:                rawURL,
		Method:             method,
		KiloSessionID:      ks.Spec.KiloSessionID,
		BootstrapSessionID: bootstrap,
		HasProviderToken:   ks.Spec.ProviderTokenSecretRef != nil,
	}, targets)
	if dec.Allowed && allow != nil && !allow.Allows(dec.Origin) {
		return checkAnswer{Reason: string(policy.ReasonUpstreamNotAllowed), Detail: "origin not in the upstream allow-list"}
	}
	return answerOf(dec)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
