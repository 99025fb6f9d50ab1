package embedded

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkHeldPerMessage is the minimal reproduction of what a JetStream
// file stream keeps in memory for each message it stores (README,
// Performance, "Sustained load"), with nothing of Sluice in it: the heap
// the process holds after a collection, per message, once b.N small
// messages are stored in one stream, for three shapes:
//
//   - plain: every message on one subject, without a message id;
//   - msg_ids: one subject, each message with a Sluice-like message id
//     (the stream remembers it for its duplicate window);
//   - subjects: no id, each message on a subject of its own, as Sluice's
//     events are (the stream indexes every subject it holds).
//
// Run it with a fixed count, e.g. `cd services && go test ./embedded -run
// '^$' -bench HeldPerMessage -benchtime 200000x`; "B/msg" is the figure.
func BenchmarkHeldPerMessage(b *testing.B) {
	for _, shape := range []string{"plain", "msg_ids", "subjects"} {
		b.Run(shape, func(b *testing.B) {
			js := benchJetStream(b, Options{Listen: "127.0.0.1:0", StoreDir: b.TempDir()})
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name: "HELD", Subjects: []string{"held.>"}, Storage: jetstream.FileStorage, Duplicates: time.Hour,
			}); err != nil {
				b.Fatal(err)
			}
			before := heapAfterGC()
			b.ResetTimer()
			const window = 4096 // acknowledgements outstanding at once
			futures := make([]jetstream.PubAckFuture, 0, window)
			wait := func() {
				for _, f := range futures {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						b.Fatal(err)
					}
				}
				futures = futures[:0]
			}
			for i := range b.N {
				// A queue id is 20 characters, as wire.NewQueueID makes them.
				qid := fmt.Sprintf("%020d", i)
				m := &nats.Msg{Subject: "held.event.all", Data: []byte("x")}
				switch shape {
				case "msg_ids":
					m.Header = nats.Header{jetstream.MsgIDHeader: []string{qid + "-0/1/result"}}
				case "subjects":
					m.Subject = "held.event." + qid + ".received"
				}
				f, err := js.PublishMsgAsync(m)
				if err != nil {
					b.Fatal(err)
				}
				if futures = append(futures, f); len(futures) == window {
					wait()
				}
			}
			wait()
			b.StopTimer()
			s, err := js.Stream(ctx, "HELD")
			if err != nil {
				b.Fatal(err)
			}
			if got := s.CachedInfo().State.Msgs; got != uint64(b.N) {
				b.Fatalf("stream holds %d messages, published %d", got, b.N)
			}
			after := heapAfterGC()
			b.ReportMetric(float64(int64(after)-int64(before))/float64(b.N), "B/msg")
		})
	}
}

// heapAfterGC is the bytes of the heap in use after two collections.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
