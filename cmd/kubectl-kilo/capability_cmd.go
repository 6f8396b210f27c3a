package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Kilo-Org/kilo-session-operator/internal/capability"
)

const capabilityUsage = `usage:
  kubectl-kilo capability issue  --key-file F --claims-file C [--lifetime 4h] [--now MS]
  kubectl-kilo capability decode --key-file F [--now MS] [--show-secrets] [--] [TOKEN]

issue   seals a kka1 capability for the subject in C (a JSON object with userId, cloudAgentSessionId,
        kiloSessionId, outboundContainerId, userToken, optional providerToken, and targets {backendBaseUrl,
        providerBaseUrl, sessionIngestBaseUrl}) with the first key of F, and prints it and a newline.
decode  opens TOKEN — taken byte for byte; "--" ends the flags so any string can be passed — or, without TOKEN,
        stdin with one trailing newline removed, and prints one JSON line: {"ok":true,"claims":{...}} with the
        tokens shown as "[REDACTED]" unless --show-secrets, or {"ok":false,"reason":"..."}.

F holds one standard base64 32-byte key per line (blank lines and # comments ignored); the first key seals,
every key is tried to open. MS is a clock in epoch milliseconds (default: now).
Exit status: 0 success, 1 refused (the reason is printed), 2 usage error.
`

// runCapability implements `kubectl-kilo capability …`. It returns the exit status.
func runCapability(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, capabilityUsage)
		return 2
	}
	switch args[0] {
	case "issue":
		return runCapabilityIssue(args[1:], stdout, stderr)
	case "decode":
		return runCapabilityDecode(args[1:], stdin, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, capabilityUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "kubectl-kilo capability: unknown command %q\n\n%s", args[0], capabilityUsage)
		return 2
	}
}

// usageError reports a usage problem and returns exit status 2.
func usageError(stderr io.Writer, cmd, format string, a ...any) int {
	fmt.Fprintf(stderr, "kubectl-kilo capability %s: %s\n", cmd, fmt.Sprintf(format, a...))
	return 2
}

// newFlagSet returns a flag set that reports errors on stderr instead of exiting.
func newFlagSet(cmd string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("kubectl-kilo capability "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, capabilityUsage) }
	return fs
}

// parseFlags parses args; it returns the exit status to stop with, or -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string) int {
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2 // the flag package has printed the problem and the usage
	}
	return -1
}

// nowFlag is --now: epoch milliseconds, defaulting to the wall clock.
type nowFlag struct {
	set bool
	ms  int64
}

func (n *nowFlag) String() string {
	if !n.set {
		return ""
	}
	return strconv.FormatInt(n.ms, 10)
}

func (n *nowFlag) Set(s string) error {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms < 0 {
		return errors.New("want epoch milliseconds, a non-negative integer")
	}
	n.set, n.ms = true, ms
	return nil
}

func (n *nowFlag) time() time.Time {
	if n.set {
		return time.UnixMilli(n.ms)
	}
	return time.Now()
}

func runCapabilityIssue(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("issue", stderr)
	keyFile := fs.String("key-file", "", "key ring file (required)")
	claimsFile := fs.String("claims-file", "", "subject JSON file (required)")
	lifetime := fs.Duration("lifetime", capability.MaxLifetime, "validity, 1m to 4h")
	var now nowFlag
	fs.Var(&now, "now", "issue time in epoch milliseconds (default: now)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	switch {
	case fs.NArg() > 0:
		return usageError(stderr, "issue", "unexpected argument %q", fs.Arg(0))
	case *keyFile == "":
		return usageError(stderr, "issue", "--key-file is required")
	case *claimsFile == "":
		return usageError(stderr, "issue", "--claims-file is required")
	case *lifetime < capability.MinLifetime || *lifetime > capability.MaxLifetime:
		return usageError(stderr, "issue", "--lifetime %v is outside 1m to 4h", *lifetime)
	}
	ring, code := loadKeyRing(*keyFile, "issue", stderr)
	if ring == nil {
		return code
	}
	data, err := os.ReadFile(*claimsFile)
	if err != nil {
		return usageError(stderr, "issue", "reading claims file: %v", err)
	}
	subject, err := parseSubject(data)
	if err != nil {
		return usageError(stderr, "issue", "claims file %s: %v", *claimsFile, err)
	}
	token, _, err := capability.Issue(ring, subject, now.time(), *lifetime)
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo capability issue: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, token)
	return 0
}

