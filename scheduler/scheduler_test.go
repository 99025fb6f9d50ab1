package scheduler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/scheduler/refs"
)

const (
	high   = sluicev1.Priority_PRIORITY_HIGH
	normal = sluicev1.Priority_PRIORITY_NORMAL
	bulk   = sluicev1.Priority_PRIORITY_BULK

	delivered = sluicev1.Outcome_OUTCOME_DELIVERED
	temporary = sluicev1.Outcome_OUTCOME_TEMPORARY
	permanent = sluicev1.Outcome_OUTCOME_PERMANENT
)

// Three recipients over two domains become two jobs on the right class
// subjects, with the message's fields, and an open-jobs entry listing both.
func TestSplitByDomain(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.PriorityRules = policy.Rules{{RecipientDomain: "two.test", Class: "bulk"}}
		c.Queue.Lifetime = 2 * time.Hour
	})
	received := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	m := &sluicev1.Message{
		MailFrom:         "sender@origin.test",
		Recipients:       []*sluicev1.Recipient{rcpt("a@One.test", sluicev1.Notify_NOTIFY_SUCCESS), rcpt("b@two.test"), rcpt("c@ONE.TEST")},
		ReceivedUnixNano: received.UnixNano(),
		MtPriority:       5, HasMtPriority: true, // high, except where the rule says bulk
		Ret: "HDRS", Envid: "env-1", Smtputf8: true, BodyType: "8BITMIME", RequireTls: true,
		BodyObject: "", Body: []byte("Subject: hi\r\n\r\nhello\r\n"),
	}
	seq, tid := h.publishMessage(m)
	qid := m.QueueId

	j0, raw0 := h.job(high, wire.JobID(qid, 0))
	j1, raw1 := h.job(bulk, wire.JobID(qid, 1))
	h.settled(wire.StreamMessages, wire.ConsumerScheduler, 1)

	if j0.Domain != "one.test" || len(j0.Recipients) != 2 || j0.Recipients[0].Address != "a@One.test" || j0.Recipients[1].Address != "c@ONE.TEST" {
		t.Errorf("job 0: domain %q recipients %v", j0.Domain, j0.Recipients)
	}
	if j0.Recipients[0].Notify != uint32(sluicev1.Notify_NOTIFY_SUCCESS) {
		t.Errorf("job 0 lost NOTIFY: %v", j0.Recipients[0])
	}
	if j1.Domain != "two.test" || len(j1.Recipients) != 1 || j1.Recipients[0].Address != "b@two.test" {
		t.Errorf("job 1: domain %q recipients %v", j1.Domain, j1.Recipients)
	}
	for i, j := range []*sluicev1.Job{j0, j1} {
		if j.MsgSeq != seq || j.JobsTotal != 2 || j.Attempt != 1 || j.QueueId != qid || j.MailFrom != "sender@origin.test" ||
			j.ReceivedUnixNano != received.UnixNano() || j.ExpiresUnixNano != received.Add(2*time.Hour).UnixNano() ||
			j.Ret != "HDRS" || j.Envid != "env-1" || !j.Smtputf8 || j.BodyType != "8BITMIME" || !j.RequireTls ||
			j.BodySize != int64(len(m.Body)) || j.ScheduledUnixNano == 0 || j.IsDsn {
			t.Errorf("job %d fields: %v", i, j)
		}
	}
	for i, raw := range []*jetstream.RawStreamMsg{raw0, raw1} {
		jid := wire.JobID(qid, i)
		if got := raw.Header.Get(jetstream.MsgIDHeader); got != jid+"/1" {
			t.Errorf("job %d Nats-Msg-Id %q", i, got)
		}
		if raw.Header.Get(wire.HeaderQueueID) != qid || raw.Header.Get(wire.HeaderJobID) != jid || raw.Header.Get(wire.HeaderAttempt) != "1" {
			t.Errorf("job %d headers %v", i, raw.Header)
		}
		if got := traceID(t, raw.Header); got != tid {
			t.Errorf("job %d trace %s, want the message's %s", i, got, tid)
		}
	}

	kv, err := h.js.KeyValue(h.ctx, wire.BucketRefs)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(h.ctx, qid)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(e.Value()), wire.JobID(qid, 0)+"\n"+wire.JobID(qid, 1); got != want {
		t.Errorf("refs entry %q, want %q", got, want)
	}

	if got := h.counter("sluice_scheduler_jobs_created_total", attrClass.String("high")); got != 1 {
		t.Errorf("jobs created high = %d", got)
	}
	if got := h.counter("sluice_scheduler_jobs_created_total", attrClass.String("bulk")); got != 1 {
		t.Errorf("jobs created bulk = %d", got)
	}
	sp := h.span("scheduler.split", attrQueueID.String(qid))
	if sp.SpanContext().TraceID() != tid || sp.Parent().TraceID() != tid {
		t.Errorf("split span is not in the message's trace")
	}
	if v, _ := spanAttr(sp, attrJobs); v.AsInt64() != 2 {
		t.Errorf("split span sluice.jobs = %v", v)
	}
	// The message stays until its jobs are done.
	if !h.msgExists(seq) {
		t.Error("message deleted by the split")
	}
}

