//go:build e2e

// Package e2e runs `make demo` non-interactively: the main job, end to end, on a local control plane. It is the
// CI proof that the manifests, the manager, the webhook, the egress and the redeem decision work together on real
// input. Run it with `make test-e2e` (part of `make test`).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(root, "bin", "k8s", bin)); err != nil {
			t.Fatalf("bin/k8s/%s is missing: run `make envtest` first (make test-e2e does): %v", bin, err)
		}
	}
	work := t.TempDir()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "demo", "demo.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KEEP=0", "NO_COLOR=1", "DEMO_WORKDIR="+work)
	// On timeout, stop the script politely so its trap stops every component it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second

	var out bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() {
		// Stream the demo's narrative into the test log as it happens, so a CI failure shows where it stopped.
		sc := bufio.NewScanner(io.TeeReader(pr, &out))
		for sc.Scan() {
			t.Log(sc.Text())
		}
		close(done)
	}()
	start := time.Now()
	runErr := cmd.Run()
	_ = pw.Close()
	<-done
	t.Logf("demo took %s", time.Since(start).Round(time.Second))

	if runErr != nil {
		t.Fatalf("make demo failed: %v (its narrative is above; logs are in %s)", runErr, work)
	}
	if !strings.Contains(out.String(), "demo passed") {
		t.Fatalf("make demo exited 0 without its summary line")
	}

	// Every process the demo started must be gone: a leaked etcd or API server would hold ports and memory on a
	// shared CI machine.
	data, err := os.ReadFile(filepath.Join(work, "pids.all"))
	if err != nil {
		t.Fatalf("reading the demo's process list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		pid, err := strconv.Atoi(fields[0])
		if err != nil {
			t.Fatalf("bad pid line %q", line)
		}
		if running(pid) {
			t.Errorf("%s (pid %d) is still running after the demo exited", fields[1], pid)
		}
	}
}

// running reports whether pid exists and is not a zombie (an exited process nobody has reaped yet: harmless, and
// common in containers whose init does not reap).
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself contain spaces or parentheses.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
