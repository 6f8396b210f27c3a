package redeem

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// logSink records every line at every verbosity.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		s.mu.Lock()
		s.lines = append(s.lines, prefix+" "+args)
		s.mu.Unlock()
	}, funcr.Options{Verbosity: 10})
}

// TestNoSecretReachesLogsErrorsOrMetrics plants canary tokens and a capability, drives every outcome through the
// decision and the API (including a capability pasted into the URL path and query), and greps everything an
// operator could see.
func TestNoSecretReachesLogsErrorsOrMetrics(t *testing.T) {
	sink := &logSink{}
	f := newAPIFixture(t, sink.logger())
	f.decider.logRate.SetBurst(1000)
	ctx := context.Background()

	secrets := []string{f.token, userTokenCanary, providerTokenCanary, gatewayToken, strangerTok, "Bearer "}
	// Pieces of the capability too: a log that printed half of it would still leak.
	parts := strings.Split(strings.TrimPrefix(f.token, "kka1."), ":")
	secrets = append(secrets, parts...)

	escaped := strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D", ":", "%3A").Replace(f.token)
	secrets = append(secrets, escaped, parts[2][:20])

	var seen []string
	record := func(err error) {
		if err != nil {
			seen = append(seen, err.Error(), fmt.Sprintf("%v %+v %#v", err, err, err))
			if ref, ok := err.(*Refusal); ok {
				seen = append(seen, ref.Detail)
			}
		}
	}
	urls := []string{
		backendURL,
		"https://evil.example/" + escaped,
		"https://api.kilo.ai/api/" + parts[2][:20] + "?token=" + escaped,
		"https://user:" + userTokenCanary + "@api.kilo.ai/x",
		"https://api.kilo.ai/a/../" + escaped,
	}
	for _, u := range urls {
		for _, caller := range []string{podUID, "other-pod"} {
			r := f.req(u)
			r.CallerPodUID = caller
			_, err := f.decider.Decide(ctx, r)
			record(err)
		}
		r := f.req(u)
		r.Capability = f.token[:len(f.token)-4] + "AAA=" // tampered: invalid
		_, err := f.decider.Decide(ctx, r)
		record(err)
		for _, bearer := range []string{gatewayToken, strangerTok, "kka1." + parts[0]} {
			f.post(t, bearer, "application/json", f.body(u))
		}
	}
	for _, bearer := range []string{gatewayToken, strangerTok, f.token} {
		_, err := f.auth.Authenticate(ctx, bearer)
		record(err)
	}
	f.reviewer.fail.Store(true)
	_, err := f.auth.Authenticate(ctx, "fresh-"+gatewayToken)
	record(err)

	resp, err := f.server.Client().Get(f.server.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metricsDump, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.lines) == 0 {
		t.Fatal("no log lines captured: the canary would prove nothing")
	}
	check := func(what, text string) {
		for _, s := range secrets {
			if len(s) >= 6 && strings.Contains(text, s) {
				t.Errorf("%s contains secret material %.12q…: %.200q", what, s, text)
			}
		}
	}
	for _, l := range sink.lines {
		check("log line", l)
	}
	for _, e := range seen {
		check("error", e)
	}
	check("metrics", string(metricsDump))
	if !strings.Contains(strings.Join(sink.lines, "\n"), `"path"="[REDACTED]"`) {
		t.Error("a URL path holding the capability was not redacted (or not logged at all)")
	}
}
