package streams

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestScheduleFiresIntoJobSubject checks the retry mechanism the scheduler
// relies on: a Nats-Schedule @at message on sluice.sched.<job> lands on the
// job subject at its time and the schedule itself is removed.
func TestScheduleFiresIntoJobSubject(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	// Provisioning twice is harmless (every service does it on start).
	if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(1500 * time.Millisecond).UTC().Truncate(time.Second).Add(time.Second)
	m := nats.NewMsg(wire.ScheduleSubject("Q-0"))
	m.Header.Set("Nats-Schedule", "@at "+at.Format(time.RFC3339))
	m.Header.Set("Nats-Schedule-Target", wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, "Q-0"))
	m.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	m.Data = []byte("job")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
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
	if time.Now().Before(at) {
		t.Fatalf("schedule fired early: now %v, at %v", time.Now(), at)
	}
	if string(msg.Data()) != "job" || msg.Headers().Get("traceparent") == "" {
		t.Fatalf("fired message lost data or trace context: %q %v", msg.Data(), msg.Headers())
	}
	msg.Ack()
	if _, err := js.Stream(ctx, wire.StreamJobs); err != nil {
		t.Fatal(err)
	}
	str, _ := js.Stream(ctx, wire.StreamJobs)
	if _, err := str.GetLastMsgForSubject(ctx, wire.ScheduleSubject("Q-0")); err == nil {
		t.Fatal("the one-shot schedule is still stored after firing")
	}
}

func TestFullMessageStreamRefuses(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	q := config.DefaultQueue()
	q.MaxBytes = 4096
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = js.Publish(ctx, wire.MessageSubject(wire.NewQueueID(time.Now())), make([]byte, 1000))
	}
	if err == nil || !IsStorageFull(err) {
		t.Fatalf("want a storage-full error from a capped stream, got %v", err)
	}
}

// TestProvisionLeavesCurrentStreamsAlone: provisioning what already exists
// with the same settings sends no update (services start together, and an
// update racing another service's consumer creation is what we avoid);
// a changed setting still updates every stream and bucket it concerns.
func TestProvisionLeavesCurrentStreamsAlone(t *testing.T) {
	s := natstest.Start(t)
	nc, js := s.Connect(t)
	ctx := context.Background()
	var mu sync.Mutex
	var updates []string
	if _, err := nc.Subscribe("$JS.API.STREAM.UPDATE.>", func(m *nats.Msg) {
		mu.Lock()
		updates = append(updates, strings.TrimPrefix(m.Subject, "$JS.API.STREAM.UPDATE."))
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	seen := func() []string {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		out := slices.Clone(updates)
		updates = nil
		return out
	}
	q := config.DefaultQueue()
	for i := range 2 {
		if err := Provision(ctx, js, q); err != nil {
			t.Fatal(err)
		}
		if got := seen(); i == 1 && len(got) != 0 {
			t.Errorf("second provisioning updated %v", got)
		}
	}
	q.Lifetime += time.Hour
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	got := seen()
	for _, want := range []string{wire.StreamMessages, wire.StreamJobs, "KV_" + wire.BucketHeld, "KV_" + wire.BucketRefs, "OBJ_" + wire.BucketBodies} {
		if !slices.Contains(got, want) {
			t.Errorf("a longer lifetime did not update %s (updates: %v)", want, got)
		}
	}
	str, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := str.CachedInfo().Config.MaxAge, q.Lifetime+LifetimeGrace; got != want {
		t.Errorf("jobs max age %s, want %s", got, want)
	}

	// queue.duplicate_window reaches every queue stream, also one that
	// exists with another window (the ten minutes of earlier versions).
	for _, name := range []string{wire.StreamMessages, wire.StreamJobs, wire.StreamResults, wire.StreamBounces, wire.StreamEvents} {
		if d := streamConfig(t, js, name).Duplicates; d != q.DuplicateWindow {
			t.Errorf("%s remembers message ids for %s, want the default %s", name, d, q.DuplicateWindow)
		}
	}
	q.DuplicateWindow = 10 * time.Minute
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	seen()
	for _, name := range []string{wire.StreamMessages, wire.StreamJobs, wire.StreamResults, wire.StreamBounces, wire.StreamEvents} {
		if d := streamConfig(t, js, name).Duplicates; d != q.DuplicateWindow {
			t.Errorf("%s remembers message ids for %s after provisioning with %s", name, d, q.DuplicateWindow)
		}
	}
}

func streamConfig(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	str, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return str.CachedInfo().Config
}
