package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// lastBlock is the index of the newest block file of stream under dir:
// the file store numbers blocks as it creates them, so its growth counts
// the blocks created.
func lastBlock(t *testing.T, dir, stream string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", stream, "msgs", "*.blk"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no block files of %s under %s (%v)", stream, dir, err)
	}
	last := 0
	for _, f := range files {
		n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(f), ".blk"))
		if err != nil {
			t.Fatalf("block file %s: %v", f, err)
		}
		last = max(last, n)
	}
	return last
}

// A queue that keeps up with its work is empty after each removal. With
// the keeper's marker behind the newest record, removing that record does
// not make nats-server replace the stream's last block; a stream without a
// marker (here SLUICE_BOUNCES, which the keeper leaves alone) gets a new
// block file for almost every removal.
func TestKeeperSparesTheLastBlock(t *testing.T) {
	srv, js := provisioned(t)
	ctx := context.Background()
	// Markers an earlier scheduler left behind.
	for range 2 {
		if _, err := js.Publish(ctx, wire.KeepSubject(wire.StreamResults), nil); err != nil {
			t.Fatal(err)
		}
	}
	var handled atomic.Uint64
	handled.Add(1)
	kctx, stop := context.WithCancel(ctx)
	k := &keeper{js: js, handled: &handled, interval: 5 * time.Millisecond, log: slog.Default(), done: make(chan struct{})}
	go k.run(kctx)
	defer func() { stop(); <-k.done }()

	results, err := js.Stream(ctx, wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	bounces, err := js.Stream(ctx, wire.StreamBounces)
	if err != nil {
		t.Fatal(err)
	}
	markers := func(st jetstream.Stream) uint64 { return markerCount(t, st) }
	deadline := time.Now().Add(5 * time.Second)
	for markers(results) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no marker placed in SLUICE_RESULTS")
		}
		time.Sleep(5 * time.Millisecond)
	}

	const n = 100
	before := map[string]int{}
	for _, s := range []string{wire.StreamResults, wire.StreamBounces} {
		before[s] = lastBlock(t, srv.Dir, s)
	}
	for i := range n {
		for _, p := range []struct {
			st      jetstream.Stream
			subject string
		}{{results, wire.SubjectResults}, {bounces, wire.SubjectBounces}} {
			ack, err := js.Publish(ctx, fmt.Sprintf("%s.job%d", p.subject, i), []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.st.DeleteMsg(ctx, ack.Sequence); err != nil {
				t.Fatal(err)
			}
		}
		handled.Add(1)
	}
	kept := lastBlock(t, srv.Dir, wire.StreamResults) - before[wire.StreamResults]
	bare := lastBlock(t, srv.Dir, wire.StreamBounces) - before[wire.StreamBounces]
	t.Logf("%d removals: %d blocks created with a marker, %d without", n, kept, bare)
	if bare < n/2 {
		t.Fatalf("without a marker %d removals created only %d blocks: the server no longer replaces an emptied last block, and the keeper may go", n, bare)
	}
	if kept > 2 {
		t.Errorf("with the keeper's marker %d removals created %d blocks, want at most 2 (without: %d)", n, kept, bare)
	}
	// Each marker replaces the one before, and the first removed those
	// left behind: one stays in each kept stream.
	for _, name := range keptStreams {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		eventuallyT(t, name+" holds one marker", func() bool { return markers(st) == 1 })
	}
	// Idle, the keeper places nothing: once it has seen the last input,
	// the stream stops moving (a keeper that placed markers regardless
	// would move it every interval).
	last := func() uint64 {
		info, err := results.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}
	eventuallyT(t, "SLUICE_RESULTS still for 20 intervals while nothing is handled", func() bool {
		before := last()
		time.Sleep(20 * k.interval)
		return last() == before
	})
}

