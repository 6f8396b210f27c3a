package main

import (
	"flag"
	"strings"
	"testing"
)

func parse(t *testing.T, args ...string) (*options, error) {
	t.Helper()
	t.Setenv("POD_NAMESPACE", "")
	var o options
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return &o, o.validate()
}

func TestDefaultsMatchTheManifests(t *testing.T) {
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	// config/default installs into kilo-system, names the egress Service kilo-egress and the webhook objects as
	// internal/pki's defaults; a default drifting from them would break a plain `make deploy`.
	checks := map[string][2]string{
		"operator namespace": {o.operatorNamespace, "kilo-system"},
		"egress proxy":       {o.egressProxyURL, "http://kilo-egress.kilo-system.svc:3128"},
		"key ring":           {o.keyRingSecret, "kilo-capability-keys"},
		"webhook config":     {o.webhookConfigName, "kilo-pod-injector"},
		"webhook service":    {o.webhookServiceName, "kilo-webhook"},
		"cert mode":          {o.webhookCertMode, certModeSelfManaged},
		"allow-list":         {o.upstreamAllowList.String(), "https://api.kilo.ai,https://ingest.kilosessions.ai"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s: got %q, want %q", name, c[0], c[1])
		}
	}
	if o.enableHTTP2 || !o.metricsSecure {
		t.Errorf("secure defaults changed: enableHTTP2=%v metricsSecure=%v", o.enableHTTP2, o.metricsSecure)
	}
}

func TestListFlagsAcceptCommasAndRepeats(t *testing.T) {
	o, err := parse(t, "--namespace", "a,b", "--namespace", "c", "--upstream-allowlist", "https://api.kilo.ai, https://staging.kilo.ai",
		"--operator-namespace", "ops")
	if err != nil {
		t.Fatal(err)
	}
	if got := o.watchNamespaces.String(); got != "a,b,c" {
		t.Errorf("namespaces: got %q", got)
	}
	if got := o.upstreamAllowList.String(); got != "https://api.kilo.ai,https://staging.kilo.ai" {
		t.Errorf("allow-list: got %q", got)
	}
	if o.egressProxyURL != "http://kilo-egress.ops.svc:3128" {
		t.Errorf("the egress URL does not follow the operator namespace: %q", o.egressProxyURL)
	}
}

func TestBadFlagsFailAtStartWithTheFlagNamed(t *testing.T) {
	cases := map[string][]string{
		"--webhook-cert-mode":         {"--webhook-cert-mode", "vault"},
		"--service-cidr":              {"--service-cidr", "10.96.0.0/33"},
		"--upstream-allowlist":        {"--upstream-allowlist", "ftp://api.kilo.ai"},
		"--max-concurrent-reconciles": {"--max-concurrent-reconciles", "0"},
	}
	for flagName, args := range cases {
		_, err := parse(t, args...)
		if err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("%v: want an error naming %s, got %v", args, flagName, err)
		}
	}
}
