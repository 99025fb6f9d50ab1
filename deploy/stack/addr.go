package stack

import "github.com/sluice-mta/sluice/services/freeport"

// FreeAddr returns a loopback address whose port was free a moment ago
// (freeport.Addr).
func FreeAddr() (string, error) { return freeport.Addr() }
