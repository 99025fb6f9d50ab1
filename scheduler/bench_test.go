package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// BenchmarkSplit measures the splitter end to end on an embedded server:
// messages published as the ingress does, until every one is acknowledged.
// "one" messages make a single job; "two" take the open-jobs path.
func BenchmarkSplit(b *testing.B) {
	for _, domains := range []int{1, 2} {
		b.Run(fmt.Sprintf("domains=%d", domains), func(b *testing.B) {
			benchSplit(b, domains)
		})
	}
}

func benchSplit(b *testing.B, domains int) {
	h := start(b, func(c *Config) { c.Scheduler.Concurrency = 64; c.Scheduler.Batch = 256 })
	rcpts := make([]*sluicev1.Recipient, domains)
	for i := range rcpts {
		rcpts[i] = &sluicev1.Recipient{Address: fmt.Sprintf("r@d%d.test", i)}
	}
	body := make([]byte, 4096)
	b.ResetTimer()
	var futures []jetstream.PubAckFuture
	for i := 0; i < b.N; i++ {
		m := &sluicev1.Message{Schema: wire.SchemaVersion, QueueId: wire.NewQueueID(time.Now()), MailFrom: "s@o.test",
			Recipients: rcpts, ReceivedUnixNano: time.Now().UnixNano(), Body: body}
		data, _ := proto.Marshal(m)
		msg := nats.NewMsg(wire.MessageSubject(m.QueueId))
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, m.QueueId)
		f, err := h.js.PublishMsgAsync(msg)
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == 1000 {
			if _, err := waitAll(h.ctx, nil, futures); err != nil {
				b.Fatal(err)
			}
			futures = futures[:0]
		}
	}
	if _, err := waitAll(h.ctx, nil, futures); err != nil {
		b.Fatal(err)
	}
	h.settledFor(wire.StreamMessages, wire.ConsumerScheduler, uint64(b.N), time.Minute)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
