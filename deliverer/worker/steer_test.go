package worker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/claim"
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
	raw, err := evs.GetLastMsgForSubject(ctx, wire.SubjectEvents+"."+wire.EventShard(okJob.QueueId)+".attempt.*")
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
		if _, err := evs.GetLastMsgForSubject(ctx, wire.SubjectEvents+"."+wire.EventShard(j.QueueId)+".attempt.*"); err == nil {
			t.Errorf("attempt recorded for steered job %s", j.JobId)
		}
	}
}

// TestMovedCopyIsNotAttempted: an operator moves a job to another class
// (`sluice queue prioritize`) while a deliverer holds the job's copy and is
// about to attempt it. The operator's claim is stored first, so the
// deliverer gives its copy back instead of attempting it, and the moved
// copy is delivered: the mail arrives once, with one attempt recorded.
func TestMovedCopyIsNotAttempted(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	s := testSettings(e)
	s.Routes = map[string]string{"moved.test": c.Addr}
	svc := newService(t, e, s)
	reached, proceed := make(chan struct{}), make(chan struct{})
	var classes []sluicev1.Priority
	var mu sync.Mutex
	svc.beforeAttempt = func(j *sluicev1.Job) {
		mu.Lock()
		classes = append(classes, j.Priority)
		mu.Unlock()
		if j.Priority == sluicev1.Priority_PRIORITY_NORMAL {
			close(reached)
			<-proceed
		}
	}
	startService(t, svc)
	job := e.enqueue(t, jobSpec{domain: "moved.test", rcpts: []string{"a@moved.test"}})
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the deliverer never took the job")
	}
	// What the scheduler's prioritize does: claim the copy, store the
	// moved copy, remove the old one.
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	old, err := jobs.GetLastMsgForSubject(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, job.JobId))
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(wire.ClaimSubject(job.QueueId, wire.EventReprioritised, old.Sequence))
	m.Data = admin.MarshalQueueEvent(&admin.QueueEvent{Type: wire.EventReprioritised, QueueID: job.QueueId, JobID: job.JobId, Time: time.Now()})
	out, err := claim.Take(ctx, e.js, m, job.QueueId, old.Sequence)
	if err != nil || !out.Won {
		t.Fatalf("the operator's claim: %+v, %v; want it stored", out, err)
	}
	moved := proto.Clone(job).(*sluicev1.Job)
	moved.Priority = sluicev1.Priority_PRIORITY_HIGH
	data, _ := proto.Marshal(moved)
	if _, err := e.js.Publish(ctx, wire.JobSubject(moved.Priority, job.JobId), data, jetstream.WithMsgID(job.JobId+"/moved")); err != nil {
		t.Fatal(err)
	}
	if err := jobs.DeleteMsg(ctx, old.Sequence); err != nil {
		t.Fatal(err)
	}
	close(proceed)

	r := e.result(t, job, 10*time.Second)
	check(t, r.Recipients[0], delivered)
	if r.Job.Priority != sluicev1.Priority_PRIORITY_HIGH {
		t.Errorf("the result is of the %s copy, want the moved (high) one", wire.ClassName(r.Job.Priority))
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(c.Messages()); n != 1 {
		t.Fatalf("%d messages arrived, want 1: the copy the deliverer held was attempted too", n)
	}
	if n := e.events(t, wire.EventAttempt)[job.JobId]; n != 1 {
		t.Errorf("%d attempt events, want 1", n)
	}
	// The deliverer's copy lost to the operator's claim, which holds it.
	holder, _, err := claim.Holder(ctx, e.js, job.QueueId, old.Sequence)
	if err != nil || holder != wire.EventReprioritised {
		t.Errorf("claim of the old copy held by %q (%v), want the operator's", holder, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(classes) != 2 || classes[0] != sluicev1.Priority_PRIORITY_NORMAL || classes[1] != sluicev1.Priority_PRIORITY_HIGH {
		t.Errorf("copies taken to the attempt: %v, want the normal one (given back) then the high one", classes)
	}
}

// TestReclaimedCopyIsAttempted is a deliverer that died after claiming a
// copy: its attempt event holds the claim, and the copy is handed out
// again. The next deliverer must attempt it (and record its own try), not
// give it back: the claim is an earlier attempt's, not an operator's move.
func TestReclaimedCopyIsAttempted(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	s := testSettings(e)
	s.Routes = map[string]string{"again.test": c.Addr}
	job := e.enqueue(t, jobSpec{domain: "again.test", rcpts: []string{"a@again.test"}})
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	copyMsg, err := jobs.GetLastMsgForSubject(ctx, wire.JobSubject(job.Priority, job.JobId))
	if err != nil {
		t.Fatal(err)
	}
	// The dead deliverer's claim.
	m := nats.NewMsg(wire.ClaimSubject(job.QueueId, wire.EventAttempt, copyMsg.Sequence))
	m.Data = admin.MarshalQueueEvent(&admin.QueueEvent{Type: wire.EventAttempt, QueueID: job.QueueId, JobID: job.JobId, Attempt: job.Attempt, State: admin.StateActive, Time: time.Now(), Instance: "dead"})
	if out, err := claim.Take(ctx, e.js, m, job.QueueId, copyMsg.Sequence); err != nil || !out.Won {
		t.Fatalf("the dead deliverer's claim: %+v, %v", out, err)
	}

	startService(t, newService(t, e, s))
	r := e.result(t, job, 10*time.Second)
	check(t, r.Recipients[0], delivered)
	if n := len(c.Messages()); n != 1 {
		t.Fatalf("%d messages arrived, want 1", n)
	}
	if n := e.events(t, wire.EventAttempt)[job.JobId]; n != 2 {
		t.Errorf("%d attempt events, want 2: the dead deliverer's and this one's", n)
	}
}

// newService is a deliverer on its own connection, logging nowhere.
func newService(t *testing.T, e *env, s Settings) *Service {
	t.Helper()
	_, js := e.ns.Connect(t)
	svc, err := New(s, Deps{JS: js, Tracer: e.tp.Tracer("test"), Meter: noop.NewMeterProvider().Meter(""),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// startService starts svc and closes it when the test ends.
func startService(t *testing.T, svc *Service) {
	t.Helper()
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = svc.Close(cctx)
	})
}
