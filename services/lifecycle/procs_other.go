//go:build !unix

package lifecycle

import "time"

// processCPU is not read here: AdaptProcs leaves GOMAXPROCS as Go set it.
func processCPU() (time.Duration, bool) { return 0, false }
