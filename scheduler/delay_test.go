package scheduler

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// TestDelayWarning: a message still deferred after delay_warning gets one
// "delayed" DSN request for the recipients whose NOTIFY allows it, and the
// retry carries the flag so the next deferral does not warn again.
func TestDelayWarning(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.DelayWarning = time.Minute
		c.Scheduler.Retry.Min, c.Scheduler.Retry.Max = time.Hour, 2*time.Hour
	})
	m := &sluicev1.Message{
		MailFrom: "s@origin.test",
		Recipients: []*sluicev1.Recipient{
			rcpt("default@slow.test"), rcpt("asked@slow.test", sluicev1.Notify_NOTIFY_DELAY),
			rcpt("never@slow.test", sluicev1.Notify_NOTIFY_NEVER), rcpt("failonly@slow.test", sluicev1.Notify_NOTIFY_FAILURE),
		},
		ReceivedUnixNano: time.Now().Add(-2 * time.Minute).UnixNano(), // waiting for two minutes
	}
	h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, _ := h.job(normal, jid)
	var rrs []*sluicev1.RecipientResult
	for _, r := range m.Recipients {
		rrs = append(rrs, outcome(job, r.Address, temporary, sluicev1.Reason_REASON_REMOTE, 451, "4.2.0", "try later"))
	}
	h.publishResult(&sluicev1.Result{Job: job, Recipients: rrs}, jid+"/1/result")
	b, raw := h.bounce(jid)
	if b.Kind != sluicev1.BounceKind_BOUNCE_KIND_DELAYED {
		t.Fatalf("bounce kind %v, want delayed", b.Kind)
	}
	got := map[string]bool{}
	for _, r := range b.Recipients {
		got[r.Address] = true
	}
	if len(got) != 2 || !got["default@slow.test"] || !got["asked@slow.test"] {
		t.Fatalf("delay DSN recipients %v, want default@ and asked@ only", got)
	}
	if raw.Header.Get(jetstream.MsgIDHeader) != jid+"/1/delayed" {
		t.Errorf("Nats-Msg-Id %q", raw.Header.Get(jetstream.MsgIDHeader))
	}
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	sched := h.lastMsg(wire.StreamJobs, wire.ScheduleSubject(jid))
	var next sluicev1.Job
	if err := proto.Unmarshal(sched.Data, &next); err != nil {
		t.Fatal(err)
	}
	if !next.DelayWarned || next.Attempt != 2 {
		t.Fatalf("retry job: delay_warned=%v attempt=%d, want true and 2", next.DelayWarned, next.Attempt)
	}
	// The second deferral does not warn again.
	h.publishResult(&sluicev1.Result{Job: &next, Recipients: rrs}, jid+"/2/result")
	h.settled(wire.StreamResults, wire.ConsumerResults, 2)
	if n := h.count(wire.StreamBounces, wire.BounceSubject(jid)); n != 1 {
		t.Fatalf("%d bounce requests after two deferrals, want the one warning", n)
	}
	if got := h.counter("sluice_scheduler_bounces_requested_total", attrKind.String("delayed")); got != 1 {
		t.Errorf("bounces delayed = %d, want 1", got)
	}
}

// TestNoDelayWarningBeforeItsTime: a young deferred message warns nobody.
func TestNoDelayWarningBeforeItsTime(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Scheduler.DelayWarning = time.Hour
		c.Scheduler.Retry.Min, c.Scheduler.Retry.Max = time.Hour, 2*time.Hour
	})
	m := &sluicev1.Message{MailFrom: "s@origin.test", Recipients: []*sluicev1.Recipient{rcpt("r@slow.test")},
		ReceivedUnixNano: time.Now().UnixNano()}
	h.publishMessage(m)
	jid := wire.JobID(m.QueueId, 0)
	job, _ := h.job(normal, jid)
	h.publishResult(&sluicev1.Result{Job: job, Recipients: []*sluicev1.RecipientResult{
		outcome(job, "r@slow.test", temporary, sluicev1.Reason_REASON_REMOTE, 451, "4.2.0", "later"),
	}}, jid+"/1/result")
	h.settled(wire.StreamResults, wire.ConsumerResults, 1)
	if n := h.count(wire.StreamBounces, wire.BounceSubject(jid)); n != 0 {
		t.Fatalf("%d bounce requests for a message deferred for less than delay_warning", n)
	}
}
