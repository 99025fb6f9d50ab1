package consume

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/services/natstest"
)

// TestLoopOutcomes runs a Loop on a work-queue stream with a handler that
// acknowledges "ok", retries "later" once, poisons "bad" and panics on
// every delivery of "boom": "ok" and "later" are processed (later twice),
// "bad" is terminated at once, "boom" is counted as a panic on each of
// MaxPanics deliveries and then terminated, and the loop goes on: "after",
// published last, is processed.
func TestLoopOutcomes(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	ccfg := jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxDeliver: -1}
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", ccfg)
	if err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(ctx) })
	m, err := NewMetrics(mp.Meter("test"), "test")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var after atomic.Bool
	h := func(_ context.Context, msg jetstream.Msg) Outcome {
		name := msg.Subject()[2:]
		mu.Lock()
		seen[name]++
		n := seen[name]
		mu.Unlock()
		switch name {
		case "later":
			if n == 1 {
				return RetryAfter(100 * time.Millisecond)
			}
		case "bad":
			return Poison("bad input")
		case "boom":
			panic("boom")
		case "after":
			after.Store(true)
		}
		return Done()
	}
	l, err := StartLoop(ctx, cons, LoopConfig{
		Input: "test", Batch: 4, Workers: 2, KeepAlive: time.Second, Timeout: 5 * time.Second, RetryDelay: 50 * time.Millisecond,
		Reopen: func(ctx context.Context) (jetstream.Consumer, error) {
			return js.CreateOrUpdateConsumer(ctx, "T", ccfg)
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m,
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ok", "later", "bad", "boom"} {
		if _, err := js.Publish(ctx, "t."+s, nil); err != nil {
			t.Fatal(err)
		}
	}
	str, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := str.Info(ctx)
		if err == nil && info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream not emptied: %v", info.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := js.Publish(ctx, "t.after", nil); err != nil {
		t.Fatal(err)
	}
	for !after.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the loop stopped after the panics")
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.Stop()
	if !l.Wait(5 * time.Second) {
		t.Fatal("the loop did not stop")
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["ok"] != 1 || seen["later"] != 2 || seen["bad"] != 1 || seen["boom"] != MaxPanics || seen["after"] != 1 {
		t.Fatalf("deliveries %v, want ok 1, later 2, bad 1, boom %d, after 1", seen, MaxPanics)
	}
	got := counters(t, reader)
	// ok, later (2nd), after: ack; later (1st) and boom (4 panics): nak;
	// bad and boom (5th): term.
	want := map[string]int64{
		"sluice_test_inputs_settled_total/ack":  3,
		"sluice_test_inputs_settled_total/nak":  1 + MaxPanics - 1,
		"sluice_test_inputs_settled_total/term": 2,
		"sluice_test_panics_total":              MaxPanics,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

// counters reads reader's integer counters, keyed by name and, for the
// settlements, name/settlement.
func counters(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			sum, ok := mt.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				key := mt.Name
				if v, ok := dp.Attributes.Value(attribute.Key("settlement")); ok {
					key += "/" + v.AsString()
				}
				got[key] += dp.Value
			}
		}
	}
	return got
}
