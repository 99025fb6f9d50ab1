package consume

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/natstest"
)

// TestKeepInProgress: an input held longer than the consumer's AckWait is
// not handed out again while its keep-alive runs, and is handed out again
// within about AckWait once the holder stops (as when it dies).
func TestKeepInProgress(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	fetchOne := func(wait time.Duration) jetstream.Msg {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(wait))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			return m
		}
		return nil
	}
	held := fetchOne(2 * time.Second)
	if held == nil {
		t.Fatal("no message")
	}
	stop := KeepInProgress(held, 250*time.Millisecond)
	// Three AckWaits pass: nobody else gets the input.
	if m := fetchOne(3 * time.Second); m != nil {
		md, _ := m.Metadata()
		t.Fatalf("input handed out again while kept in progress (delivery %d)", md.NumDelivered)
	}
	stop()
	// Stopped without an ack: the input comes back after AckWait.
	m := fetchOne(5 * time.Second)
	if m == nil {
		t.Fatal("input not handed out again after its holder stopped")
	}
	if md, _ := m.Metadata(); md.NumDelivered != 2 {
		t.Fatalf("redelivered input has delivery count %d, want 2", md.NumDelivered)
	}
}
