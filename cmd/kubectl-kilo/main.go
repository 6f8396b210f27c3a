// Command kubectl-kilo is a kubectl plugin (kubectl kilo …) for working with Kilo session capabilities.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `usage: kubectl-kilo <command> [flags]

commands:
  capability issue    seal a kka1 capability from a claims file
  capability decode   open and verify a kka1 capability
  check               classify an upstream URL against a session's targets
                      (offline: --targets-file F --session ID URL; live: -n NS NAME URL)
  status              show a KiloSession, its conditions, pods and capability expiry (no secrets)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the process exit code: 0 success, 1 a negative answer (refused,
// invalid), 2 a usage error.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "capability":
		return runCapability(args[1:], stdin, stdout, stderr)
	case "check":
		if isLiveCheck(args[1:]) {
			return runLiveCheck(args[1:], stdout, stderr)
		}
		return runCheck(args[1:], stdin, stdout, stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kubectl-kilo: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