// MT-PRIORITY picks the class when no rule matches, and a rule wins over it.
func TestPriorityClasses(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.PriorityRules = policy.Rules{
			{SenderDomain: "news.test", Class: "bulk"},
			{Sender: "<>", Class: "high"},
		}
	})
	cases := []struct {
		name  string
		from  string
		mt    int32
		hasMT bool
		want  sluicev1.Priority
	}{
		{"no MT-PRIORITY", "a@x.test", 0, false, normal},
		{"MT-PRIORITY 3", "a@x.test", 3, true, high},
		{"MT-PRIORITY -2", "a@x.test", -2, true, bulk},
		{"MT-PRIORITY 0", "a@x.test", 0, true, normal},
		{"rule beats MT-PRIORITY 9", "letters@News.test", 9, true, bulk},
		{"null sender rule", "", -5, true, high},
	}
	for _, c := range cases {
		m := &sluicev1.Message{MailFrom: c.from, Recipients: []*sluicev1.Recipient{rcpt("r@dest.test")}, MtPriority: c.mt, HasMtPriority: c.hasMT}
		h.publishMessage(m)
		j, _ := h.job(c.want, wire.JobID(m.QueueId, 0))
		if j.Priority != c.want || j.JobsTotal != 1 {
			t.Errorf("%s: priority %v, want %v", c.name, j.Priority, c.want)
		}
	}
	h.settled(wire.StreamMessages, wire.ConsumerScheduler, uint64(len(cases)))
	// Single-job messages need no open-jobs entry.
	kv, _ := h.js.KeyValue(h.ctx, wire.BucketRefs)
	if st, err := kv.Status(h.ctx); err != nil || st.Values() != 0 {
		t.Errorf("refs bucket holds %v values (err %v), want 0", st.Values(), err)
	}
}

