package index

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// every event from the start of the stream and then follows it. With a
// bucket for snapshots, it first loads the last snapshot and reads only
// the events stored after it, and it saves one when it stops and every
// snapshotEvery while the index changes (see WriteSnapshot).
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
	snaps    jetstream.ObjectStore
	saved    atomic.Uint64 // index sequence of the last snapshot loaded or saved

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

// snapshotEvery is how often a changed index is saved, bounding what a
// scheduler that did not stop cleanly reads again; SnapshotObject is the
// object of the snapshots' bucket (wire.BucketIndex) that holds it.
const (
	snapshotEvery  = 10 * time.Minute
	SnapshotObject = "queue-index"
)

// Follow starts feeding x, which must be empty, from the events stream,
// from the snapshot in snaps when there is one (snaps may be nil). Jobs
// more than grace past their expiry are pruned now and then (see
// Index.Prune).
func Follow(ctx context.Context, js jetstream.JetStream, x *Index, grace time.Duration, snaps jetstream.ObjectStore, log *slog.Logger) (*Follower, error) {
	f := &Follower{x: x, log: log, started: time.Now(), stop: make(chan struct{}), snaps: snaps}
	if snaps != nil {
		f.load(ctx)
	}
	str, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("index: stream %s: %w", wire.StreamEvents, err)
	}
	f.target = str.CachedInfo().State.LastSeq
	if seq := x.Seq(); seq > f.target {
		// The snapshot is of events this stream never held (it was
		// deleted and made again): read them all.
		log.Warn("queue index: the snapshot is ahead of the events stream; rebuilding from the events", "snapshot_seq", seq, "stream_last_seq", f.target)
		x.reset()
		f.saved.Store(0)
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if seq := x.Seq(); seq > 0 {
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq + 1}
	}
	cons, err := js.OrderedConsumer(ctx, wire.StreamEvents, cfg)
	if err != nil {
		return nil, fmt.Errorf("index: consumer on %s: %w", wire.StreamEvents, err)
	}
	if f.target <= x.Seq() {
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
	f.log.Info("queue index loaded", "jobs", f.x.Len(), "events", f.target, "from_snapshot_seq", f.saved.Load(),
		"duration_ms", time.Since(f.started).Milliseconds())
}

// load fills the index from the last snapshot; without one, or with one
// it cannot read, the index stays empty and is built from the events.
func (f *Follower) load(ctx context.Context) {
	obj, err := f.snaps.Get(ctx, SnapshotObject)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return
	}
	if err == nil {
		err = f.x.LoadSnapshot(obj)
		obj.Close()
	}
	if err != nil {
		f.log.Warn("queue index: cannot load the snapshot; rebuilding from the events", "err", err)
		return
	}
	f.saved.Store(f.x.Seq())
	f.log.Info("queue index snapshot loaded", "jobs", f.x.Len(), "seq", f.x.Seq(), "duration_ms", time.Since(f.started).Milliseconds())
}

// save writes a snapshot of the index when it changed since the last one.
func (f *Follower) save() {
	if f.snaps == nil || f.x.Seq() == f.saved.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	pr, pw := io.Pipe()
	var seq uint64
	go func() {
		var err error
		seq, err = f.x.WriteSnapshot(pw)
		pw.CloseWithError(err)
	}()
	info, err := f.snaps.Put(ctx, jetstream.ObjectMeta{Name: SnapshotObject, Description: "Sluice: queue index snapshot"}, pr)
	pr.CloseWithError(errors.New("snapshot not stored"))
	if err != nil {
		f.log.Warn("queue index: cannot save a snapshot", "err", err)
		return
	}
	f.saved.Store(seq)
	f.log.Info("queue index snapshot saved", "jobs", f.x.Len(), "seq", seq, "bytes", info.Size, "duration_ms", time.Since(start).Milliseconds())
}

func (f *Follower) prune(grace time.Duration) {
	defer f.wg.Done()
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	st := time.NewTicker(snapshotEvery)
	defer st.Stop()
	for {
		select {
		case <-f.stop:
			return
		case now := <-t.C:
			if n := f.x.Prune(now, grace); n > 0 {
				f.log.Warn("queue index: pruned jobs long past their expiry", "jobs", n)
			}
		case <-st.C:
			if f.loaded.Load() {
				f.save()
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

// Stop stops following, waits for the goroutines and saves a snapshot of
// a fully loaded index; no event is applied once it returns. Safe to call
// twice.
func (f *Follower) Stop() {
	f.once.Do(func() {
		close(f.stop)
		f.cc.Stop()
		f.mu.Lock()
		f.stopped = true
		f.mu.Unlock()
		f.wg.Wait()
		if f.loaded.Load() {
			f.save()
		}
	})
}
