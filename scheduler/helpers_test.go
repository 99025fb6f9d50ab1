package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func TestMain(m *testing.M) {
	// The services install the W3C propagator in telemetry.Setup; tests
	// build their providers by hand.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	goleak.VerifyTestMain(m,
		// nats.go v1.55 starts this goroutine with a connection's first
		// async publish and can hand it a nil channel when the connection
		// closes at that moment (newAsyncReply against cleanupReplySub):
		// it then blocks forever, through no fault of the code under test.
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
		// The embedded server and the client keep a few process-wide
		// goroutines that are not tied to one test.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).logRejectedTLSConns"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*ipQueue[...]).popOne"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// harness is one scheduler on its own embedded JetStream server, with
// recorded spans and metrics.
type harness struct {
	t      testing.TB
	ctx    context.Context
	js     jetstream.JetStream
	svc    *Service
	cfg    Config
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	tracer trace.Tracer
}

func start(t testing.TB, mutate func(*Config)) *harness {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	cfg := Default()
	cfg.Scheduler.Concurrency = 8
	cfg.Scheduler.Batch = 32
	if mutate != nil {
		mutate(&cfg)
	}
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, js: js, cfg: cfg, spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tracer = tp.Tracer("test")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	// The service has its own connection, as it would in production.
	_, svcJS := srv.Connect(t)
	svc, err := New(cfg, svcJS, tp.Tracer("scheduler"), mp.Meter("scheduler"), log, WithRandom(func() float64 { return 0.5 }))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.svc = svc
	t.Cleanup(func() {
		if err := svc.Close(); err != nil {
			t.Error(err)
		}
	})
	return h
}

// publishMessage stores m as the ingress would, inside a fresh trace, and
// returns its stream sequence and the trace id.
func (h *harness) publishMessage(m *sluicev1.Message) (uint64, trace.TraceID) {
	h.t.Helper()
	if m.QueueId == "" {
		m.QueueId = wire.NewQueueID(time.Now())
	}
	if m.ReceivedUnixNano == 0 {
		m.ReceivedUnixNano = time.Now().UnixNano()
	}
	m.Schema = wire.SchemaVersion
	data, err := proto.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, span := h.tracer.Start(h.ctx, "ingress.test")
	defer span.End()
	msg := nats.NewMsg(wire.MessageSubject(m.QueueId))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, m.QueueId)
	telemetry.Inject(ctx, msg.Header)
	ack, err := h.js.PublishMsg(h.ctx, msg)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence, span.SpanContext().TraceID()
}

// publishResult reports an attempt as a deliverer would. msgID lets a test
// publish the same result twice, as a redelivery would present it. The
// result continues the trace in jobHeader, when given, as a deliverer does.
func (h *harness) publishResult(r *sluicev1.Result, msgID string, jobHeader ...nats.Header) {
	h.t.Helper()
	r.Schema = wire.SchemaVersion
	if r.FinishedUnixNano == 0 {
		r.FinishedUnixNano = time.Now().UnixNano()
	}
	data, err := proto.Marshal(r)
	if err != nil {
		h.t.Fatal(err)
	}
	msg := nats.NewMsg(wire.ResultSubject(r.Job.JobId))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	if len(jobHeader) > 0 {
		ctx, span := h.tracer.Start(telemetry.Extract(h.ctx, jobHeader[0]), "deliverer.test")
		telemetry.Inject(ctx, msg.Header)
		span.End()
	}
	if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
		h.t.Fatal(err)
	}
}

