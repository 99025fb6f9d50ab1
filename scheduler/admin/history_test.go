package admin

import (
	"testing"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
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
