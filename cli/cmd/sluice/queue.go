package main

import (
	"fmt"
	"io"
)

// runQueue implements "sluice queue". Not implemented yet.
func runQueue(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "sluice queue: not implemented yet")
	return 1
}
