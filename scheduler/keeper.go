package scheduler

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/streams"
)

// The keeper holds one marker message near the end of each stream a mail
// passes through (SLUICE_MSGS, SLUICE_JOBS, SLUICE_RESULTS), on the
// stream's keep subject, which no consumer reads.
//
// Why: when a removal (a work queue's acknowledgement, a deletion) takes
// the last message out of a stream's last block, nats-server 2.15.2
// replaces that block: it creates a new block file, writes a tombstone to
// it and removes the old file (filestore removeMsgBlock). A queue that
// keeps up with its mail is empty after most removals, so it paid that per
// message: at a paced 400 msg/s 0.9-1.4 block replacements per mail across
// the three streams with the services as processes, 2.8 in one process
// (README, Performance). With a marker behind the
// newest records the last block is not emptied. A marker is placed again
// every keepEvery while the scheduler handles anything, since a block that
// fills up starts a new one without it; the marker before is removed, so
// each stream holds one per scheduler.
//
// A marker is an empty message. Nothing depends on it: a stream without
// one works as before, and a failure to place one is only logged at debug.
const keepEvery = 100 * time.Millisecond

// keepTimeout bounds one marker's publish and the removal of the one before.
const keepTimeout = 2 * time.Second

// keptStreams are the streams the keeper holds a marker in.
var keptStreams = []string{wire.StreamMessages, wire.StreamJobs, wire.StreamResults}

// keeper places markers every interval while handled moves, until ctx
// ends; it closes done when it returns.
type keeper struct {
	js       jetstream.JetStream
	handled  *atomic.Uint64
	interval time.Duration
	log      *slog.Logger
	done     chan struct{}
	// streams are the handles of keptStreams, looked up once, and prev
	// the sequence of the marker this keeper placed last in each.
	streams map[string]jetstream.Stream
	prev    map[string]uint64
}

func (k *keeper) run(ctx context.Context) {
	defer close(k.done)
	t := time.NewTicker(k.interval)
	defer t.Stop()
	var seen uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Idle: the last block cannot be emptied by work that does not
		// happen, and the marker placed last is still behind everything.
		if n := k.handled.Load(); n != seen {
			seen = n
			for _, name := range keptStreams {
				if err := k.place(ctx, name); err != nil && ctx.Err() == nil {
					k.log.DebugContext(ctx, "stream marker not placed", "stream", name, "err", err)
				}
			}
		}
	}
}

// place publishes a marker at the end of stream and removes the one before
// it.
func (k *keeper) place(ctx context.Context, stream string) error {
	ctx, cancel := context.WithTimeout(ctx, keepTimeout)
	defer cancel()
	subject := wire.KeepSubject(stream)
	ack, err := k.js.Publish(ctx, subject, nil, jetstream.WithExpectStream(stream))
	if err != nil {
		return err
	}
	st := k.streams[stream]
	if st == nil {
		var err error
		if st, err = k.js.Stream(ctx, stream); err != nil {
			return err
		}
		if k.streams == nil {
			k.streams = map[string]jetstream.Stream{}
			k.prev = map[string]uint64{}
		}
		k.streams[stream] = st
	}
	prev := k.prev[stream]
	k.prev[stream] = ack.Sequence
	if prev == 0 {
		// The first marker of this keeper: purge those an earlier one
		// left (a scheduler that stopped does not remove its last). A
		// purge by subject reads the blocks that hold the subject, so
		// it is done once; after that each marker replaces the one
		// before it by sequence.
		return st.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeKeep(1))
	}
	// Gone already is fine: another scheduler's first marker purged it.
	_, err = streams.DeleteMsg(ctx, st, prev)
	return err
}
