package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
type Follower struct {
	x        *Index
	it       jetstream.MessagesContext
	log      *slog.Logger
	target   uint64
	loaded   atomic.Bool
	bad      atomic.Int64
	started  time.Time
	loadTime atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

// pruneEvery is how often jobs long past their expiry are dropped.
const pruneEvery = 10 * time.Minute

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
	it, err := cons.Messages(jetstream.PullMaxMessages(10000), jetstream.PullThresholdMessages(8000))
	if err != nil {
		return nil, fmt.Errorf("index: consume %s: %w", wire.StreamEvents, err)
	}
	f := &Follower{x: x, it: it, log: log, target: str.CachedInfo().State.LastSeq, started: time.Now(), stop: make(chan struct{})}
	if f.target == 0 {
		f.markLoaded()
	}
	f.wg.Add(2)
	go f.run()
	go f.prune(grace)
	return f, nil
}

func (f *Follower) run() {
	defer f.wg.Done()
	for {
		msg, err := f.it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return
		}
		if err != nil {
			f.log.Warn("queue index: events consumer", "err", err)
			select {
			case <-f.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		var ev admin.QueueEvent
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			// An event we cannot read changes nothing; count it so an
			// operator can see the index may be off.
			if f.bad.Add(1) == 1 {
				f.log.Error("queue index: undecodable event", "subject", msg.Subject(), "seq", md.Sequence.Stream, "err", err)
			}
			ev = admin.QueueEvent{}
		}
		f.x.Apply(&ev, md.Sequence.Stream)
		if !f.loaded.Load() && md.Sequence.Stream >= f.target {
			f.markLoaded()
		}
	}
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

// Stop stops following and waits for the goroutines. Safe to call twice.
func (f *Follower) Stop() {
	f.once.Do(func() {
		close(f.stop)
		f.it.Stop()
		f.wg.Wait()
	})
}
