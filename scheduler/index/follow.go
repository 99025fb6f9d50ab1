package index

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// Follower keeps an index up to date with SLUICE_EVENTS: an ordered
// consumer (ephemeral, in memory, nothing for JetStream to persist) reads
// every event from the start of the stream and then follows it.
//
// A restart reads every event, two or more per job, so each costs as little
// as it can: the consumer pulls large batches and hands each message to a
// callback (its iterator arms a timer per message), the stream sequence is
// read from the reply subject without allocating, and the event is decoded
// without allocating (admin.EventReader) into the index, which copies what
// it keeps.
type Follower struct {
	x        *Index
	cc       jetstream.ConsumeContext
	log      *slog.Logger
	target   uint64
	loaded   atomic.Bool
	bad      atomic.Int64
	started  time.Time
	loadTime atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once

	// mu serialises handle (an ordered consumer that resets itself could
	// overlap two deliveries) and guards r and stopped.
	mu      sync.Mutex
	r       admin.EventReader
	stopped bool
}

// pruneEvery is how often jobs long past their expiry are dropped.
const pruneEvery = 10 * time.Minute

// pullBatch is how many events the consumer asks for at once (a few MB).
const pullBatch = 20000

// Follow starts feeding x from the events stream. Jobs more than grace past
// their expiry are pruned now and then (see Index.Prune).
func Follow(ctx context.Context, js jetstream.JetStream, x *Index, grace time.Duration, log *slog.Logger) (*Follower, error) {
	str, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("index: stream %s: %w", wire.StreamEvents, err)
	}
	cons, err := js.OrderedConsumer(ctx, wire.StreamEvents, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("index: consumer on %s: %w", wire.StreamEvents, err)
	}
	f := &Follower{x: x, log: log, target: str.CachedInfo().State.LastSeq, started: time.Now(), stop: make(chan struct{})}
	if f.target == 0 {
		f.markLoaded()
	}
	f.cc, err = cons.Consume(f.handle, jetstream.PullMaxMessages(pullBatch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			f.log.Warn("queue index: events consumer", "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("index: consume %s: %w", wire.StreamEvents, err)
	}
	f.wg.Add(1)
	go f.prune(grace)
	return f, nil
}

// handle applies one event.
func (f *Follower) handle(msg jetstream.Msg) {
	seq, ok := streamSeq(msg.Reply())
	if !ok {
		md, err := msg.Metadata()
		if err != nil {
			return
		}
		seq = md.Sequence.Stream
	}
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return
	}
	// The event shares the message's memory, which nothing else uses.
	ev, err := f.r.Read(msg.Data())
	if err != nil {
		// An event we cannot read changes nothing; count it so an
		// operator can see the index may be off.
		if f.bad.Add(1) == 1 {
			f.log.Error("queue index: undecodable event", "subject", msg.Subject(), "seq", seq, "err", err)
		}
		ev = &admin.QueueEvent{}
	}
	f.x.Apply(ev, seq)
	f.mu.Unlock()
	if !f.loaded.Load() && seq >= f.target {
		f.markLoaded()
	}
}

// streamSeq reads the stream sequence of a JetStream delivery from its
// reply subject, as jetstream.Msg.Metadata does but without allocating:
// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
// or with <domain>.<account hash> after $JS.ACK (and a random token at
// the end) from servers that add them.
func streamSeq(reply string) (uint64, bool) {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	if !ok {
		return 0, false
	}
	var pos int
	switch n := strings.Count(rest, ".") + 1; {
	case n == 7:
		pos = 3
	case n >= 9:
		pos = 5
	default:
		return 0, false
	}
	for range pos {
		rest = rest[strings.IndexByte(rest, '.')+1:]
	}
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		rest = rest[:i]
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	return seq, err == nil
}

func (f *Follower) markLoaded() {
	f.loadTime.Store(int64(time.Since(f.started)))
	f.loaded.Store(true)
	f.log.Info("queue index loaded", "jobs", f.x.Len(), "events", f.target, "duration_ms", time.Since(f.started).Milliseconds())
}

func (f *Follower) prune(grace time.Duration) {
	defer f.wg.Done()
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case now := <-t.C:
			if n := f.x.Prune(now, grace); n > 0 {
				f.log.Warn("queue index: pruned jobs long past their expiry", "jobs", n)
			}
		}
	}
}

// Loaded reports whether the index has applied every event that was in
// the stream when Follow started, and if not, how far it is.
func (f *Follower) Loaded() (bool, uint64, uint64) {
	return f.loaded.Load(), f.x.Seq(), f.target
}

// LoadTime is how long the initial load took (0 while loading).
func (f *Follower) LoadTime() time.Duration { return time.Duration(f.loadTime.Load()) }

// Undecodable counts events that could not be read.
func (f *Follower) Undecodable() int64 { return f.bad.Load() }

// Stop stops following and waits for the goroutines; no event is applied
// once it returns. Safe to call twice.
func (f *Follower) Stop() {
	f.once.Do(func() {
		close(f.stop)
		f.cc.Stop()
		f.mu.Lock()
		f.stopped = true
		f.mu.Unlock()
		f.wg.Wait()
	})
}
