package admin

import (
	"context"
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
// their subjects; the log of each shows its own events alone, with those
// a Sluice before shards stored under the queue id itself, and the log of
// a message delivered long ago stops reading soon after its end.
func TestLogOfASharedShard(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	a, b := sameShard(t, now)
	if wire.EventSubject(a, wire.EventReceived) != wire.EventSubject(b, wire.EventReceived) {
		t.Fatalf("%s and %s: subjects %s and %s", a, b, wire.EventSubject(a, wire.EventReceived), wire.EventSubject(b, wire.EventReceived))
	}
	pub := func(subject string, ev api.QueueEvent) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, api.MarshalQueueEvent(&ev)); err != nil {
			t.Fatal(err)
		}
	}
	ev := func(qid, typ string, at time.Duration) api.QueueEvent {
		return api.QueueEvent{Type: typ, Time: now.Add(at), QueueID: qid, JobID: wire.JobID(qid, 0), Attempt: 1}
	}
	// a: received under its queue id, as before shards; the rest in the shard.
	pub(wire.SubjectEvents+"."+a+"."+wire.EventReceived, ev(a, wire.EventReceived, 0))
	pub(wire.EventSubject(b, wire.EventReceived), ev(b, wire.EventReceived, 0))
	pub(wire.ClaimSubject(a, wire.EventAttempt, 7), ev(a, wire.EventAttempt, time.Second))
	pub(wire.ClaimSubject(b, wire.EventAttempt, 8), ev(b, wire.EventAttempt, time.Second))
	pub(wire.EventSubject(b, wire.EventDeferred), ev(b, wire.EventDeferred, 2*time.Second))
	pub(wire.EventSubject(a, wire.EventDelivered), ev(a, wire.EventDelivered, 2*time.Second))

	s := &Server{d: Deps{JS: js}}
	types := func(evs []api.QueueEvent, qid string) []string {
		var out []string
		for _, e := range evs {
			if e.QueueID != qid {
				t.Errorf("log of %s holds an event of %s: %+v", qid, e.QueueID, e)
			}
			out = append(out, e.Type)
		}
		return out
	}
	for qid, want := range map[string]string{
		a: "[received attempt delivered]",
		b: "[received attempt deferred]",
	} {
		evs, err := s.history(ctx, qid)
		if err != nil {
			t.Fatal(qid, err)
		}
		if got := types(evs, qid); fmtList(got) != want {
			t.Errorf("log of %s: %v, want %s", qid, got, want)
		}
	}
	if evs, err := s.history(ctx, wire.JobID(b, 0)); err != nil || len(evs) != 3 {
		t.Errorf("log of job %s: %d events, %v", wire.JobID(b, 0), len(evs), err)
	}
	if _, err := s.history(ctx, wire.NewQueueID(now)); err == nil {
		t.Error("a queue id with no events has a log")
	}

	// An event of a, stored more than doneSlack after its end, is past
	// where the reading stops; b is not ended, so its later events count.
	st, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	late := ev(a, wire.EventThrottled, 3*time.Second)
	late.Time = now.Add(-time.Hour) // ended an hour before it was stored
	first, _ := s.history(ctx, a)
	ended := first[len(first)-1]
	ended.Time = now.Add(-2 * time.Hour)
	pub(wire.EventSubject(a, wire.EventDelivered), ended)
	pub(wire.EventSubject(a, wire.EventThrottled), late)
	pub(wire.EventSubject(b, wire.EventDelivered), ev(b, wire.EventDelivered, 3*time.Second))
	evs, err := s.history(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtList(types(evs, a)); got != "[received attempt delivered delivered]" {
		t.Errorf("log of %s after its end: %s, want the reading stopped before the event stored an hour after the end", a, got)
	}
	evs, _ = s.history(ctx, b)
	if got := fmtList(types(evs, b)); got != "[received attempt deferred delivered]" {
		t.Errorf("log of %s: %s", b, got)
	}
	// Named by queue id, the events above were on 8 subjects; in the
	// shard, a's received event (stored as before shards) and six.
	if info, err := st.Info(ctx); err != nil || info.State.NumSubjects != 7 {
		t.Errorf("two messages' events on %d subjects (%v), want 7", info.State.NumSubjects, err)
	}
}

func fmtList(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out + "]"
}
