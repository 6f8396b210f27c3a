package main

import "io"

// runCapability: CONTRACT STUB, replaced by the capability helper.
func runCapability(args []string, stdin io.Reader, stdout, stderr io.Writer) int { return 2 }
