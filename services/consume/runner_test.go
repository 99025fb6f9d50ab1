package consume

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/sluice-mta/sluice/services/natstest"
)

// TestRunnerWithoutPanicPoison runs inputs through a Runner the way the
// deliverer does, with its own fetching: a Confirmed outcome removes the
// input from the work queue and is counted as an ack; a handler that
// settles the input itself and says Settled is counted once, by what it
// did; and with PanicsArePoison off an input that panics on more than
// MaxPanics deliveries is retried every time, never terminated.
func TestRunnerWithoutPanicPoison(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R", Subjects: []string{"r.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "R", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxDeliver: -1})
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
	r := &Runner{Input: "jobs", KeepAlive: time.Second, RetryDelay: time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m}
	for _, s := range []string{"confirmed", "self", "boom"} {
		if _, err := js.Publish(ctx, "r."+s, nil); err != nil {
			t.Fatal(err)
		}
	}
	booms := 0
	for deadline := time.Now().Add(20 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("inputs left after %d panics", booms)
		}
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var msg jetstream.Msg
		for msg = range b.Messages() {
		}
		if msg == nil {
			t.Fatalf("nothing to fetch after %d panics: boom was terminated", booms)
		}
		o, err := r.Run(ctx, msg, func(_ context.Context, msg jetstream.Msg) Outcome {
			switch msg.Subject() {
			case "r.confirmed":
				return Confirmed(5 * time.Second)
			case "r.self":
				_ = msg.Ack()
				return Settled()
			}
			panic("boom")
		})
		if err != nil {
			t.Fatal(err)
		}
		if msg.Subject() == "r.boom" {
			if o.Name() != "nak" {
				t.Fatalf("a panic settled as %s, want nak", o.Name())
			}
			if booms++; booms == MaxPanics+2 {
				break
			}
		}
	}
	// Still there to be handed out: terminate it by hand.
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for msg := range b.Messages() {
		n++
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("%d inputs left after the panics, want boom", n)
	}
	got := counters(t, reader)
	want := map[string]int64{
		"sluice_test_inputs_settled_total/ack":     2,
		"sluice_test_inputs_settled_total/nak":     MaxPanics + 2,
		"sluice_test_inputs_settled_total/term":    0,
		"sluice_test_inputs_settled_total/settled": 0,
		"sluice_test_panics_total":                 MaxPanics + 2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	info, err := cons.Info(ctx) // the hand ack above is not counted
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("consumer: %d pending, %d awaiting ack; want none", info.NumPending, info.NumAckPending)
	}
}