// A message that cannot be decoded, or has no recipients, is terminated and
// counted, and does not block the consumer.
func TestSplitTerminatesBadInput(t *testing.T) {
	h := start(t, nil)
	if _, err := h.js.Publish(h.ctx, wire.MessageSubject("GARBAGE"), []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	h.publishMessage(&sluicev1.Message{MailFrom: "a@x.test"})
	good := &sluicev1.Message{MailFrom: "a@x.test", Recipients: []*sluicev1.Recipient{rcpt("b@y.test")}}
	h.publishMessage(good)
	h.job(normal, wire.JobID(good.QueueId, 0))
	h.settled(wire.StreamMessages, wire.ConsumerScheduler, 3)
	if got := h.counter("sluice_scheduler_terminated_total", attrInput.String("messages"), attrReason.String("undecodable")); got != 1 {
		t.Errorf("undecodable terminated = %d", got)
	}
	if got := h.counter("sluice_scheduler_terminated_total", attrInput.String("messages"), attrReason.String("no_recipients")); got != 1 {
		t.Errorf("no_recipients terminated = %d", got)
	}
}

// A temporary failure schedules the next attempt as a message schedule: it
// waits on the schedule subject, then appears on the job subject with
// attempt 2 and only the deferred recipients, in the same trace.
func TestTemporaryResultSchedulesRetry(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.Retry = RetrySettings{Min: time.Second, Max: 4 * time.Second, Jitter: 0.2}
	})
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("ok@dest.test"), rcpt("later@dest.test", sluicev1.Notify_NOTIFY_DELAY)}}
	seq, tid := h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)

	cons, err := h.js.CreateOrUpdateConsumer(h.ctx, wire.StreamJobs, jetstream.ConsumerConfig{
		Durable: wire.DelivererConsumer(normal), FilterSubject: wire.JobFilter(normal), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	first, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var job sluicev1.Job
	if err := proto.Unmarshal(first.Data(), &job); err != nil {
		t.Fatal(err)
	}
	if err := first.DoubleAck(h.ctx); err != nil {
		t.Fatal(err)
	}

	h.publishResult(&sluicev1.Result{Job: &job, Recipients: []*sluicev1.RecipientResult{
		outcome(&job, "ok@dest.test", delivered, 0, 250, "2.0.0", "ok"),
		outcome(&job, "later@dest.test", temporary, sluicev1.Reason_REASON_CONNECT, 0, "4.4.1", "connection refused"),
	}}, jid+"/1/result", first.Headers())
	sched := h.lastMsg(wire.StreamJobs, wire.ScheduleSubject(jid))
	published := time.Now()

	// The retry waits on the schedule subject, not on the job subject.
	if got := sched.Header.Get(jetstream.ScheduleTargetHeader); got != wire.JobSubject(normal, jid) {
		t.Errorf("schedule target %q", got)
	}
	spec := sched.Header.Get(jetstream.ScheduleHeader)
	at, err := time.Parse(time.RFC3339, strings.TrimPrefix(spec, "@at "))
	if !strings.HasPrefix(spec, "@at ") || err != nil {
		t.Fatalf("schedule header %q: %v", spec, err)
	}
	if sched.Header.Get(jetstream.MsgIDHeader) != jid+"/2" || sched.Header.Get(wire.HeaderAttempt) != "2" {
		t.Errorf("schedule headers %v", sched.Header)
	}
	if early, err := cons.Fetch(1, jetstream.FetchMaxWait(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	} else {
		for msg := range early.Messages() {
			t.Fatalf("a job appeared before its schedule fired: %s", msg.Subject())
		}
	}
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)

	retry, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	arrived := time.Now()
	if arrived.Before(at) {
		t.Errorf("retry arrived at %s, before its schedule %s", arrived, at)
	}
	if at.Sub(published) > 3*time.Second {
		t.Errorf("retry scheduled for %s, %s after the result; want about retry.min (1s)", at, at.Sub(published))
	}
	var next sluicev1.Job
	if err := proto.Unmarshal(retry.Data(), &next); err != nil {
		t.Fatal(err)
	}
	_ = retry.Ack()
	if next.Attempt != 2 || len(next.Recipients) != 1 || next.Recipients[0].Address != "later@dest.test" ||
		next.Recipients[0].Notify != uint32(sluicev1.Notify_NOTIFY_DELAY) || next.Priority != normal ||
		next.LastReason != sluicev1.Reason_REASON_CONNECT || next.LastError != "4.4.1 connection refused" ||
		next.NotBeforeUnixNano != at.UnixNano() || next.MsgSeq != seq || next.ExpiresUnixNano != job.ExpiresUnixNano {
		t.Errorf("retry job %v", &next)
	}
	if retry.Subject() != wire.JobSubject(normal, jid) || retry.Headers().Get(wire.HeaderAttempt) != "2" {
		t.Errorf("retry on %s with headers %v", retry.Subject(), retry.Headers())
	}
	if got := traceID(t, retry.Headers()); got != tid {
		t.Errorf("retry trace %s, want the message's %s", got, tid)
	}
	if h.hasMsg(wire.StreamJobs, wire.ScheduleSubject(jid)) {
		t.Error("the one-shot schedule is still stored after firing")
	}

	sp := h.span("scheduler.result", attrJobID.String(jid))
	if v, _ := spanAttr(sp, attrDeferReason); v.AsString() != "connect" {
		t.Errorf("sluice.defer_reason = %q", v.AsString())
	}
	if sp.SpanContext().TraceID() != tid {
		t.Error("result span is not in the message's trace")
	}
	if got := h.counter("sluice_scheduler_retries_scheduled_total", attrReason.String("connect")); got != 1 {
		t.Errorf("retries scheduled = %d", got)
	}
	if got := h.histogramCount("sluice_scheduler_delivery_delay_seconds"); got != 1 {
		t.Errorf("delivery delay observations = %d, want 1 (the delivered recipient)", got)
	}
	// One recipient is still pending: the message stays.
	if !h.msgExists(seq) {
		t.Error("message deleted while a retry is pending")
	}
}

// A temporary failure after the queue lifetime bounces with 4.4.7 and
// finishes the message.
func TestExpiry(t *testing.T) {
	h := start(t, func(c *Config) { c.Queue.Lifetime = 2 * time.Second })
	m := &sluicev1.Message{
		MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("r@slow.test")},
		ReceivedUnixNano: time.Now().Add(-3 * time.Second).UnixNano(), // accepted 3s ago
	}
	seq, _ := h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, _ := h.job(normal, jid)
	if time.Unix(0, job.ExpiresUnixNano).After(time.Now()) {
		t.Fatalf("job expires at %s, want 2s after acceptance", time.Unix(0, job.ExpiresUnixNano))
	}
	h.publishResult(&sluicev1.Result{Job: job, OriginalHeaders: []byte("Subject: x\r\n"), Recipients: []*sluicev1.RecipientResult{
		outcome(job, "r@slow.test", temporary, sluicev1.Reason_REASON_TIMEOUT, 421, "4.4.2", "timeout"),
	}}, jid+"/1/result")
	b, raw := h.bounce(jid)
	if b.Kind != sluicev1.BounceKind_BOUNCE_KIND_FAILED || len(b.Recipients) != 1 {
		t.Fatalf("bounce %v", b)
	}
	r := b.Recipients[0]
	if r.EnhancedCode != "4.4.7" || r.Reason != sluicev1.Reason_REASON_EXPIRED || !strings.HasPrefix(r.Text, "delivery time expired") || r.Address != "r@slow.test" {
		t.Errorf("expired recipient %v", r)
	}
	if raw.Header.Get(jetstream.MsgIDHeader) != jid+"/1/failed" || string(b.OriginalHeaders) != "Subject: x\r\n" || b.Job.JobId != jid {
		t.Errorf("bounce headers %v / %v", raw.Header, b)
	}
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	if h.hasMsg(wire.StreamJobs, wire.ScheduleSubject(jid)) {
		t.Error("an expired job was scheduled again")
	}
	if got := h.counter("sluice_scheduler_expired_total"); got != 1 {
		t.Errorf("expired = %d", got)
	}
	if got := h.counter("sluice_scheduler_bounces_requested_total", attrKind.String("failed")); got != 1 {
		t.Errorf("bounces failed = %d", got)
	}
	if h.msgExists(seq) {
		t.Error("expired message still queued")
	}
}

