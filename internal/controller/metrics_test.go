package controller

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The shipped alert rules and the README name the controller's metrics; a rename here would leave the alerts
// silently matching nothing. Every kilo_capabilit*_total/_seconds name they use must be one the controller exports.
func TestAlertRulesUseExportedMetricNames(t *testing.T) {
	exported := map[string]bool{}
	for _, c := range []prometheus.Collector{capabilitiesIssued, capabilitiesRevoked, capabilityIssueErrors, earliestExpiry} {
		ch := make(chan *prometheus.Desc, 4)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			exported[m[1]] = true
		}
	}
	for _, want := range []string{"kilo_capabilities_issued_total", "kilo_capabilities_revoked_total",
		"kilo_capability_issue_errors_total", "kilo_capability_earliest_expiry_seconds"} {
		if !exported[want] {
			t.Errorf("documented metric %s is not exported", want)
		}
	}

	for _, file := range []string{filepath.Join("..", "..", "config", "prometheus", "monitor.yaml"), filepath.Join("..", "..", "README.md")} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`kilo_capabilit[a-z_]*_(?:total|seconds)\b`).FindAllString(string(data), -1) {
			if !exported[name] {
				t.Errorf("%s refers to %s, which the controller does not export", file, name)
			}
		}
	}
}
