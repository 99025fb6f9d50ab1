// Package human renders quantities the way a postmaster reads them in a
// table: how old a message in the queue is, how long ago a replica was
// last heard from. It is shared by the command and the analyses that put
// such words in their findings.
package human

import (
	"fmt"
	"time"
)

// Age renders a duration the way postmasters read queue ages: 45s, 12m,
// 3h20m, 2d4h. A negative duration is 0s.
func Age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}
