package worker

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestConsumerDeletedIsProvisionedAgain: an operator (or the loss of its
// replicas) deletes the deliverer's consumers while it runs; the deliverer
// notices, creates them again and delivers what is queued afterwards,
// without a restart.
func TestConsumerDeletedIsProvisionedAgain(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	e.service(t, func(s *Settings) { s.Routes = map[string]string{"dest.test": c.Addr} })
	first := e.enqueue(t, jobSpec{domain: "dest.test", rcpts: []string{"a@dest.test"}})
	check(t, e.result(t, first, 10*time.Second).Recipients[0], delivered)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range wire.Classes {
		if err := e.js.DeleteConsumer(ctx, wire.StreamJobs, wire.DelivererConsumer(p)); err != nil {
			t.Fatal(err)
		}
	}
	second := e.enqueue(t, jobSpec{domain: "dest.test", rcpts: []string{"b@dest.test"}})
	check(t, e.result(t, second, 30*time.Second).Recipients[0], delivered)
	for _, p := range wire.Classes {
		if _, err := e.js.Consumer(ctx, wire.StreamJobs, wire.DelivererConsumer(p)); err != nil {
			t.Errorf("consumer %s: %v", wire.DelivererConsumer(p), err)
		}
	}
}
