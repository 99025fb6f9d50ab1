//go:build !unix

package freeport

// reservePort reserves nothing where flock is missing: the bind check of
// Addr is all there is.
func reservePort(int) bool { return true }
