package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestSteer checks what the deliverer does with operators' marks: a held
// job is parked on its held subject and not attempted, a deleted one is
// dropped, and an unmarked one is attempted after its attempt event is
// stored.
func TestSteer(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	kv, err := e.js.KeyValue(ctx, wire.BucketHeld)
	if err != nil {
		t.Fatal(err)
	}
	// Mark the jobs before the deliverer starts, as if the operator acted
	// between the fetch and the attempt.
	heldJob := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"a@routed.test"}})
	deletedJob := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"b@routed.test"}})
	okJob := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"c@routed.test"}})
	for id, action := range map[string]string{heldJob.JobId: admin.MarkHold, deletedJob.JobId: admin.MarkDelete} {
		b, _ := json.Marshal(admin.QueueMark{Action: action, Time: time.Now()})
		if _, err := kv.Put(ctx, id, b); err != nil {
			t.Fatal(err)
		}
	}
	e.service(t, func(s *Settings) { s.Routes = map[string]string{"routed.test": c.Addr} })

	if r := e.result(t, okJob, 10*time.Second); r.Recipients[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("unmarked job: %v", r.Recipients[0])
	}
	str, _ := e.js.Stream(ctx, wire.StreamJobs)
	var parked *jetstream.RawStreamMsg
	deadline := time.Now().Add(10 * time.Second)
	for parked == nil && time.Now().Before(deadline) {
		parked, _ = str.GetLastMsgForSubject(ctx, wire.HeldSubject(heldJob.JobId))
		time.Sleep(20 * time.Millisecond)
	}
	if parked == nil {
		t.Fatal("held job was not parked on its held subject")
	}
	var got sluicev1.Job
	if err := proto.Unmarshal(parked.Data, &got); err != nil || got.JobId != heldJob.JobId {
		t.Fatalf("parked copy is not the job: %v %v", got.JobId, err)
	}
	if parked.Header.Get("traceparent") == "" {
		t.Error("parked copy lost its trace context")
	}
	// Only the unmarked job arrived; the work queue is empty.
	if n := len(c.Messages()); n != 1 {
		t.Fatalf("%d messages arrived, want 1 (held and deleted jobs must not be attempted)", n)
	}
	for _, c := range wire.Classes {
		if _, err := str.GetLastMsgForSubject(ctx, wire.JobSubject(c, deletedJob.JobId)); err == nil {
			t.Fatal("deleted job still in the work queue")
		}
	}
	resStr, _ := e.js.Stream(ctx, wire.StreamResults)
	for _, j := range []*sluicev1.Job{heldJob, deletedJob} {
		if _, err := resStr.GetLastMsgForSubject(ctx, wire.ResultSubject(j.JobId)); err == nil {
			t.Errorf("job %s was attempted", j.JobId)
		}
	}
	// The attempt of the unmarked job was recorded, by this instance.
	evs, _ := e.js.Stream(ctx, wire.StreamEvents)
	raw, err := evs.GetLastMsgForSubject(ctx, wire.EventSubject(okJob.QueueId, wire.EventAttempt))
	if err != nil {
		t.Fatal("no attempt event:", err)
	}
	var ev admin.QueueEvent
	if err := admin.UnmarshalQueueEvent(raw.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.JobID != okJob.JobId || ev.Attempt != 1 || ev.Instance != "test" || ev.TraceID == "" || ev.State != admin.StateActive {
		t.Fatalf("attempt event = %+v", ev)
	}
	for _, j := range []*sluicev1.Job{heldJob, deletedJob} {
		if _, err := evs.GetLastMsgForSubject(ctx, wire.EventSubject(j.QueueId, wire.EventAttempt)); err == nil {
			t.Errorf("attempt recorded for steered job %s", j.JobId)
		}
	}
}
