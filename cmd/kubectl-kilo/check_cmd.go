package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/Kilo-Org/kilo-session-operator/internal/policy"
)

const checkUsage = `usage: kubectl kilo check --targets-file F --session ID [--method M] [--bootstrap-session ID]
                          [--provider-token] [--deny-rules-file R] [--] URL

The offline form of check: classifies URL exactly as the egress's policy would for a capability with these targets,
bound to kiloSessionId ID. F is JSON {"backendBaseUrl":…,"providerBaseUrl":…,"sessionIngestBaseUrl":…} ("-" reads
it from stdin). R, optional, is a JSON list of backend deny rules [{"path":"/api/admin/**","methods":["POST"]}].
--provider-token says the capability carries a provider token. The method defaults to GET.

Prints one JSON line: {"allowed":true,"routeClass":…,"credential":"user|provider"} exit 0, or
{"allowed":false,"reason":…,"detail":…} exit 1. Usage errors exit 2. Put the URL after "--" to pass it byte for
byte: an empty URL, a leading space or a control character is a policy answer, not a usage error.
`

// maxCheckFileBytes bounds the targets and deny-rules files: they hold three URLs or a few rules.
const maxCheckFileBytes = 1 << 20

// checkAnswer is the one JSON line check prints, offline or live.
type checkAnswer struct {
	Allowed    bool   `json:"allowed"`
	RouteClass string `json:"routeClass,omitempty"`
	Credential string `json:"credential,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

func answerOf(d policy.Decision) checkAnswer {
	if d.Allowed {
		return checkAnswer{Allowed: true, RouteClass: string(d.RouteClass), Credential: string(d.Credential)}
	}
	return checkAnswer{Reason: string(d.Reason), Detail: d.Detail}
}

// writeAnswer prints a as one JSON line and returns the exit code: 0 allowed, 1 refused.
func writeAnswer(w io.Writer, a checkAnswer) int {
	b, err := json.Marshal(a)
	if err != nil {
		return 2
	}
	if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
		return 2
	}
	if !a.Allowed {
		return 1
	}
	return 0
}

// classifyOffline is check's core: validate targets and deny rules as the manager would, then classify.
func classifyOffline(t policy.Targets, rules []policy.DenyRule, req policy.Request) (policy.Decision, error) {
	pt, err := policy.ParseTargets(t)
	if err != nil {
		return policy.Decision{}, fmt.Errorf("targets: %w", err)
	}
	p, err := policy.New(rules)
	if err != nil {
		return policy.Decision{}, err
	}
	return p.Classify(req, pt), nil
}

func runCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage) }
	targetsFile := fs.String("targets-file", "", "JSON file with backendBaseUrl, providerBaseUrl, sessionIngestBaseUrl (- for stdin)")
	session := fs.String("session", "", "the kiloSessionId the capability is bound to")
	method := fs.String("method", "GET", "HTTP method of the request")
	bootstrap := fs.String("bootstrap-session", "", "bootstrap session id (the POST …/api/session bootstrap call)")
	providerToken := fs.Bool("provider-token", false, "the capability carries a provider token")
	denyFile := fs.String("deny-rules-file", "", "optional JSON list of backend deny rules")

	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "kubectl-kilo check: "+format+"\n\n%s", append(a, checkUsage)...)
		return 2
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case len(pos) != 1:
		return usageErr("want exactly one URL, got %d arguments (put the URL after --)", len(pos))
	case *targetsFile == "":
		return usageErr("--targets-file is required")
	case *session == "":
		return usageErr("--session is required")
	case !isMethodToken(*method):
		return usageErr("--method %q is not an HTTP method", *method)
	}

	var targets policy.Targets
	if err := readStrictJSON(*targetsFile, stdin, &targets); err != nil {
		return usageErr("--targets-file: %v", err)
	}
	var rules []policy.DenyRule
	if *denyFile != "" {
		var raw []struct {
			Path    string   `json:"path"`
			Methods []string `json:"methods"`
		}
		if err := readStrictJSON(*denyFile, stdin, &raw); err != nil {
			return usageErr("--deny-rules-file: %v", err)
		}
		for _, r := range raw {
			rules = append(rules, policy.DenyRule{Path: r.Path, Methods: r.Methods})
		}
	}
	d, err := classifyOffline(targets, rules, policy.Request{
		URL:                pos[0],
		Method:             *method,
		KiloSessionID:      *session,
		BootstrapSessionID: *bootstrap,
		HasProviderToken:   *providerToken,
	})
	if err != nil {
		return usageErr("%v", err)
	}
	return writeAnswer(stdout, answerOf(d))
}

// readStrictJSON decodes one JSON value from the file (or stdin for "-"), refusing unknown fields and trailing
// data: a misspelt key must not silently leave a target empty or a rule out.
func readStrictJSON(name string, stdin io.Reader, v any) error {
	var r io.Reader
	if name == "-" {
		r = stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxCheckFileBytes+1))
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxCheckFileBytes {
		return fmt.Errorf("%s is larger than %d bytes", name, maxCheckFileBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("parsing %s: %w", name, err)
	}
	if dec.More() {
		return fmt.Errorf("parsing %s: trailing data after the JSON value", name)
	}
	return nil
}

// isMethodToken: RFC 9110 token characters, non-empty.
func isMethodToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
