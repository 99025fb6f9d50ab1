package streams

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestEventsAndHeld checks the queue-operations layout: the events stream
// keeps events for queue.events_retention, held jobs are stored in
// SLUICE_JOBS, and the hold bucket exists.
func TestEventsAndHeld(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	q := config.DefaultQueue()
	q.EventsRetention = 200 * time.Hour
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	ev, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.CachedInfo().Config.MaxAge; got != 200*time.Hour {
		t.Fatalf("events MaxAge = %s, want 200h", got)
	}
	if _, err := js.Publish(ctx, wire.EventSubject("Q", wire.EventReceived, time.Now()), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, wire.HeldSubject("Q-0"), []byte("job"))
	if err != nil || ack.Stream != wire.StreamJobs {
		t.Fatalf("held job not stored in %s: %v %v", wire.StreamJobs, ack, err)
	}
	if _, err := js.KeyValue(ctx, wire.BucketHeld); err != nil {
		t.Fatal(err)
	}
}

// TestScheduleRollUp checks what `sluice queue retry` relies on: a second
// schedule on the same schedule subject replaces the first, so only one
// fires, and an @at in the past fires at once.
func TestScheduleRollUp(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	target := wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, "Q-0")
	publish := func(at time.Time, data string) {
		m := nats.NewMsg(wire.ScheduleSubject("Q-0"))
		m.Header.Set("Nats-Schedule", "@at "+at.UTC().Format(time.RFC3339))
		m.Header.Set("Nats-Schedule-Target", target)
		m.Data = []byte(data)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publish(time.Now().Add(time.Hour), "later")
	publish(time.Now().Add(-time.Minute), "now")
	cons, err := js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, jetstream.ConsumerConfig{
		Durable: "t", FilterSubject: wire.JobFilter(sluicev1.Priority_PRIORITY_NORMAL), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data()) != "now" {
		t.Fatalf("fired %q, want the replacing schedule", msg.Data())
	}
	msg.Ack()
	str, _ := js.Stream(ctx, wire.StreamJobs)
	if _, err := str.GetLastMsgForSubject(ctx, wire.ScheduleSubject("Q-0")); err == nil {
		t.Fatal("the replaced schedule is still pending")
	}
}