// A permanent failure bounces, and the only job's completion deletes the
// message and its body object.
// The body is named by its chunk id (as the ingress stores it), or by
// its name only (as before the id was recorded); either way it is gone.
func TestPermanentBounceDeletesMessageAndBody(t *testing.T) {
	for _, nameOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("name only %v", nameOnly), func(t *testing.T) { testBounceDeletes(t, nameOnly) })
	}
}

func testBounceDeletes(t *testing.T, nameOnly bool) {
	h := start(t, nil)
	qid := wire.NewQueueID(time.Now())
	obs, err := h.js.ObjectStore(h.ctx, wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.PutBytes(h.ctx, qid, []byte("large body"))
	if err != nil {
		t.Fatal(err)
	}
	m := &sluicev1.Message{QueueId: qid, MailFrom: "s@origin.test", BodyObject: qid, BodySize: 10,
		Recipients: []*sluicev1.Recipient{rcpt("gone@dest.test"), rcpt("never@dest.test", sluicev1.Notify_NOTIFY_NEVER), rcpt("ok@dest.test")}}
	if !nameOnly {
		m.BodyNuid = info.NUID
	}
	seq, _ := h.publishMessage(m)
	jid := wire.JobID(qid, 0)
	job, _ := h.job(normal, jid)
	if job.BodyObject != qid || job.BodySize != 10 || job.BodyNuid != m.BodyNuid {
		t.Errorf("job body reference %q %d %q", job.BodyObject, job.BodySize, job.BodyNuid)
	}
	h.publishResult(&sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
		outcome(job, "gone@dest.test", permanent, sluicev1.Reason_REASON_REMOTE, 550, "5.1.1", "no such user"),
		outcome(job, "never@dest.test", permanent, sluicev1.Reason_REASON_REMOTE, 550, "5.1.1", "no such user"),
		outcome(job, "ok@dest.test", delivered, 0, 250, "2.0.0", "ok"),
	}}, jid+"/1/result")
	b, _ := h.bounce(jid)
	// NOTIFY=NEVER keeps its recipient out of the DSN; the delivered one
	// did not ask for a success DSN.
	if b.Kind != sluicev1.BounceKind_BOUNCE_KIND_FAILED || len(b.Recipients) != 1 || b.Recipients[0].Address != "gone@dest.test" ||
		b.Recipients[0].Code != 550 || b.Recipients[0].EnhancedCode != "5.1.1" {
		t.Errorf("bounce %v", b)
	}
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	if n := h.count(wire.StreamBounces, wire.BounceSubject(jid)); n != 1 {
		t.Errorf("%d bounce requests, want 1", n)
	}
	if h.msgExists(seq) {
		t.Error("message still queued after its only job finished")
	}
	if _, err := obs.GetInfo(h.ctx, qid); err == nil {
		t.Error("body object still stored after the message finished")
	}
	// By chunk id, chunks and metadata are purged: no deletion marker
	// stays behind in the bucket's stream.
	st, err := h.js.Stream(h.ctx, "OBJ_"+wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; !nameOnly && n != 0 {
		t.Errorf("the bodies' stream holds %d messages after the deletion, want 0", n)
	}
	if got := h.counter("sluice_scheduler_messages_completed_total"); got != 1 {
		t.Errorf("messages completed = %d", got)
	}
}

