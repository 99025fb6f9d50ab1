//go:build !unix

package stack

// reservePort reserves nothing where flock is missing: the bind check of
// FreeAddr is all there is.
func reservePort(int) bool { return true }
