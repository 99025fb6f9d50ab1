package smtpd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sluice-mta/sluice/ingress/inflow"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// TestMailWaitsWhileDeliveryIsBehind: with more ready jobs than
// ingress.inflow_backlog waiting for the deliverers, MAIL FROM is answered
// only when they have taken enough, and the wait is on the message's trace.
func TestMailWaitsWhileDeliveryIsBehind(t *testing.T) {
	var jobs jetstream.Consumer
	h := startWith(t, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), func(h *harness, o *Options) {
		ctx := context.Background()
		var err error
		jobs, err = h.js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, jetstream.ConsumerConfig{
			Durable: wire.DelivererConsumer(sluicev1.Priority_PRIORITY_NORMAL), AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: wire.JobFilter(sluicev1.Priority_PRIORITY_NORMAL)})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if _, err := h.js.Publish(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, fmt.Sprintf("j%d", i)), []byte("job")); err != nil {
				t.Fatal(err)
			}
		}
		g, err := inflow.New(inflow.JetStreamBacklog(h.js), inflow.Options{Backlog: 2, MaxDelay: 30 * time.Second, Interval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		gctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); g.Run(gctx) }()
		t.Cleanup(func() { cancel(); <-done })
		for deadline := time.Now().Add(10 * time.Second); g.Backlog() != 5; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("backlog read as %d, want 5", g.Backlog())
			}
		}
		o.Inflow = g
	})

	c := h.dial()
	type result struct {
		reply string
		err   error
	}
	sent := make(chan result, 1)
	go func() {
		r, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(sample))
		sent <- result{r, err}
	}()
	select {
	case r := <-sent:
		t.Fatalf("transaction answered (%q, %v) with 5 jobs waiting over a limit of 2", r.reply, r.err)
	case <-time.After(400 * time.Millisecond):
	}
	// The deliverers take three jobs: MAIL FROM goes on.
	b, err := jobs.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	var qid string
	select {
	case r := <-sent:
		if r.err != nil {
			t.Fatal(r.err)
		}
		qid = queueID(t, r.reply)
	case <-time.After(20 * time.Second):
		t.Fatal("transaction not answered 20s after the backlog fell to the limit")
	}
	if m, _ := h.stored(qid); m.GetMailFrom() != "alice@example.org" {
		t.Errorf("stored sender %q", m.GetMailFrom())
	}
	if w := inflowWaitMS(t, h.spans.Ended(), qid); w < 400 || w >= 30_000 {
		t.Errorf("sluice.inflow_wait_ms = %d on the receive span, want from 400 to under 30000", w)
	}

	// At the limit nothing waits, and the trace says nothing of it.
	r, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if w := inflowWaitMS(t, h.spans.Ended(), queueID(t, r)); w != -1 {
		t.Errorf("second transaction: sluice.inflow_wait_ms = %d, want absent", w)
	}
}

// inflowWaitMS is the sluice.inflow_wait_ms of qid's receive span, -1
// when it has none.
func inflowWaitMS(t *testing.T, spans []sdktrace.ReadOnlySpan, qid string) int64 {
	t.Helper()
	for _, s := range spans {
		if s.Name() != "ingress.receive" {
			continue
		}
		wait, mine := int64(-1), false
		for _, a := range s.Attributes() {
			switch a.Key {
			case "sluice.queue_id":
				mine = a.Value.AsString() == qid
			case "sluice.inflow_wait_ms":
				wait = a.Value.AsInt64()
			}
		}
		if mine {
			return wait
		}
	}
	t.Fatalf("no ingress.receive span for %s", qid)
	return 0
}