// No DSN is ever requested for mail from the null sender or for a DSN.
func TestNoBounceToNullSenderOrDSN(t *testing.T) {
	h := start(t, nil)
	for i, m := range []*sluicev1.Message{
		{MailFrom: "", Recipients: []*sluicev1.Recipient{rcpt("gone@dest.test", sluicev1.Notify_NOTIFY_SUCCESS|sluicev1.Notify_NOTIFY_FAILURE)}},
		{MailFrom: "postmaster@origin.test", IsDsn: true, Recipients: []*sluicev1.Recipient{rcpt("gone@dest.test")}},
	} {
		h.publishMessage(m)
		jid := wire.JobID(m.QueueId, 0)
		job, _ := h.job(normal, jid)
		if job.IsDsn != m.IsDsn {
			t.Errorf("is_dsn not copied")
		}
		h.publishResult(&sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
			outcome(job, "gone@dest.test", permanent, sluicev1.Reason_REASON_REMOTE, 550, "5.1.1", "no such user"),
		}}, jid+"/1/result")
		h.settled(wire.StreamResults, wire.ConsumerResults, uint64(i+1))
		if h.hasMsg(wire.StreamBounces, wire.BounceSubject(jid)) {
			t.Errorf("message %d: a bounce was requested", i)
		}
	}
	if got := h.counter("sluice_scheduler_bounces_suppressed_total", attrReason.String("null_sender")); got != 1 {
		t.Errorf("suppressed null_sender = %d", got)
	}
	if got := h.counter("sluice_scheduler_bounces_suppressed_total", attrReason.String("dsn")); got != 1 {
		t.Errorf("suppressed dsn = %d", got)
	}
	if got := h.counter("sluice_scheduler_bounces_requested_total"); got != 0 {
		t.Errorf("bounces requested = %d", got)
	}
}

