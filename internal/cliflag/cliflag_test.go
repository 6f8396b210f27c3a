package cliflag

import (
	"flag"
	"reflect"
	"testing"
)

func TestStringListSplitsAndAccumulates(t *testing.T) {
	var l StringList
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&l, "origin", "")
	if err := fs.Parse([]string{"--origin", "https://a.example, https://b.example,", "--origin", "https://c.example"}); err != nil {
		t.Fatal(err)
	}
	want := StringList{"https://a.example", "https://b.example", "https://c.example"}
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("got %q, want %q", l, want)
	}
	if got := l.String(); got != "https://a.example,https://b.example,https://c.example" {
		t.Fatalf("String() = %q", got)
	}
}

func TestOperatorNamespaceFollowsPodNamespace(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	if got := OperatorNamespace(); got != "kilo-system" {
		t.Fatalf("default = %q, want kilo-system", got)
	}
	t.Setenv("POD_NAMESPACE", "platform")
	if got := OperatorNamespace(); got != "platform" {
		t.Fatalf("with POD_NAMESPACE = %q, want platform", got)
	}
}
