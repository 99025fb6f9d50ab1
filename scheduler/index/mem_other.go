//go:build !unix

package index

// sysAlloc returns n bytes of zeroed memory. Without mmap it is the Go
// heap's, which costs the collector's headroom on top (see storage).
func sysAlloc(n int) []byte { return make([]byte, n) }

// sysFree leaves memory of sysAlloc to the collector.
func sysFree([]byte) {}