// NOTIFY=SUCCESS asks for a success DSN naming only the recipients that
// asked.
func TestSuccessDSN(t *testing.T) {
	h := start(t, nil)
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{
		rcpt("tell@dest.test", sluicev1.Notify_NOTIFY_SUCCESS|sluicev1.Notify_NOTIFY_FAILURE), rcpt("quiet@dest.test"),
	}}
	h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, _ := h.job(normal, jid)
	h.publishResult(&sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
		outcome(job, "tell@dest.test", delivered, 0, 250, "2.0.0", "queued as 1"),
		outcome(job, "quiet@dest.test", delivered, 0, 250, "2.0.0", "queued as 2"),
	}}, jid+"/1/result")
	b, raw := h.bounce(jid)
	if b.Kind != sluicev1.BounceKind_BOUNCE_KIND_DELIVERED || len(b.Recipients) != 1 || b.Recipients[0].Address != "tell@dest.test" {
		t.Errorf("success DSN request %v", b)
	}
	if raw.Header.Get(jetstream.MsgIDHeader) != jid+"/1/delivered" {
		t.Errorf("Nats-Msg-Id %q", raw.Header.Get(jetstream.MsgIDHeader))
	}
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	if got := h.counter("sluice_scheduler_bounces_requested_total", attrKind.String("delivered")); got != 1 {
		t.Errorf("bounces delivered = %d", got)
	}
	if got := h.histogramCount("sluice_scheduler_delivery_delay_seconds"); got != 2 {
		t.Errorf("delivery delay observations = %d, want 2", got)
	}
}

// A two-job message is deleted after its last job finishes, not after the
// first, and a redelivered result changes nothing.
func TestMessageDeletedAfterLastJob(t *testing.T) {
	h := start(t, nil)
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("a@one.test"), rcpt("b@two.test")}}
	seq, _ := h.publishMessage(m)
	j0, _ := h.job(normal, wire.JobID(m.QueueId, 0))
	j1, _ := h.job(normal, wire.JobID(m.QueueId, 1))
	kv, err := h.js.KeyValue(h.ctx, wire.BucketRefs)
	if err != nil {
		t.Fatal(err)
	}
	done0 := &sluicev1.Result{Job: j0, Recipients: []*sluicev1.RecipientResult{outcome(j0, "a@one.test", delivered, 0, 250, "2.0.0", "ok")}}
	h.publishResult(done0, j0.JobId+"/1/result")
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	if !h.msgExists(seq) {
		t.Fatal("message deleted after the first of two jobs")
	}
	open, err := refs.Open(h.ctx, kv, m.QueueId)
	if err != nil || len(open) != 1 || open[0] != j1.JobId {
		t.Fatalf("open jobs %v (%v), want [%s]", open, err, j1.JobId)
	}

	// The same result again, as after a crash before its ack.
	h.publishResult(done0, j0.JobId+"/1/result-redelivered")
	h.settled(wire.StreamResults, wire.ConsumerResults, 2)
	if !h.msgExists(seq) {
		t.Fatal("a redelivered result of the first job deleted the message")
	}
	if open, _ := refs.Open(h.ctx, kv, m.QueueId); len(open) != 1 || open[0] != j1.JobId {
		t.Fatalf("open jobs after redelivery %v", open)
	}

	h.publishResult(&sluicev1.Result{Job: j1, Recipients: []*sluicev1.RecipientResult{
		outcome(j1, "b@two.test", permanent, sluicev1.Reason_REASON_REMOTE, 550, "5.7.1", "rejected"),
	}}, j1.JobId+"/1/result")
	h.settled(wire.StreamResults, wire.ConsumerResults, 3)
	if h.msgExists(seq) {
		t.Error("message still queued after its last job finished")
	}
	if _, err := kv.Get(h.ctx, m.QueueId); err == nil {
		t.Error("open-jobs entry left behind")
	}
	if got := h.counter("sluice_scheduler_messages_completed_total"); got != 1 {
		t.Errorf("messages completed = %d", got)
	}

	// A late redelivery of the last result is harmless too.
	h.publishResult(done0, j0.JobId+"/1/result-late")
	h.settled(wire.StreamResults, wire.ConsumerResults, 4)
	if got := h.counter("sluice_scheduler_messages_completed_total"); got != 1 {
		t.Errorf("messages completed after a late redelivery = %d", got)
	}
}

