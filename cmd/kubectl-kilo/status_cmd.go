package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

const statusUsage = `usage: kubectl kilo status [-n NAMESPACE] NAME [-o text|json] [--kubeconfig F] [--context C]

Shows a KiloSession: its spec in brief, its conditions, and every selected pod with its capability Secret and
when the capability expires. It never reads a Secret's data: capability Secrets are fetched as metadata only.
Exit 0 when the session is Ready, 1 when it exists but is not Ready or cannot be read, 2 on a usage error.
`

// sessionReport is what `status` shows; -o json prints it as is. It holds no secret by construction: it is built
// from the KiloSession, Pods, and the metadata of capability Secrets.
type sessionReport struct {
	Namespace          string               `json:"namespace"`
	Name               string               `json:"name"`
	UserID             string               `json:"userId"`
	KiloSessionID      string               `json:"kiloSessionId"`
	Targets            kilov1alpha1.Targets `json:"targets"`
	PodSelector        string               `json:"podSelector"`
	CapabilityLifetime string               `json:"capabilityLifetime"`
	RenewBefore        string               `json:"renewBefore"`
	Suspend            bool                 `json:"suspend"`
	Generation         int64                `json:"generation"`
	ObservedGeneration int64                `json:"observedGeneration"`
	SelectedPods       int32                `json:"selectedPods"`
	IssuedPods         int32                `json:"issuedPods"`
	NextRenewal        *metav1.Time         `json:"nextRenewal,omitempty"`
	Ready              bool                 `json:"ready"`
	Conditions         []metav1.Condition   `json:"conditions"`
	Pods               []podReport          `json:"pods"`
}

type podReport struct {
	Name             string `json:"name"`
	UID              string `json:"uid"`
	Phase            string `json:"phase"`
	PodIP            string `json:"podIP,omitempty"`
	CapabilitySecret string `json:"capabilitySecret,omitempty"`
	SecretPresent    bool   `json:"secretPresent"`
	// SecretBoundToPod is true when the Secret's pod-UID label names this pod: a Secret left from an earlier pod
	// of the same name is not this pod's capability.
	SecretBoundToPod bool         `json:"secretBoundToPod"`
	ExpiresAt        *metav1.Time `json:"expiresAt,omitempty"`
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage) }
	var kf kubeFlags
	kf.register(fs)
	output := fs.String("o", "text", "output format: text or json")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != 1 || pos[0] == "" {
		fmt.Fprint(stderr, "kubectl-kilo status: exactly one KiloSession name is required\n\n"+statusUsage)
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "kubectl-kilo status: unknown output format %q (want text or json)\n", *output)
		return 2
	}
	c, ns, err := kf.client()
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo status: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), kf.timeout)
	defer cancel()
	rep, err := buildSessionReport(ctx, c, ns, pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo status: %v\n", err)
		return 1
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return 1
		}
	} else {
		printSessionReport(stdout, rep, time.Now())
	}
	if !rep.Ready {
		return 1
	}
	return 0
}

func buildSessionReport(ctx context.Context, c client.Client, ns, name string) (*sessionReport, error) {
	var ks kilov1alpha1.KiloSession
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &ks); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("KiloSession %s/%s not found", ns, name)
		}
		return nil, fmt.Errorf("getting KiloSession %s/%s: %w", ns, name, err)
	}
	lifetime := 4 * time.Hour
	if ks.Spec.CapabilityLifetime != nil {
		lifetime = ks.Spec.CapabilityLifetime.Duration
	}
	renew := lifetime / 4
	if ks.Spec.RenewBefore != nil {
		renew = ks.Spec.RenewBefore.Duration
	}
	rep := &sessionReport{
		Namespace:          ns,
		Name:               name,
		UserID:             ks.Spec.UserID,
		KiloSessionID:      ks.Spec.KiloSessionID,
		Targets:            ks.Spec.Targets,
		PodSelector:        sessionSelectorString(&ks),
		CapabilityLifetime: lifetime.String(),
		RenewBefore:        renew.String(),
		Suspend:            ks.Spec.Suspend,
		Generation:         ks.Generation,
		ObservedGeneration: ks.Status.ObservedGeneration,
		SelectedPods:       ks.Status.SelectedPods,
		IssuedPods:         ks.Status.IssuedPods,
		NextRenewal:        ks.Status.NextRenewal,
		Ready:              meta.IsStatusConditionTrue(ks.Status.Conditions, kilov1alpha1.ReadyCondition),
		Conditions:         ks.Status.Conditions,
	}

	sel := labels.SelectorFromSet(labels.Set{kilov1alpha1.SessionLabel: name})
	if ks.Spec.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(ks.Spec.PodSelector)
		if err != nil {
			return nil, fmt.Errorf("parsing the pod selector of KiloSession %s/%s: %w", ns, name, err)
		}
		sel = s
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("listing the pods of KiloSession %s/%s: %w", ns, name, err)
	}
	statusByUID := map[string]kilov1alpha1.PodCapabilityStatus{}
	for _, p := range ks.Status.Pods {
		statusByUID[p.UID] = p
	}
	for _, p := range pods.Items {
		// The controller only ever considers pods carrying the session label (the webhook and its cache see no
		// others), so a custom selector matching unlabelled pods must not make them look like session pods.
		if _, ok := p.Labels[kilov1alpha1.SessionLabel]; !ok {
			continue
		}
		pr := podReport{Name: p.Name, UID: string(p.UID), Phase: string(p.Status.Phase), PodIP: p.Status.PodIP,
			CapabilitySecret: p.Annotations[kilov1alpha1.CapabilitySecretAnnotation]}
		if st, ok := statusByUID[pr.UID]; ok {
			if pr.CapabilitySecret == "" {
				pr.CapabilitySecret = st.SecretName
			}
			pr.ExpiresAt = st.ExpiresAt
		}
		if pr.CapabilitySecret != "" {
			// Metadata only: the token never leaves the API server, and a user without `get secrets` on the data
			// path still sees whether the capability exists where RBAC allows metadata reads.
			sec := &metav1.PartialObjectMetadata{}
			sec.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
			err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: pr.CapabilitySecret}, sec)
			switch {
			case err == nil:
				pr.SecretPresent = true
				pr.SecretBoundToPod = sec.Labels[kilov1alpha1.PodUIDLabel] == pr.UID
				if pr.ExpiresAt == nil {
					if t, perr := time.Parse(time.RFC3339, sec.Annotations[kilov1alpha1.ExpiresAtAnnotation]); perr == nil {
						pr.ExpiresAt = &metav1.Time{Time: t}
					}
				}
			case apierrors.IsNotFound(err):
			default:
				return nil, fmt.Errorf("getting the metadata of capability Secret %s/%s: %w", ns, pr.CapabilitySecret, err)
			}
		}
		rep.Pods = append(rep.Pods, pr)
	}
	slices.SortFunc(rep.Pods, func(a, b podReport) int { return strings.Compare(a.Name, b.Name) })
	return rep, nil
}

