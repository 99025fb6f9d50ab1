// Package consume holds what every Sluice service does around the JetStream
// inputs it consumes.
package consume

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KeepInProgress tells JetStream every interval that msg is still being
// worked on (an in-progress acknowledgement), until stop is called or msg
// is acknowledged. A consumer can then have a short AckWait, which only
// runs out for the inputs of an instance that died: failover in seconds,
// without a slow input being handed to a second instance meanwhile.
// An interval of a third of the AckWait leaves room for one lost beat.
func KeepInProgress(msg jetstream.Msg, interval time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		err := msg.InProgress()
		mu.Lock()
		defer mu.Unlock()
		if err == nil && !stopped {
			t.Reset(interval)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}
