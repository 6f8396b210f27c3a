package capability

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
)

// The Node reference (testdata/interop/kka1.mjs) is an independent implementation of the format. These helpers
// run it so tests can compare Go with it directly; node is present here and in CI, and tests skip with a clear
// message only where it is not.

func nodeBin(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH: skipping the comparison with the Node reference implementation (testdata/interop/kka1.mjs)")
	}
	return bin
}

func referenceScript(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs(repoFile(t, "testdata/interop/kka1.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runNode runs node with args, feeding stdin, and returns stdout; it fails the test if node exits with a code
// not in okCodes.
func runNode(t testing.TB, stdin []byte, okCodes []int, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(nodeBin(t), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running node %v: %v", args, err)
	}
	for _, c := range okCodes {
		if c == code {
			return stdout.Bytes()
		}
	}
	t.Fatalf("node %v exited %d: %s", args, code, stderr.Bytes())
	return nil
}

// nodeEval runs an ES module snippet that may import the reference as `ref` and reads its JSON input from the
// global `input`; the snippet's last expression statement must assign `output`, which is printed as JSON.
func nodeEval(t testing.TB, snippet string, input any, output any) {
	t.Helper()
	in, err := json.Marshal(input)
	if err != nil {
		t.Fatal(err)
	}
	script := `import * as ref from ` + jsonString(t, "file://"+referenceScript(t)) + `;
import { readFileSync } from 'node:fs';
const input = JSON.parse(readFileSync(0, 'utf8'));
let output;
` + snippet + `
process.stdout.write(JSON.stringify(output));`
	out := runNode(t, in, []int{0}, "--input-type=module", "-e", script)
	if err := json.Unmarshal(out, output); err != nil {
		t.Fatalf("parsing node output %q: %v", out, err)
	}
}

func jsonString(t testing.TB, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// nodeResult is what the reference's decode returns.
type nodeResult struct {
	OK     bool            `json:"ok"`
	Reason Reason          `json:"reason"`
	Claims json.RawMessage `json:"claims"`
}

// nodeDecodeMany decodes every token with the reference in one node process.
func nodeDecodeMany(t testing.TB, keys []string, nowMs int64, tokens []string) []nodeResult {
	t.Helper()
	var out []nodeResult
	nodeEval(t, `
const keys = input.keys.map((k) => Buffer.from(k, 'base64'));
output = input.tokens.map((tok) => ref.decode(keys, tok, input.nowMs));`,
		map[string]any{"keys": keys, "nowMs": nowMs, "tokens": tokens}, &out)
	if len(out) != len(tokens) {
		t.Fatalf("node decoded %d of %d tokens", len(out), len(tokens))
	}
	return out
}
