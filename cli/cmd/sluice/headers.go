package main

import (
	"fmt"
	"io"
)

// runHeaders implements "sluice headers". Not implemented yet.
func runHeaders(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "sluice headers: not implemented yet")
	return 1
}
