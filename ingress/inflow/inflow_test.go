package inflow

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// queue is a provisioned JetStream with the scheduler's and the normal
// class's durable consumers, as the services create them.
type queue struct {
	ns     *natstest.Server
	js     jetstream.JetStream
	jobs   jetstream.Consumer
	msgs   jetstream.Consumer
	nextID int
}

func newQueue(t *testing.T) *queue {
	t.Helper()
	q := &queue{ns: natstest.Start(t)}
	_, q.js = q.ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, q.js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	return q
}

// consumers creates the durable consumers the backlog is read from.
func (q *queue) consumers(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var err error
	q.jobs, err = q.js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, jetstream.ConsumerConfig{
		Durable: wire.DelivererConsumer(sluicev1.Priority_PRIORITY_NORMAL), AckPolicy: jetstream.AckExplicitPolicy,
		FilterSubject: wire.JobFilter(sluicev1.Priority_PRIORITY_NORMAL)})
	if err != nil {
		t.Fatal(err)
	}
	q.msgs, err = q.js.CreateOrUpdateConsumer(ctx, wire.StreamMessages, jetstream.ConsumerConfig{
		Durable: wire.ConsumerScheduler, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
}

// publish stores n ready jobs of the normal class and m messages.
func (q *queue) publish(t *testing.T, jobs, msgs int) {
	t.Helper()
	ctx := context.Background()
	for range jobs {
		q.nextID++
		if _, err := q.js.Publish(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, fmt.Sprintf("job%d", q.nextID)), []byte("j")); err != nil {
			t.Fatal(err)
		}
	}
	for range msgs {
		q.nextID++
		if _, err := q.js.Publish(ctx, wire.MessageSubject(fmt.Sprintf("Q%d", q.nextID)), []byte("m")); err != nil {
			t.Fatal(err)
		}
	}
}

// take has a deliverer take n jobs and acknowledge them.
func (q *queue) take(t *testing.T, n int) {
	t.Helper()
	b, err := q.jobs.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range b.Messages() {
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got != n {
		t.Fatalf("took %d jobs, want %d (%v)", got, n, b.Error())
	}
}

func TestBacklogIsWhatNoConsumerHasTaken(t *testing.T) {
	q := newQueue(t)
	count := JetStreamBacklog(q.js)
	ctx := context.Background()
	// Before the services have created their consumers there is no
	// backlog to speak of, and no error either.
	q.publish(t, 2, 1)
	if n, err := count(ctx); err != nil || n != 0 {
		t.Fatalf("without consumers: %d, %v; want 0, nil", n, err)
	}
	q.consumers(t)
	q.publish(t, 5, 2)
	if n, err := count(ctx); err != nil || n != 10 {
		t.Fatalf("backlog %d, %v; want 10 (7 jobs and 3 messages)", n, err)
	}
	// Jobs a deliverer has taken, acknowledged or not, are not waiting.
	q.take(t, 4)
	// Fetch returns once the pull request is sent; the job is taken once
	// it has arrived, which is what the count must see.
	b, err := q.jobs.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if m := <-b.Messages(); m == nil {
		t.Fatalf("the fifth job did not arrive: %v", b.Error())
	}
	if n, err := count(ctx); err != nil || n != 5 {
		t.Fatalf("after 5 jobs taken: %d, %v; want 5", n, err)
	}
	// Retries waiting on their schedule subject are not ready jobs.
	if _, err := q.js.Publish(ctx, wire.SubjectSchedule+".job99", []byte("s"), jetstream.WithMsgID("sched-99")); err != nil {
		t.Fatal(err)
	}
	if n, err := count(ctx); err != nil || n != 5 {
		t.Fatalf("with a scheduled retry: %d, %v; want 5", n, err)
	}
}

// metered returns a meter and its reader.
func metered() (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	r := sdkmetric.NewManualReader()
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)), r
}

// waits returns the count of sluice_ingress_inflow_delay_seconds by outcome.
func waits(t *testing.T, r *sdkmetric.ManualReader) map[string]uint64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sluice_ingress_inflow_delay_seconds" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				o, _ := dp.Attributes.Value("outcome")
				out[o.AsString()] += dp.Count
			}
		}
	}
	return out
}

