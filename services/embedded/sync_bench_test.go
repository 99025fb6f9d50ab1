package embedded

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkSyncAlways is the minimal reproduction of why fsync on every
// write costs Sluice what it does (README, Performance): with
// sync_interval always the JetStream file store syncs each message it
// stores (filestore writeMsgRecordLocked, one Sync per record), so
// publishers waiting on their acknowledgements at the same time do not
// share a sync: ten concurrent publishers get about what one gets, where a
// store with group commit would give them about ten times as much. The
// plain runs (sync every two minutes, the server's default) are the
// baseline. Nothing of Sluice is involved: one stream, 4 KB messages,
// synchronous publishes. The third shape puts each of ten publishers on a
// stream of its own: separate streams do not share syncs either.
func BenchmarkSyncAlways(b *testing.B) {
	body := make([]byte, 4096)
	for _, always := range []bool{false, true} {
		for _, shape := range []struct{ publishers, streams int }{{1, 1}, {10, 1}, {10, 10}} {
			publishers, streams := shape.publishers, shape.streams
			name := fmt.Sprintf("sync_always=%t/publishers=%d/streams=%d", always, publishers, streams)
			b.Run(name, func(b *testing.B) {
				js := benchJetStream(b, Options{Listen: "127.0.0.1:0", StoreDir: b.TempDir(), SyncAlways: always})
				ctx := context.Background()
				for st := range streams {
					cfg := jetstream.StreamConfig{Name: fmt.Sprintf("SYNC%d", st), Subjects: []string{fmt.Sprintf("sync%d.>", st)}, Storage: jetstream.FileStorage}
					if _, err := js.CreateStream(ctx, cfg); err != nil {
						b.Fatal(err)
					}
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, publishers)
				b.ResetTimer()
				start := time.Now()
				for p := range publishers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						subj := fmt.Sprintf("sync%d.%d", p%streams, p)
						for next.Add(1) <= int64(b.N) {
							if _, err := js.Publish(ctx, subj, body); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				var got uint64
				for st := range streams {
					info, err := js.Stream(ctx, fmt.Sprintf("SYNC%d", st))
					if err != nil {
						b.Fatal(err)
					}
					got += info.CachedInfo().State.Msgs
				}
				if got != uint64(b.N) {
					b.Fatalf("stream holds %d messages, published %d", got, b.N)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
			})
		}
	}
}

// benchJetStream starts a server with opts and returns a JetStream client
// of it; both end with the benchmark.
func benchJetStream(b *testing.B, opts Options) jetstream.JetStream {
	b.Helper()
	srv, err := Start(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return js
}
