package worker

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestPoisonJob: a job whose handling panics every time is handed out
// again and again; after max_strikes deliveries that reached the attempt it
// ends as a permanent 5.3.0 failure naming the cause (which the scheduler
// bounces), every panic is counted, and the deliverer goes on delivering
// other mail meanwhile.
func TestPoisonJob(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	s := testSettings(e)
	s.Routes = map[string]string{"poison.test": c.Addr, "fine.test": c.Addr}
	s.MaxStrikes = 3
	_, js := e.ns.Connect(t)
	svc, err := New(s, Deps{JS: js, Tracer: e.tp.Tracer("test"), Meter: mp.Meter("test"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var tries atomic.Int64
	svc.beforeAttempt = func(j *sluicev1.Job) {
		if j.Domain == "poison.test" {
			tries.Add(1)
			panic("poison")
		}
	}
	startService(t, svc)
	poison := e.enqueue(t, jobSpec{domain: "poison.test", rcpts: []string{"a@poison.test", "b@poison.test"}})
	fine := e.enqueue(t, jobSpec{domain: "fine.test", rcpts: []string{"x@fine.test"}})
	check(t, e.result(t, fine, 10*time.Second).Recipients[0], delivered)

	r := e.result(t, poison, 30*time.Second)
	if len(r.Recipients) != 2 {
		t.Fatalf("%d recipient results, want 2", len(r.Recipients))
	}
	for _, rr := range r.Recipients {
		check(t, rr, want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_INTERNAL, 554, "5.3.0"})
		if !strings.Contains(rr.Text, "started 3 times and never finished") {
			t.Errorf("reason text %q does not say why", rr.Text)
		}
	}
	// Delivery 1 panics (no strike: first), deliveries 2 and 3 count
	// strikes 1 and 2 and panic, delivery 4 counts 3 and fails the job.
	if n := tries.Load(); n != 3 {
		t.Errorf("the poison job was attempted %d times, want 3", n)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && (m.Name == "sluice_deliverer_panics_total" || m.Name == "sluice_deliverer_jobs_poisoned_total") {
				for _, dp := range sum.DataPoints {
					got[m.Name] += dp.Value
				}
			}
		}
	}
	if got["sluice_deliverer_panics_total"] != 3 || got["sluice_deliverer_jobs_poisoned_total"] != 1 {
		t.Errorf("metrics %v, want 3 panics and 1 poisoned job", got)
	}
}

// TestUnrecordedAttemptIsNoStrike: while SLUICE_EVENTS cannot take the
// attempt's claim (as while a cluster recovers its leader: replicas answer
// reads, nobody stores), the job is
// handed out again and again without reaching the remote server; those
// deliveries are no strikes, so once the stream is back the mail is
// delivered, not failed as poison.
func TestUnrecordedAttemptIsNoStrike(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	// The stream is full and refuses new messages; reads are answered.
	if _, err := e.js.Publish(ctx, wire.EventSubject("Q", wire.EventReceived, time.Now()), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	str, err := e.js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	full := str.CachedInfo().Config
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	if _, err := e.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	e.service(t, func(s *Settings) {
		s.Routes = map[string]string{"dest.test": c.Addr}
		s.MaxStrikes = 2
	})
	job := e.enqueue(t, jobSpec{domain: "dest.test", rcpts: []string{"a@dest.test"}})
	// Handed out at once and every infraRetry (2 s): four deliveries, of
	// which the last three would be strikes.
	time.Sleep(7 * time.Second)
	if n := len(c.Messages()); n != 0 {
		t.Fatalf("%d messages sent without the attempt recorded", n)
	}
	if err := provision(e); err != nil {
		t.Fatal(err)
	}
	check(t, e.result(t, job, 20*time.Second).Recipients[0], delivered)
	if n := len(c.Messages()); n != 1 {
		t.Errorf("the destination got %d copies, want 1", n)
	}
}

// TestUnreadBodyIsNoStrike: a delivery whose body cannot be read (the
// bodies' stream gone, as without a leader while a cluster recovers) sends
// nothing and takes its strike back too, so that once the body can be read
// the job is delivered, not failed as poison.
func TestUnreadBodyIsNoStrike(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	e.service(t, func(s *Settings) {
		s.Routes = map[string]string{"dest.test": c.Addr}
		s.MaxStrikes = 2
	})
	if err := e.js.DeleteObjectStore(ctx, wire.BucketBodies); err != nil {
		t.Fatal(err)
	}
	big := append([]byte("Subject: unread\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef\r\n"), 4000)...)
	job := e.enqueue(t, jobSpec{domain: "dest.test", rcpts: []string{"a@dest.test"}, bigBody: big, bodyObject: "unread"})
	// Handed out at once and every infraRetry (2 s): four deliveries, of
	// which the last three would be strikes.
	time.Sleep(7 * time.Second)
	if n := len(c.Messages()); n != 0 {
		t.Fatalf("%d messages sent without a body", n)
	}
	if err := provision(e); err != nil {
		t.Fatal(err)
	}
	if _, err := mustBodies(t, e.js).PutBytes(ctx, "unread", big); err != nil {
		t.Fatal(err)
	}
	check(t, e.result(t, job, 20*time.Second).Recipients[0], delivered)
	msgs := c.Messages()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, big) {
		t.Errorf("the destination got %d copies, want 1 of the body", len(msgs))
	}
}
