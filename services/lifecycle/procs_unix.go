//go:build unix

package lifecycle

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user and system) all of the process's
// threads have used since it started.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