// loadKeyRing reads and parses a key file. On failure it reports the problem and returns a nil ring and the exit
// status: 2 when the file cannot be read (a usage problem), 1 when its content is not a valid ring.
func loadKeyRing(path, cmd string, stderr io.Writer) (*capability.KeyRing, int) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError(stderr, cmd, "reading key file: %v", err)
	}
	ring, err := capability.ParseKeyRing(data)
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo capability %s: key file %s: %v\n", cmd, path, err)
		return nil, 1
	}
	return ring, 0
}

// subjectKeys and targetKeys are the exact, case-sensitive keys a claims file may hold. encoding/json matches
// struct fields case-insensitively, so the keys are checked before the values are decoded.
var (
	subjectKeys = map[string]bool{"userId": true, "cloudAgentSessionId": true, "kiloSessionId": true, "outboundContainerId": true, "userToken": true, "providerToken": true, "targets": true}
	targetKeys  = map[string]bool{"backendBaseUrl": true, "providerBaseUrl": true, "sessionIngestBaseUrl": true}
)

// parseSubject decodes a claims file strictly: one JSON object, only known keys (exact case), string values.
// Emptiness and URL checks are left to capability.Issue so the CLI and the library apply the same rules.
func parseSubject(data []byte) (capability.Subject, error) {
	var s capability.Subject
	if err := checkKeys(data, subjectKeys, "targets"); err != nil {
		return s, err
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&s); err != nil {
		return s, fmt.Errorf("decoding the subject: %w", err)
	}
	if d.More() {
		return s, errors.New("data after the JSON object")
	}
	return s, nil
}

// checkKeys verifies that data is a JSON object whose keys are all in allowed, and recurses into nested.
func checkKeys(data []byte, allowed map[string]bool, nested string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	var unknown []string
	for k := range m {
		if !allowed[k] {
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown key %s", strings.Join(unknown, ", "))
	}
	if raw, ok := m[nested]; ok && nested != "" {
		if err := checkKeys(raw, targetKeys, ""); err != nil {
			return fmt.Errorf("%s: %w", nested, err)
		}
	}
	return nil
}

func runCapabilityDecode(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("decode", stderr)
	keyFile := fs.String("key-file", "", "key ring file (required)")
	showSecrets := fs.Bool("show-secrets", false, "print userToken and providerToken instead of [REDACTED]")
	var now nowFlag
	fs.Var(&now, "now", "decode time in epoch milliseconds (default: now)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 1 {
		return usageError(stderr, "decode", "want at most one TOKEN argument, got %d (flags go before the token)", fs.NArg())
	}
	if *keyFile == "" {
		return usageError(stderr, "decode", "--key-file is required")
	}
	var token string
	if fs.NArg() == 1 {
		token = fs.Arg(0)
	} else {
		// Read one byte past the longest token plus its newline: anything longer is refused by length either way,
		// without reading an unbounded stdin.
		data, err := io.ReadAll(io.LimitReader(stdin, capability.MaxTokenChars+2))
		if err != nil {
			return usageError(stderr, "decode", "reading the token from stdin: %v", err)
		}
		token = strings.TrimSuffix(string(data), "\n")
	}

	ring, code := loadKeyRing(*keyFile, "decode", stderr)
	if ring == nil {
		if code == 1 {
			writeDecodeFailure(stdout, capability.ReasonConfiguration)
		}
		return code
	}
	claims, err := capability.Decode(ring, token, now.time())
	if err != nil {
		fmt.Fprintf(stderr, "kubectl-kilo capability decode: %v\n", err)
		writeDecodeFailure(stdout, capability.ReasonOf(err))
		return 1
	}
	var body []byte
	if *showSecrets {
		body = claims.Plaintext()
	} else if body, err = claims.MarshalJSON(); err != nil {
		return usageError(stderr, "decode", "rendering claims: %v", err)
	}
	fmt.Fprintf(stdout, "{\"ok\":true,\"claims\":%s}\n", body)
	return 0
}

func writeDecodeFailure(stdout io.Writer, reason capability.Reason) {
	fmt.Fprintf(stdout, "{\"ok\":false,\"reason\":%q}\n", string(reason))
}
