package main

import (
	"fmt"
	"io"
)

// runDoctor implements "sluice doctor". Not implemented yet.
func runDoctor(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "sluice doctor: not implemented yet")
	return 1
}
