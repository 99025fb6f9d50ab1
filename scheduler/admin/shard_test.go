package admin

import (
	"context"
	"strings"
	"testing"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// sameShard returns two queue ids of now whose events share a subject.
func sameShard(t *testing.T, now time.Time) (string, string) {
	t.Helper()
	seen := map[string]string{}
	for range 100 * wire.EventShards {
		q := wire.NewQueueID(now)
		if other, ok := seen[wire.EventShard(q)]; ok {
			return other, q
		}
		seen[wire.EventShard(q)] = q
	}
	t.Fatal("no two queue ids in one shard")
	return "", ""
}

// TestLogOfASharedShard: the events of two messages of one shard share
// their subjects; the log of each shows its own events alone, in the order
// they were stored, with those recorded after wire.ShardWindow on subjects
// of its own and those a Sluice before shards stored there. The shard is
// read for the message's first wire.ShardWindow only, and no further than
// a minute after the end of its last job.
func TestLogOfASharedShard(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	a, b := sameShard(t, now)
	if wire.EventSubject(a, wire.EventReceived, now) != wire.EventSubject(b, wire.EventReceived, now) {
		t.Fatalf("%s and %s: subjects %s and %s", a, b, wire.EventSubject(a, wire.EventReceived, now), wire.EventSubject(b, wire.EventReceived, now))
	}
	late := now.Add(wire.ShardWindow + time.Minute)
	ev := func(qid, typ string, at time.Time) api.QueueEvent {
		return api.QueueEvent{Type: typ, Time: at, QueueID: qid, JobID: wire.JobID(qid, 0), Attempt: 1}
	}
	pub := func(subject string, e api.QueueEvent) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, api.MarshalQueueEvent(&e)); err != nil {
			t.Fatal(err)
		}
	}
	record := func(qid, typ string, at time.Time) { pub(wire.EventSubject(qid, typ, at), ev(qid, typ, at)) }
	// a: received under its queue id, as before shards; the rest as now.
	pub(wire.SubjectEvents+"."+a+"."+wire.EventReceived, ev(a, wire.EventReceived, now))
	record(b, wire.EventReceived, now)
	pub(wire.ClaimSubject(a, wire.EventAttempt, 7), ev(a, wire.EventAttempt, now.Add(time.Second)))
	pub(wire.ClaimSubject(b, wire.EventAttempt, 8), ev(b, wire.EventAttempt, now.Add(time.Second)))
	record(b, wire.EventDeferred, now.Add(2*time.Second))
	record(a, wire.EventDelivered, now.Add(2*time.Second))
	record(b, wire.EventHeld, late) // past the window: on b's own subjects
	record(b, wire.EventReleased, late.Add(time.Minute))

	s := &Server{d: Deps{JS: js}}
	types := func(evs []api.QueueEvent, qid string) string {
		var out []string
		for _, e := range evs {
			if e.QueueID != qid {
				t.Errorf("log of %s holds an event of %s: %+v", qid, e.QueueID, e)
			}
			out = append(out, e.Type)
		}
		return "[" + strings.Join(out, " ") + "]"
	}
	for qid, want := range map[string]string{
		a: "[received attempt delivered]",
		b: "[received attempt deferred held released]",
	} {
		evs, err := s.history(ctx, qid)
		if err != nil {
			t.Fatal(qid, err)
		}
		if got := types(evs, qid); got != want {
			t.Errorf("log of %s: %s, want %s", qid, got, want)
		}
	}
	if evs, err := s.history(ctx, wire.JobID(b, 0)); err != nil || len(evs) != 5 {
		t.Errorf("log of job %s: %d events, %v", wire.JobID(b, 0), len(evs), err)
	}
	if _, err := s.history(ctx, wire.NewQueueID(now)); err == nil {
		t.Error("a queue id with no events has a log")
	}

	// A message accepted 30 min ago: an event stored now on its shard's
	// subjects is past the part of the shard its log reads (which the
	// services never do: they record such events on its own subjects).
	old := wire.NewQueueID(now.Add(-30 * time.Minute))
	pub(wire.SubjectEvents+"."+wire.EventShard(old)+"."+wire.EventReceived, ev(old, wire.EventReceived, now))
	record(old, wire.EventDeferred, now)
	evs, err := s.history(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if got := types(evs, old); got != "[deferred]" {
		t.Errorf("log of a message accepted 30 min ago: %s, want its shard read only for its first %s", got, wire.ShardWindow)
	}

	// An event of a, stored more than doneSlack after its end, is past
	// where the reading stops; b's later events count.
	ended := ev(a, wire.EventDelivered, now.Add(-2*time.Hour)) // ended two hours before it was stored
	pub(wire.SubjectEvents+"."+wire.EventShard(a)+"."+wire.EventDelivered, ended)
	record(a, wire.EventThrottled, now.Add(3*time.Second))
	record(b, wire.EventDelivered, late.Add(2*time.Minute))
	if evs, _ = s.history(ctx, a); types(evs, a) != "[received attempt delivered delivered]" {
		t.Errorf("log of %s after its end: %s, want the reading stopped before the event stored two hours after the end", a, types(evs, a))
	}
	if evs, _ = s.history(ctx, b); types(evs, b) != "[received attempt deferred held released delivered]" {
		t.Errorf("log of %s: %s", b, types(evs, b))
	}
	// Subjects: a's received and b's three late types under their queue
	// ids, old's deferred; in a and b's shard received, two claims,
	// deferred, delivered, throttled; old's received in its shard.
	st, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.NumSubjects != 12 {
		t.Errorf("the events on %d subjects (%v), want 12", info.State.NumSubjects, err)
	}
}