func printSessionReport(w io.Writer, r *sessionReport, now time.Time) {
	fmt.Fprintf(w, "KiloSession %s/%s\n", r.Namespace, r.Name)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  User ID:\t%s\n", r.UserID)
	fmt.Fprintf(tw, "  Kilo session ID:\t%s\n", r.KiloSessionID)
	fmt.Fprintf(tw, "  Backend:\t%s\n", r.Targets.BackendBaseURL)
	fmt.Fprintf(tw, "  Provider:\t%s\n", r.Targets.ProviderBaseURL)
	fmt.Fprintf(tw, "  Session ingest:\t%s\n", r.Targets.SessionIngestBaseURL)
	fmt.Fprintf(tw, "  Pod selector:\t%s\n", r.PodSelector)
	fmt.Fprintf(tw, "  Capability lifetime:\t%s (renewed %s before expiry)\n", r.CapabilityLifetime, r.RenewBefore)
	fmt.Fprintf(tw, "  Suspended:\t%t\n", r.Suspend)
	fmt.Fprintf(tw, "  Observed generation:\t%d of %d\n", r.ObservedGeneration, r.Generation)
	fmt.Fprintf(tw, "  Pods:\t%d selected, %d holding a capability\n", r.SelectedPods, r.IssuedPods)
	if r.NextRenewal != nil {
		fmt.Fprintf(tw, "  Next renewal:\t%s (%s)\n", r.NextRenewal.UTC().Format(time.RFC3339), relative(r.NextRenewal.Time, now))
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\nConditions:")
	if len(r.Conditions) == 0 {
		fmt.Fprintln(w, "  none yet (the controller has not reconciled this session)")
	} else {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE")
		for _, c := range r.Conditions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, relative(c.LastTransitionTime.Time, now), oneLine(c.Message))
		}
		_ = tw.Flush()
	}

	fmt.Fprintln(w, "\nPods:")
	if len(r.Pods) == 0 {
		fmt.Fprintf(w, "  none match %s\n", r.PodSelector)
		return
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tPHASE\tIP\tCAPABILITY SECRET\tSTATE\tEXPIRES")
	for _, p := range r.Pods {
		state := "missing"
		switch {
		case p.CapabilitySecret == "":
			state = "not injected"
		case p.SecretPresent && !p.SecretBoundToPod:
			state = "bound to another pod"
		case p.SecretPresent:
			state = "issued"
		}
		exp := "-"
		if p.ExpiresAt != nil {
			exp = relative(p.ExpiresAt.Time, now)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", p.Name, dash(p.Phase), dash(p.PodIP), dash(p.CapabilitySecret), state, exp)
	}
	_ = tw.Flush()
}

// relative renders t against now as "in 3h59m" or "2m ago", rounded to what a human reads.
func relative(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	round := func(d time.Duration) time.Duration {
		if d >= time.Hour {
			return d.Round(time.Minute)
		}
		return d.Round(time.Second)
	}
	if d >= 0 {
		return "in " + round(d).String()
	}
	return round(-d).String() + " ago"
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