// running starts g and waits for its first reading of want.
func running(t *testing.T, g *Gate, want uint64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for g.Backlog() != want {
		if time.Now().After(deadline) {
			t.Fatalf("backlog read as %d, want %d", g.Backlog(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gated returns a running gate with o over a queue holding jobs ready
// jobs and msgs messages, once it has read that backlog, and the reader of
// its metrics.
func gated(t *testing.T, jobs, msgs int, o Options) (*queue, *Gate, *sdkmetric.ManualReader) {
	t.Helper()
	q := newQueue(t)
	q.consumers(t)
	q.publish(t, jobs, msgs)
	mp, reader := metered()
	o.Meter, o.Interval = mp.Meter("test"), 20*time.Millisecond
	g, err := New(JetStreamBacklog(q.js), o)
	if err != nil {
		t.Fatal(err)
	}
	running(t, g, uint64(jobs+msgs))
	return q, g, reader
}

func TestWaitEndsWhenDeliveryCatchesUp(t *testing.T) {
	q, g, reader := gated(t, 6, 0, Options{Backlog: 3, MaxDelay: 30 * time.Second})

	waited := make(chan time.Duration, 1)
	go func() { waited <- g.Wait(context.Background()) }()
	select {
	case d := <-waited:
		t.Fatalf("Wait returned after %s with 6 jobs waiting over a limit of 3", d)
	case <-time.After(300 * time.Millisecond):
	}
	// The deliverers take three: the backlog is at the limit again.
	q.take(t, 3)
	select {
	case d := <-waited:
		if d < 300*time.Millisecond || d >= 30*time.Second {
			t.Errorf("waited %s, want from 300ms to under the 30s maximum", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked 10s after the backlog fell to the limit")
	}
	// At the limit, nothing waits.
	if d := g.Wait(context.Background()); d != 0 {
		t.Errorf("Wait at the limit took %s, want 0", d)
	}
	if w := waits(t, reader); w["released"] != 1 || w["timeout"] != 0 {
		t.Errorf("inflow waits by outcome %v, want one released", w)
	}
}

func TestWaitIsBoundedByMaxDelay(t *testing.T) {
	_, g, reader := gated(t, 0, 4, Options{Backlog: 1, MaxDelay: 400 * time.Millisecond})
	start := time.Now()
	d := g.Wait(context.Background())
	if d < 400*time.Millisecond || time.Since(start) > 10*time.Second {
		t.Errorf("Wait returned after %s, want the 400ms maximum", d)
	}
	// A cancelled transaction (a session ending) stops waiting at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := g.Wait(ctx); d >= 400*time.Millisecond {
		t.Errorf("a cancelled Wait took %s", d)
	}
	if w := waits(t, reader); w["timeout"] != 1 || w["released"] != 0 || w["cancelled"] != 1 {
		t.Errorf("inflow waits by outcome %v, want one timeout and one cancelled", w)
	}
}

func TestUnreadableBacklogMakesNobodyWait(t *testing.T) {
	q := newQueue(t)
	q.consumers(t)
	q.publish(t, 5, 0)
	nc, err := nats.Connect(q.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(JetStreamBacklog(js), Options{Backlog: 1, MaxDelay: time.Minute, Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	running(t, g, 5)
	// The server goes away: the gate cannot tell, so it lets mail in and
	// leaves the answer to the ingress's storage checks.
	q.ns.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for g.Backlog() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("backlog still read as %d with the server down", g.Backlog())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := g.Wait(context.Background()); d != 0 {
		t.Errorf("Wait with the backlog unreadable took %s, want 0", d)
	}
}

func TestOffNeverWaits(t *testing.T) {
	q := newQueue(t)
	q.consumers(t)
	q.publish(t, 5, 0)
	for _, o := range []Options{{Backlog: 0, MaxDelay: time.Second}, {Backlog: 1, MaxDelay: 0}} {
		g, err := New(JetStreamBacklog(q.js), o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		g.Run(ctx) // returns at once when off
		cancel()
		if g.Enabled() || g.Backlog() != 0 {
			t.Errorf("%+v: enabled %v, backlog read %d; want off, never read", o, g.Enabled(), g.Backlog())
		}
		if d := g.Wait(context.Background()); d != 0 {
			t.Errorf("%+v: Wait took %s", o, d)
		}
	}
	var nilGate *Gate
	if d := nilGate.Wait(context.Background()); d != 0 {
		t.Errorf("nil gate waited %s", d)
	}
}
