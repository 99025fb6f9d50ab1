package admin

import (
	"testing"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/events"
)

// TestFoldThrottled: a job a deliverer held back for its site says why and
// when it is offered again, until its next attempt begins.
func TestFoldThrottled(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	next := t0.Add(time.Minute)
	why := `throttled by site mx.example.test: suspended until 2026-01-02T03:05:05Z after "421 4.7.0 Try again later"`
	evs := []api.QueueEvent{
		{Type: wire.EventReceived, Time: t0, JobID: "q-0", QueueID: "q", State: api.StateReady},
		{Type: wire.EventThrottled, Time: t0.Add(time.Second), JobID: "q-0", QueueID: "q", Attempt: 1, Note: why, NextAttempt: next},
	}
	j := fold(evs)[0]
	if j.Throttled != why || !j.NextAttempt.Equal(next) || j.State != api.StateReady || len(j.Attempts) != 0 {
		t.Errorf("throttled job: %+v", j)
	}
	evs = append(evs, api.QueueEvent{Type: wire.EventAttempt, Time: next, JobID: "q-0", QueueID: "q", Attempt: 1, State: api.StateActive})
	j = fold(evs)[0]
	if j.Throttled != "" || len(j.Attempts) != 1 {
		t.Errorf("after its attempt began: throttled %q, %d attempts", j.Throttled, len(j.Attempts))
	}
}

// TestFoldTLS: an attempt shows the TLS of the session that carried it,
// from the deliverer's result through the event's recipients.
func TestFoldTLS(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	res := []*sluicev1.RecipientResult{
		{Address: "a@d.test", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED, RemoteHost: "mx.d.test",
			Tls: &sluicev1.TlsOutcome{Policy: "dane", Version: "1.3", Cipher: "TLS_AES_128_GCM_SHA256", VerifiedBy: "dane-ee"}},
		{Address: "b@d.test", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED, RemoteHost: "mx.d.test"},
	}
	evs := []api.QueueEvent{
		{Type: wire.EventReceived, Time: t0, JobID: "q-0", QueueID: "q", State: api.StateReady},
		{Type: wire.EventAttempt, Time: t0, JobID: "q-0", QueueID: "q", Attempt: 1, State: api.StateActive},
		{Type: wire.EventDelivered, Time: t0.Add(time.Second), JobID: "q-0", QueueID: "q", Attempt: 1, State: api.StateDone,
			Recipients: events.Recipients(res)},
	}
	// Through the stored form, as the scheduler reads it back.
	var back api.QueueEvent
	if err := api.UnmarshalQueueEvent(api.MarshalQueueEvent(&evs[2]), &back); err != nil {
		t.Fatal(err)
	}
	evs[2] = back
	j := fold(evs)[0]
	want := api.QueueTLS{Policy: "dane", Version: "1.3", Cipher: "TLS_AES_128_GCM_SHA256", VerifiedBy: "dane-ee"}
	if len(j.Attempts) != 1 || j.Attempts[0].TLS != want {
		t.Fatalf("attempts %+v, want one with TLS %+v", j.Attempts, want)
	}
}
