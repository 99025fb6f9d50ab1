package scheduler

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/hold"
)

// event returns the last event of a type about a message: on its shard's
// subject (wire.EventShard), which other messages may share, or on one of
// its own.
func (h *harness) event(qid, typ string) admin.QueueEvent {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cons, err := h.js.OrderedConsumer(h.ctx, wire.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{
			wire.SubjectEvents + "." + wire.EventShard(qid) + "." + typ, wire.SubjectEvents + "." + qid + "." + typ}})
		if err != nil {
			h.t.Fatal(err)
		}
		var last *admin.QueueEvent
		for {
			msg, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
			if err != nil {
				break
			}
			var ev admin.QueueEvent
			if err := admin.UnmarshalQueueEvent(msg.Data(), &ev); err != nil {
				h.t.Fatal(err)
			}
			if ev.QueueID == qid {
				last = &ev
			}
		}
		if last != nil {
			return *last
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no %s event of %s", typ, qid)
		}
	}
}

// The splitter records a received event per job and the result processor
// an outcome event, in the message's trace; the index follows them.
func TestEventsRecorded(t *testing.T) {
	h := start(t, nil)
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("a@dest.test"), rcpt("b@dest.test")}, Body: []byte("x")}
	_, tid := h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, raw := h.job(normal, jid)

	rec := h.event(m.QueueId, wire.EventReceived)
	if rec.JobID != jid || rec.State != admin.StateReady || rec.TraceID != tid.String() || rec.Envelope == nil ||
		rec.Envelope.Sender != "s@origin.test" || len(rec.Envelope.Recipients) != 2 || rec.Envelope.Domain != "dest.test" {
		t.Fatalf("received event = %+v", rec)
	}
	h.publishResult(&sluicev1.Result{Job: job, Deliverer: "d-1", StartedUnixNano: time.Now().UnixNano(), Recipients: []*sluicev1.RecipientResult{
		outcome(job, "a@dest.test", delivered, 0, 250, "2.0.0", "ok"),
		outcome(job, "b@dest.test", temporary, sluicev1.Reason_REASON_REMOTE, 451, "4.2.1", "busy"),
	}}, jid+"/1/result", raw.Header)
	def := h.event(m.QueueId, wire.EventDeferred)
	if def.State != admin.StateDeferred || def.Attempt != 1 || def.Instance != "d-1" || def.Reason != "remote" ||
		def.Error != "451 4.2.1 busy" || def.NextAttempt.IsZero() || len(def.Recipients) != 2 || def.TraceID != tid.String() {
		t.Fatalf("deferred event = %+v", def)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		j, ok := h.svc.index.Get(jid)
		if ok && j.State.String() == admin.StateDeferred && len(j.Recipients) == 1 && j.Recipients[0] == "b@dest.test" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("index: %+v %v", j, ok)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A job held while it was being attempted has its retry parked on the held
// subject instead of scheduled; one deleted meanwhile gets no retry and
// finishes its message.
func TestResultObeysMarks(t *testing.T) {
	h := start(t, nil)
	for i, action := range []string{admin.MarkHold, admin.MarkDelete} {
		m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("b@dest.test")}, Body: []byte("x")}
		seq, _ := h.publishMessage(m)
		jid := wire.JobID(m.QueueId, 0)
		job, raw := h.job(normal, jid)
		if err := hold.Put(h.ctx, h.svc.held, jid, admin.QueueMark{Action: action, Time: time.Now()}); err != nil {
			t.Fatal(err)
		}
		// A mark reaches the scheduler's watched copy a moment after the
		// write (README: marks); the result comes after that moment.
		deadline := time.Now().Add(5 * time.Second)
		for {
			if m, ok, _ := h.svc.marks.Get(h.ctx, jid); ok && m.Action == action {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mark %s never reached the scheduler's copy", action)
			}
			time.Sleep(5 * time.Millisecond)
		}
		h.publishResult(&sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
			outcome(job, "b@dest.test", temporary, sluicev1.Reason_REASON_REMOTE, 451, "4.2.1", "busy"),
		}}, jid+"/1/result", raw.Header)
		h.settled(wire.StreamResults, wire.ConsumerResults, uint64(i+1))
		switch action {
		case admin.MarkHold:
			parked := h.lastMsg(wire.StreamJobs, wire.HeldSubject(jid))
			var next sluicev1.Job
			if err := proto.Unmarshal(parked.Data, &next); err != nil || next.Attempt != 2 {
				t.Fatalf("parked retry: attempt %d, %v", next.Attempt, err)
			}
			if parked.Header.Get(jetstream.ScheduleHeader) != "" || h.hasMsg(wire.StreamJobs, wire.ScheduleSubject(jid)) {
				t.Error("a held job's retry was scheduled")
			}
			if ev := h.event(m.QueueId, wire.EventDeferred); ev.State != admin.StateHeld {
				t.Errorf("deferred event state %q, want held", ev.State)
			}
		case admin.MarkDelete:
			if h.hasMsg(wire.StreamJobs, wire.ScheduleSubject(jid)) || h.hasMsg(wire.StreamJobs, wire.HeldSubject(jid)) {
				t.Error("a deleted job got a retry")
			}
			if ev := h.event(m.QueueId, wire.EventDeleted); ev.State != admin.StateDone {
				t.Errorf("deleted event = %+v", ev)
			}
			deadline := time.Now().Add(5 * time.Second)
			for h.msgExists(seq) {
				if time.Now().After(deadline) {
					t.Fatal("message of the deleted job not freed")
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}
