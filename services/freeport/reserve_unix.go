//go:build unix

package freeport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// reservePort takes an exclusive lock on a file named for port in the
// system's temporary directory, held until the process exits (the kernel
// releases it then, whatever the exit), so that processes using Addr
// never hand out the same port at once. It reports false when another
// process holds the lock.
func reservePort(port int) bool {
	dir := filepath.Join(os.TempDir(), "sluice-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true // no reservation possible: fall back to the bind check
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	reserved = append(reserved, f) // kept open: the lock lives with the file
	return true
}

// reserved holds the locked files; guarded by portMu.
var reserved []*os.File
