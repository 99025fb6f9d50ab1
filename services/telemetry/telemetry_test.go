package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/services/otlptest"
)

// TestSpansReachAnOTLPReceiverAndContextCrossesNATSHeaders exercises the real
// exporter path: two "services" pass context through a nats.Header, and the
// receiver sees both spans in one trace with the right parent.
func TestSpansReachAnOTLPReceiverAndContextCrossesNATSHeaders(t *testing.T) {
	rcv, err := otlptest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	ctx := context.Background()
	env := Env{Endpoint: rcv.URL, Protocol: "http/protobuf"}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL)
	a, err := Setup(ctx, "ingress", env, nil, "info")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Setup(ctx, "scheduler", env, nil, "info")
	if err != nil {
		t.Fatal(err)
	}
	ctxA, spanA := a.Tracer.Start(ctx, "receive")
	h := nats.Header{}
	Inject(ctxA, h)
	spanA.End()
	if h.Get("traceparent") == "" && h["traceparent"] == nil {
		t.Fatalf("no traceparent in headers: %v", h)
	}
	ctxB := Extract(context.Background(), h)
	_, spanB := b.Tracer.Start(ctxB, "split")
	spanB.End()
	a.Shutdown(ctx)
	b.Shutdown(ctx)
	// Shutdown is safe twice.
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	tid := spanA.SpanContext().TraceID().String()
	deadline := time.Now().Add(5 * time.Second)
	for len(rcv.Trace(tid)) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	spans := rcv.Trace(tid)
	if len(spans) != 2 {
		t.Fatalf("trace %s has %d spans, want 2: %+v", tid, len(spans), rcv.Spans())
	}
	services := map[string]otlptest.Span{}
	for _, s := range spans {
		services[s.Service] = s
	}
	if services["sluice-scheduler"].ParentSpanID != spanA.SpanContext().SpanID().String() {
		t.Fatalf("scheduler span's parent = %s, want ingress span %s", services["sluice-scheduler"].ParentSpanID, spanA.SpanContext().SpanID())
	}
}

func TestLoggerCarriesTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "deliverer", "info")
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	log.InfoContext(ctx, "delivered", "queue_id", "Q1")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["trace_id"] != tid.String() || rec["span_id"] != sid.String() || rec["queue_id"] != "Q1" || rec["service"] != "deliverer" {
		t.Fatalf("log record = %v", rec)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	tel, err := Setup(context.Background(), "bouncer", Env{}, nil, "info")
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	c, _ := tel.Meter.Int64Counter("sluice_bouncer_test_total")
	c.Add(context.Background(), 3)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var notReady atomic.Bool
	notReady.Store(true)
	srv := tel.ServeListener(ln, func() error {
		if notReady.Load() {
			return errors.New("nats down")
		}
		return nil
	})
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "sluice_bouncer_test_total 3") {
		t.Fatalf("counter not exported:\n%s", body)
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || body != "not ready: nats down\n" {
		t.Fatalf("readyz while not ready = %d %q", code, body)
	}
	// Liveness does not depend on readiness.
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz while not ready = %d", code)
	}
	notReady.Store(false)
	if code, body := get("/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("readyz when ready = %d %q", code, body)
	}
}

func TestBadProtocolIsAClearError(t *testing.T) {
	_, err := Setup(context.Background(), "x", Env{Endpoint: "http://127.0.0.1:1", Protocol: "carrier-pigeon"}, nil, "info")
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Fatalf("want an error naming OTEL_EXPORTER_OTLP_PROTOCOL, got %v", err)
	}
}

// TestWithoutExporterSpansCarryIDsOnly: with no exporter the spans record
// nothing, but every span has its own id, children stay in their parent's
// trace, the traceparent sent on says what the SDK's default sampler would
// have said (sampled, unless the parent was not), and log lines carry the
// ids.
func TestWithoutExporterSpansCarryIDsOnly(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	a, err := Setup(ctx, "ingress", Env{}, &logs, "info")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown(ctx)
	b, err := Setup(ctx, "scheduler", Env{Endpoint: "http://127.0.0.1:1", Exporter: "none"}, nil, "info")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(ctx)

	rootCtx, root := a.Tracer.Start(ctx, "ingress.receive")
	if root.IsRecording() {
		t.Fatal("a span of a service without an exporter records")
	}
	rsc := root.SpanContext()
	if !rsc.IsValid() || !rsc.IsSampled() || rsc.IsRemote() {
		t.Fatalf("root span context = %+v, want valid, sampled, local", rsc)
	}
	childCtx, child := a.Tracer.Start(rootCtx, "ingress.store")
	if csc := child.SpanContext(); csc.TraceID() != rsc.TraceID() || csc.SpanID() == rsc.SpanID() || !csc.IsValid() {
		t.Fatalf("child %v/%v of root %v/%v: want the root's trace and an id of its own", csc.TraceID(), csc.SpanID(), rsc.TraceID(), rsc.SpanID())
	}
	if _, other := a.Tracer.Start(ctx, "ingress.receive"); other.SpanContext().TraceID() == rsc.TraceID() {
		t.Fatal("two root spans share a trace id")
	}

	h := nats.Header{}
	Inject(childCtx, h)
	want := "00-" + rsc.TraceID().String() + "-" + child.SpanContext().SpanID().String() + "-01"
	if got := h.Get("traceparent"); got != want {
		t.Fatalf("traceparent = %q, want %q", got, want)
	}
	_, next := b.Tracer.Start(Extract(ctx, h), "scheduler.split")
	if nsc := next.SpanContext(); nsc.TraceID() != rsc.TraceID() || !nsc.IsSampled() || next.IsRecording() {
		t.Fatalf("span continued from %q: trace %v sampled %v recording %v", want, nsc.TraceID(), nsc.IsSampled(), next.IsRecording())
	}
	unsampled := nats.Header{"traceparent": {"00-" + rsc.TraceID().String() + "-b7ad6b7169203331-00"}}
	if _, s := b.Tracer.Start(Extract(ctx, unsampled), "scheduler.split"); s.SpanContext().IsSampled() {
		t.Fatal("a child of an unsampled parent is sampled")
	}

	a.Logger.InfoContext(childCtx, "message accepted")
	var rec map[string]any
	if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["trace_id"] != rsc.TraceID().String() || rec["span_id"] != child.SpanContext().SpanID().String() {
		t.Fatalf("log record = %v, want trace %v span %v", rec, rsc.TraceID(), child.SpanContext().SpanID())
	}
}

// TestSamplerVariableKeepsTheSDK: OTEL_TRACES_SAMPLER asks for the SDK's
// sampling, so its tracer is kept even without an exporter.
func TestSamplerVariableKeepsTheSDK(t *testing.T) {
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	tel, err := Setup(context.Background(), "ingress", Env{}, nil, "info")
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if _, span := tel.Tracer.Start(context.Background(), "x"); !span.IsRecording() {
		t.Fatal("with OTEL_TRACES_SAMPLER set the span does not record")
	}
}
