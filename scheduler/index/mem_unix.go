//go:build unix

package index

import "syscall"

// sysAlloc returns n bytes of zeroed memory outside the Go heap, mapped
// from the operating system. See storage for why.
func sysAlloc(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		// Out of address space: the same condition in which the Go
		// heap itself would throw.
		panic("queue index: mmap: " + err.Error())
	}
	return b
}

// sysFree returns memory of sysAlloc to the operating system.
func sysFree(b []byte) {
	if len(b) > 0 {
		_ = syscall.Munmap(b)
	}
}
