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
	resp, _ = http.Get(base + "/healthz")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("healthz while not ready = %d", resp.StatusCode)
	}
	notReady.Store(false)
	resp, _ = http.Get(base + "/healthz")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz when ready = %d", resp.StatusCode)
	}
}

func TestBadProtocolIsAClearError(t *testing.T) {
	_, err := Setup(context.Background(), "x", Env{Endpoint: "http://127.0.0.1:1", Protocol: "carrier-pigeon"}, nil, "info")
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Fatalf("want an error naming OTEL_EXPORTER_OTLP_PROTOCOL, got %v", err)
	}
}
