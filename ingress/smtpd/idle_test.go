package smtpd

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/services/config"
)

// TestSilentClientGetsOneTimeoutReply: a client that connects and sends
// nothing, or stops after a command, is told 421 4.4.2 and disconnected,
// every time, whichever of the layers' timers runs out first.
func TestSilentClientGetsOneTimeoutReply(t *testing.T) {
	const timeout = time.Second
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.ReadTimeout = timeout
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := dialRaw(t, h.addr, nil)
			if i%2 == 1 {
				rc.ehlo("client.example.org")
			}
			l, err := rc.r.ReadString('\n')
			if !strings.HasPrefix(l, "421 4.4.2 ") {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("client %d: %q %v", i, l, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of 40 silent clients got no 421 4.4.2: %q", len(bad), bad)
	}
}
