package streams

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestConcurrentProvision: every service provisions the streams and
// buckets when it starts, and they start at once. nats.go's CreateOrUpdate
// asks "update", hears "not found", then creates, and loses to whoever
// created it meanwhile with "stream name already in use" (seen as the
// scheduler exiting at start in CI): all of them must succeed.
func TestConcurrentProvision(t *testing.T) {
	for round := range 5 {
		s := natstest.Start(t)
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for range 6 {
			_, js := s.Connect(t)
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
	}
}