// The scheduler's consumers read past the markers: a running scheduler
// with markers in its streams handles mail without seeing one (a marker is
// not a message or a result, and would be terminated as undecodable).
func TestSchedulerReadsPastMarkers(t *testing.T) {
	h := start(t, nil)
	for _, name := range keptStreams {
		if _, err := h.js.Publish(h.ctx, wire.KeepSubject(name), nil); err != nil {
			t.Fatal(err)
		}
	}
	seq, _ := h.publishMessage(&sluicev1.Message{MailFrom: "a@origin.test", Recipients: []*sluicev1.Recipient{rcpt("b@dest.test")}})
	h.settled(wire.StreamMessages, wire.ConsumerScheduler, 1)
	for _, c := range []struct{ stream, consumer string }{{wire.StreamMessages, wire.ConsumerScheduler}, {wire.StreamResults, wire.ConsumerResults}} {
		cons, err := h.js.Consumer(h.ctx, c.stream, c.consumer)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending != 0 || info.NumAckPending != 0 || info.Config.FilterSubject == "" {
			t.Errorf("%s: %d pending, %d awaiting ack, filter %q: a marker is in its way", c.consumer, info.NumPending, info.NumAckPending, info.Config.FilterSubject)
		}
	}
	if got := h.counter("sluice_scheduler_inputs_settled_total", attribute.String("settlement", "term")); got != 0 {
		t.Errorf("%d inputs terminated, want 0", got)
	}
	// A marker read by a work queue's consumer would be gone.
	for _, name := range keptStreams {
		st, err := h.js.Stream(h.ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if markerCount(t, st) == 0 {
			t.Errorf("%s lost its marker", name)
		}
	}
	if !h.msgExists(seq) {
		t.Error("the message is gone before its job finished")
	}
}

func eventuallyT(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A queue provisioned by an earlier version has the scheduler's durable
// consumers without a filter; the scheduler gives them theirs when it
// starts, keeping their place in the stream.
func TestSchedulerFiltersEarlierConsumers(t *testing.T) {
	srv, js := provisioned(t)
	ctx := context.Background()
	cfg := Default()
	for _, c := range []struct{ stream, consumer string }{{wire.StreamMessages, wire.ConsumerScheduler}, {wire.StreamResults, wire.ConsumerResults}} {
		if _, err := js.CreateOrUpdateConsumer(ctx, c.stream, jetstream.ConsumerConfig{
			Durable: c.consumer, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		}); err != nil {
			t.Fatal(err)
		}
	}
	_, svcJS := srv.Connect(t)
	svc, err := New(cfg, svcJS, noop.NewTracerProvider().Tracer(""), metricnoop.NewMeterProvider().Meter(""), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := svc.Close(); err != nil {
			t.Error(err)
		}
	}()
	for _, c := range []struct{ stream, consumer, filter string }{
		{wire.StreamMessages, wire.ConsumerScheduler, wire.SubjectMessages + ".>"},
		{wire.StreamResults, wire.ConsumerResults, wire.SubjectResults + ".>"},
	} {
		cons, err := js.Consumer(ctx, c.stream, c.consumer)
		if err != nil {
			t.Fatal(err)
		}
		if got := cons.CachedInfo().Config.FilterSubject; got != c.filter {
			t.Errorf("%s: filter %q, want %q", c.consumer, got, c.filter)
		}
	}
}

// Another scheduler's first marker purges the markers before it, this
// keeper's last one included: placing the next one is no error.
func TestKeeperMarkerRemovedByAnother(t *testing.T) {
	_, js := provisioned(t)
	ctx := context.Background()
	var handled atomic.Uint64
	k := &keeper{js: js, handled: &handled, interval: time.Hour, log: slog.Default(), done: make(chan struct{})}
	if err := k.place(ctx, wire.StreamJobs); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(wire.KeepSubject(wire.StreamJobs))); err != nil {
		t.Fatal(err)
	}
	if err := k.place(ctx, wire.StreamJobs); err != nil {
		t.Errorf("a marker after the one before was purged: %v", err)
	}
	if n := markerCount(t, st); n != 1 {
		t.Errorf("%d markers, want 1", n)
	}
}

// provisioned is a fresh server with Sluice's streams, and a client of it.
func provisioned(t *testing.T) (*natstest.Server, jetstream.JetStream) {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	if err := streams.Provision(context.Background(), js, Default().Queue); err != nil {
		t.Fatal(err)
	}
	return srv, js
}

// markerCount is how many keeper markers st holds.
func markerCount(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	keep := wire.KeepSubject(st.CachedInfo().Config.Name)
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(keep))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[keep]
}
