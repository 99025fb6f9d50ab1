package policy

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

func TestDecide(t *testing.T) {
	const rr2host = "mx.x"
	now := time.Unix(1_800_000_000, 0)
	job := &sluicev1.Job{
		JobId: "Q-0", Attempt: 2, ExpiresUnixNano: now.Add(time.Hour).UnixNano(),
		Recipients: []*sluicev1.Recipient{{Address: "a@x"}, {Address: "b@x"}, {Address: "c@x", Notify: 8}, {Address: "d@x"}},
	}
	results := []*sluicev1.RecipientResult{
		{Address: "a@x", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED},
		{Address: "b@x", Outcome: sluicev1.Outcome_OUTCOME_PERMANENT, Code: 550, EnhancedCode: "5.1.1"},
		{Address: "c@x", Outcome: sluicev1.Outcome_OUTCOME_TEMPORARY, Reason: sluicev1.Reason_REASON_REMOTE, Code: 451, EnhancedCode: "4.7.1", Text: "later", Notify: 8, RemoteHost: rr2host},
		// d@x is not reported: it is retried as an internal problem.
	}
	d := Decide(job, results, now)
	if len(d.Delivered) != 1 || len(d.Failed) != 1 || len(d.Retry) != 2 || d.Expired || d.Final() {
		t.Fatalf("decision %+v", d)
	}
	if d.Retry[1].Address != "d@x" || d.Retry[1].Reason != sluicev1.Reason_REASON_INTERNAL {
		t.Errorf("unreported recipient: %v", d.Retry[1])
	}

	at := now.Add(10 * time.Minute)
	next := RetryJob(job, d.Retry, now, at)
	if next.Attempt != 3 || len(next.Recipients) != 2 || next.Recipients[0].Address != "c@x" || next.Recipients[0].Notify != 8 ||
		next.LastReason != sluicev1.Reason_REASON_REMOTE || next.LastError != "451 4.7.1 later" ||
		next.NotBeforeUnixNano != at.UnixNano() || next.ScheduledUnixNano != now.UnixNano() || next.JobId != "Q-0" {
		t.Errorf("retry job %v", next)
	}
	if len(job.Recipients) != 4 || job.Attempt != 2 {
		t.Error("RetryJob changed the original job")
	}

	// At the deadline the temporary failures become 4.4.7 failures.
	d = Decide(job, results, time.Unix(0, job.ExpiresUnixNano))
	if !d.Expired || !d.Final() || len(d.Failed) != 3 {
		t.Fatalf("expired decision %+v", d)
	}
	e := d.Failed[1]
	if e.Address != "c@x" || e.EnhancedCode != "4.4.7" || e.Reason != sluicev1.Reason_REASON_EXPIRED ||
		e.Outcome != sluicev1.Outcome_OUTCOME_PERMANENT || e.Text != "delivery time expired; last attempt: 451 4.7.1 later" || e.Code != 0 || e.RemoteHost != rr2host {
		t.Errorf("expired recipient %v", e)
	}
	if results[2].EnhancedCode != "4.7.1" {
		t.Error("Expire changed its input")
	}

	// A job without expiry never expires.
	job.ExpiresUnixNano = 0
	if d := Decide(job, results, now.Add(1000*time.Hour)); d.Expired {
		t.Error("a job without expiry expired")
	}
}

func TestNotify(t *testing.T) {
	const (
		never   = uint32(sluicev1.Notify_NOTIFY_NEVER)
		success = uint32(sluicev1.Notify_NOTIFY_SUCCESS)
		failure = uint32(sluicev1.Notify_NOTIFY_FAILURE)
		delay   = uint32(sluicev1.Notify_NOTIFY_DELAY)
	)
	tests := []struct {
		notify           uint32
		failure, success bool
	}{
		{0, true, false},
		{never, false, false},
		{success, false, true},
		{failure, true, false},
		{success | failure, true, true},
		{delay, false, false},
	}
	for _, tt := range tests {
		if WantsFailure(tt.notify) != tt.failure || WantsSuccess(tt.notify) != tt.success {
			t.Errorf("notify %b: failure %v success %v, want %v %v", tt.notify, WantsFailure(tt.notify), WantsSuccess(tt.notify), tt.failure, tt.success)
		}
	}
	for _, tt := range []struct {
		job  *sluicev1.Job
		want bool
	}{
		{&sluicev1.Job{MailFrom: "a@b"}, true},
		{&sluicev1.Job{MailFrom: ""}, false},
		{&sluicev1.Job{MailFrom: "a@b", IsDsn: true}, false},
	} {
		if MayBounce(tt.job) != tt.want {
			t.Errorf("MayBounce(%v) != %v", tt.job, tt.want)
		}
	}
}