// lastMsg polls for the last message on subject in stream.
func (h *harness) lastMsg(stream, subject string) *jetstream.RawStreamMsg {
	h.t.Helper()
	str, err := h.js.Stream(h.ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := str.GetLastMsgForSubject(h.ctx, subject)
		if err == nil {
			return m
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) || time.Now().After(deadline) {
			h.t.Fatalf("no message on %s: %v", subject, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hasMsg reports whether stream holds a message on subject right now.
func (h *harness) hasMsg(stream, subject string) bool {
	h.t.Helper()
	str, err := h.js.Stream(h.ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	_, err = str.GetLastMsgForSubject(h.ctx, subject)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		h.t.Fatal(err)
	}
	return err == nil
}

// count is the number of messages stream holds on subject.
func (h *harness) count(stream, subject string) uint64 {
	h.t.Helper()
	str, err := h.js.Stream(h.ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := str.Info(h.ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// job reads the first-attempt job the splitter published for jobID.
func (h *harness) job(class sluicev1.Priority, jobID string) (*sluicev1.Job, *jetstream.RawStreamMsg) {
	h.t.Helper()
	m := h.lastMsg(wire.StreamJobs, wire.JobSubject(class, jobID))
	var j sluicev1.Job
	if err := proto.Unmarshal(m.Data, &j); err != nil {
		h.t.Fatal(err)
	}
	return &j, m
}

// bounce reads the DSN request published about jobID.
func (h *harness) bounce(jobID string) (*sluicev1.Bounce, *jetstream.RawStreamMsg) {
	h.t.Helper()
	m := h.lastMsg(wire.StreamBounces, wire.BounceSubject(jobID))
	var b sluicev1.Bounce
	if err := proto.Unmarshal(m.Data, &b); err != nil {
		h.t.Fatal(err)
	}
	return &b, m
}

// settled waits until the named consumer has acknowledged (or terminated)
// at least n deliveries and holds none pending.
func (h *harness) settled(stream, consumer string, n uint64) {
	h.t.Helper()
	h.settledFor(stream, consumer, n, 10*time.Second)
}

func (h *harness) settledFor(stream, consumer string, n uint64, wait time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		c, err := h.js.Consumer(h.ctx, stream, consumer)
		if err != nil {
			h.t.Fatal(err)
		}
		info, err := c.Info(h.ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		if info.AckFloor.Consumer >= n && info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("consumer %s: ack floor %d, %d pending, %d waiting; want %d settled",
				consumer, info.AckFloor.Consumer, info.NumAckPending, info.NumPending, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// msgExists reports whether SLUICE_MSGS still holds sequence seq.
func (h *harness) msgExists(seq uint64) bool {
	h.t.Helper()
	str, err := h.js.Stream(h.ctx, wire.StreamMessages)
	if err != nil {
		h.t.Fatal(err)
	}
	_, err = str.GetMsg(h.ctx, seq)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		h.t.Fatal(err)
	}
	return err == nil
}

// counter sums the named counter's points whose attributes include attrs.
func (h *harness) counter(name string, attrs ...attribute.KeyValue) int64 {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(h.ctx, &rm); err != nil {
		h.t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				h.t.Fatalf("%s is not an int64 sum", name)
			}
			for _, p := range sum.DataPoints {
				if hasAll(p.Attributes, attrs) {
					total += p.Value
				}
			}
		}
	}
	return total
}

// histogramCount is the number of observations of the named histogram.
func (h *harness) histogramCount(name string) uint64 {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(h.ctx, &rm); err != nil {
		h.t.Fatal(err)
	}
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if hist, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == name {
				for _, p := range hist.DataPoints {
					n += p.Count
				}
			}
		}
	}
	return n
}

func hasAll(set attribute.Set, attrs []attribute.KeyValue) bool {
	for _, a := range attrs {
		v, ok := set.Value(a.Key)
		if !ok || v != a.Value {
			return false
		}
	}
	return true
}

// span returns the first ended span with this name and attribute value.
func (h *harness) span(name string, attr attribute.KeyValue) sdktrace.ReadOnlySpan {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, s := range h.spans.Ended() {
			if s.Name() != name {
				continue
			}
			for _, a := range s.Attributes() {
				if a == attr {
					return s
				}
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no ended span %s with %v", name, attr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func spanAttr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, a := range s.Attributes() {
		if a.Key == key {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

// traceID reads the trace id of W3C trace context in h.
func traceID(t *testing.T, hdr nats.Header) trace.TraceID {
	t.Helper()
	ctx := telemetry.Extract(context.Background(), hdr)
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		t.Fatalf("no trace context in headers %v", hdr)
	}
	return sc.TraceID()
}

func rcpt(addr string, notify ...sluicev1.Notify) *sluicev1.Recipient {
	r := &sluicev1.Recipient{Address: addr}
	for _, n := range notify {
		r.Notify |= uint32(n)
	}
	return r
}

// outcome is one recipient's result as a deliverer reports it, with NOTIFY
// and ORCPT copied from the job.
func outcome(j *sluicev1.Job, addr string, o sluicev1.Outcome, reason sluicev1.Reason, code uint32, enh, text string) *sluicev1.RecipientResult {
	rr := &sluicev1.RecipientResult{Address: addr, Outcome: o, Reason: reason, Code: code, EnhancedCode: enh, Text: text, RemoteHost: "mx." + j.Domain}
	for _, r := range j.Recipients {
		if r.Address == addr {
			rr.Notify, rr.Orcpt = r.Notify, r.Orcpt
		}
	}
	return rr
}
