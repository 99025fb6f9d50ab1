package worker

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestDrainedClassGoesStraightToItsPoll: under light load, one job at a
// time, a class whose last job had nothing pending behind it is long-polled
// again at once, so each job costs about one pull request. Asking it first
// with a FetchNoWait that comes back empty would cost two.
func TestDrainedClassGoesStraightToItsPoll(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	nc, _ := e.ns.Connect(t)
	var pulls atomic.Int64
	subj := "$JS.API.CONSUMER.MSG.NEXT." + wire.StreamJobs + "." + wire.DelivererConsumer(sluicev1.Priority_PRIORITY_NORMAL)
	if _, err := nc.Subscribe(subj, func(*nats.Msg) { pulls.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	e.service(t, func(s *Settings) { s.Routes = map[string]string{"routed.test": c.Addr} })

	const n = 20
	first := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"a@routed.test"}})
	e.result(t, first, 10*time.Second)
	before := pulls.Load()
	for range n {
		job := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"a@routed.test"}})
		if r := e.result(t, job, 10*time.Second); r.Recipients[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("job %s: %v", job.JobId, r.Recipients[0])
		}
	}
	// Idle polls that time out (every idleWait) add a few.
	if got := pulls.Load() - before; got > n*3/2 {
		t.Errorf("%d pull requests for %d jobs one at a time, want about one per job", got, n)
	}
	if got := c.Count(); got != n+1 {
		t.Errorf("%d messages arrived, want %d", got, n+1)
	}
}
