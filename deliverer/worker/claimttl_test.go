package worker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestAttemptClaimIsRenewed: the attempt claim carries wire.ClaimTTL (and
// no message id), and an attempt that runs longer than the renewal
// interval records its claim again, with the attempt's start time, until
// it ends and not after.
func TestAttemptClaimIsRenewed(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{Delay: 2 * time.Second})
	e.shapedFleet(t, 1, func(s *Settings) { s.Routes = map[string]string{"slow.test": c.Addr} },
		func(s *Service) { s.claimRenew = 400 * time.Millisecond })
	job := e.enqueue(t, jobSpec{domain: "slow.test", rcpts: []string{"x@slow.test"}})
	check(t, e.result(t, job, 30*time.Second).Recipients[0], delivered)

	claims := func() (ttls []string, evs []admin.QueueEvent) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cons, err := e.js.OrderedConsumer(ctx, wire.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{wire.SubjectEvents + "." + wire.EventShard(job.QueueId) + ".attempt.*"}})
		if err != nil {
			t.Fatal(err)
		}
		for {
			m, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond))
			if err != nil {
				return ttls, evs
			}
			var ev admin.QueueEvent
			if err := admin.UnmarshalQueueEvent(m.Data(), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.JobID == job.JobId {
				ttls, evs = append(ttls, m.Headers().Get(jetstream.MsgTTLHeader)), append(evs, ev)
				// An id would cost a deduplication entry per delivery.
				if id := m.Headers().Get(jetstream.MsgIDHeader); id != "" {
					t.Errorf("claim with message id %q", id)
				}
			}
		}
	}
	ttls, evs := claims()
	// 2 s of DATA with a renewal every 0.4 s: the claim and at least three
	// renewals (the first renewal waits a full interval).
	if len(evs) < 4 {
		t.Fatalf("%d records of the attempt's claim, want the claim and at least 3 renewals", len(evs))
	}
	for i, ev := range evs {
		if ttls[i] != wire.ClaimTTL.String() {
			t.Errorf("record %d: TTL %q, want %q", i, ttls[i], wire.ClaimTTL)
		}
		if !ev.Time.Equal(evs[0].Time) || ev.Instance != evs[0].Instance || ev.Attempt != evs[0].Attempt {
			t.Errorf("record %d: %+v, want the attempt's own (%+v)", i, ev, evs[0])
		}
		if renewal := i > 0; renewal != (ev.Note != "") {
			t.Errorf("record %d: note %q", i, ev.Note)
		}
	}
	time.Sleep(time.Second)
	if _, again := claims(); len(again) != len(evs) {
		t.Errorf("%d records a second after the attempt ended, %d at its end: renewed after it ended", len(again), len(evs))
	}
}

// TestClaimOutlivesWhatAsksForIt: a claim renewed every claimRenew is
// still there for finishedFor after its attempt ends, so a copy handed out
// again in that time finds whom to ask.
func TestClaimOutlivesWhatAsksForIt(t *testing.T) {
	if wire.ClaimTTL-claimRenew < finishedFor {
		t.Errorf("claims last %s, renewed every %s: %s after an attempt ends at worst, less than the %s a finished attempt is asked about",
			wire.ClaimTTL, claimRenew, wire.ClaimTTL-claimRenew, finishedFor)
	}
	if claimRenew <= 0 {
		t.Errorf("claimRenew %s", claimRenew)
	}
}
