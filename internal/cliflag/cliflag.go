// Package cliflag holds the flag types and defaults the manager and the egress binaries share.
package cliflag

import (
	"os"
	"strings"

	kilov1alpha1 "github.com/Kilo-Org/kilo-session-operator/api/v1alpha1"
)

// StringList is a flag that accepts a comma-separated list and may be repeated; empty items are dropped.
type StringList []string

func (s *StringList) String() string { return strings.Join(*s, ",") }

// Set appends the comma-separated items of v.
func (s *StringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}

// OperatorNamespace is the default of --operator-namespace: $POD_NAMESPACE, which the Deployments set through
// the downward API so a renamed namespace needs no flag change, else kilo-system.
func OperatorNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return kilov1alpha1.DefaultOperatorNamespace
}
