package main

import "io"

// runCheck: CONTRACT STUB, replaced by the policy helper.
func runCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) int { return 2 }