// A redelivered temporary result does not schedule the retry twice.
func TestRedeliveredResultSchedulesOnce(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.Retry = RetrySettings{Min: time.Hour, Max: 2 * time.Hour} // never fires during the test
	})
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("a@one.test")}}
	seq, _ := h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, _ := h.job(normal, jid)
	res := &sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
		outcome(job, "a@one.test", temporary, sluicev1.Reason_REASON_DNS, 0, "4.4.3", "SERVFAIL"),
	}}
	h.publishResult(res, jid+"/1/result")
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	h.publishResult(res, jid+"/1/result-again")
	h.settled(wire.StreamResults, wire.ConsumerResults, 2)
	if n := h.count(wire.StreamJobs, wire.ScheduleSubject(jid)); n != 1 {
		t.Errorf("%d schedules stored, want 1", n)
	}
	if got := h.counter("sluice_scheduler_retries_scheduled_total", attrReason.String("dns")); got != 1 {
		t.Errorf("retries scheduled = %d, want 1", got)
	}
	if !h.msgExists(seq) {
		t.Error("message deleted while its retry is pending")
	}
}

// Close is safe twice and stops the consumers.
func TestCloseTwice(t *testing.T) {
	h := start(t, nil)
	if err := h.svc.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if h.svc.Ready() == nil {
		t.Error("ready after Close")
	}
	if err := h.svc.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestLostConsumerIsProvisionedAgain: a consumer deleted under a running
// scheduler (an operator, or replicas lost) makes it unready, not silently
// idle; it provisions the consumer again and splits what arrives.
func TestLostConsumerIsProvisionedAgain(t *testing.T) {
	h := start(t, nil)
	first := &sluicev1.Message{MailFrom: "a@x.test", Recipients: []*sluicev1.Recipient{rcpt("b@y.test")}}
	h.publishMessage(first)
	h.job(normal, wire.JobID(first.QueueId, 0))
	if err := h.svc.Ready(); err != nil {
		t.Fatalf("Ready before the loss = %v", err)
	}
	if err := h.js.DeleteConsumer(h.ctx, wire.StreamMessages, wire.ConsumerScheduler); err != nil {
		t.Fatal(err)
	}
	second := &sluicev1.Message{MailFrom: "a@x.test", Recipients: []*sluicev1.Recipient{rcpt("c@y.test")}}
	h.publishMessage(second)
	j, _ := h.job(normal, wire.JobID(second.QueueId, 0))
	if len(j.Recipients) != 1 || j.Recipients[0].Address != "c@y.test" {
		t.Fatalf("job of the message sent after the loss: %v", j.Recipients)
	}
	if _, err := h.js.Consumer(h.ctx, wire.StreamMessages, wire.ConsumerScheduler); err != nil {
		t.Fatalf("consumer not provisioned again: %v", err)
	}
	if err := h.svc.Ready(); err != nil {
		t.Fatalf("Ready after recovery = %v", err)
	}
}
