// Package marks answers "has an operator held or deleted this job?" from
// memory. Operators' marks live in the key-value bucket wire.BucketHeld;
// deliverers ask before every attempt and the scheduler before every
// result, which at thousands of jobs a second made one JetStream round trip
// each. A Cache follows the bucket with a key watch instead, so the hot path
// reads a map.
//
// Consistency: a mark reaches a Cache as a watch update, normally well
// under a millisecond after the operator's write was acknowledged, and
// updates arrive in bucket order. Until the watch has delivered the
// bucket's current content (and again whenever it is not running), Get
// asks the bucket directly, so a starting or disconnected process never
// answers "no mark" from an empty map.
//
// A mark found in memory is confirmed with the bucket's stream leader
// before Get answers with it. `sluice queue release` removes the mark and then requeues the
// job at once; the job can reach a deliverer before the watch delivers the
// removal, and a deliverer that believed the stale mark would park the job
// again, held with no mark, until someone released it a second time. Marks
// are rare, so the hot path (no mark) still reads only the map.
package marks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/streams"
)

// Cache is a watched copy of the marks bucket. It is safe for concurrent
// use.
type Cache struct {
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	log *slog.Logger

	mu      sync.RWMutex
	marks   map[string]admin.QueueMark
	current bool // the watch has delivered the bucket's content and is running

	w      jetstream.KeyWatcher
	cancel context.CancelFunc
	done   chan struct{}
}

// Watch starts following kv, a bucket of js. Stop ends it.
func Watch(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, log *slog.Logger) (*Cache, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The watch's own context ends it in Stop even when the connection is
	// gone and the watch cannot unsubscribe.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("marks: watch %s: %w", kv.Bucket(), err)
	}
	c := &Cache{js: js, kv: kv, log: log, marks: map[string]admin.QueueMark{}, w: w, cancel: cancel, done: make(chan struct{})}
	go c.follow()
	return c, nil
}

func (c *Cache) follow() {
	defer close(c.done)
	defer func() {
		c.mu.Lock()
		c.current = false
		c.mu.Unlock()
	}()
	for e := range c.w.Updates() {
		c.mu.Lock()
		switch {
		case e == nil:
			// The bucket's content as of the watch's start is in.
			c.current = true
		case e.Operation() == jetstream.KeyValuePut:
			c.marks[e.Key()] = Decode(e.Value())
		default: // delete or purge
			delete(c.marks, e.Key())
		}
		c.mu.Unlock()
	}
}

// Get returns the mark of jobID, if any: "none" from memory once the watch
// is current; before that, any answer from the bucket; a mark in memory
// only once the bucket's stream leader confirms it. The leader, because a
// key's read may be answered by a replica (direct get), and a replica
// behind the leader can still hold the mark a release has just removed.
func (c *Cache) Get(ctx context.Context, jobID string) (admin.QueueMark, bool, error) {
	c.mu.RLock()
	_, ok := c.marks[jobID]
	current := c.current
	c.mu.RUnlock()
	switch {
	case current && !ok:
		return admin.QueueMark{}, false, nil
	case !current:
		return Read(ctx, c.kv, jobID)
	}
	value, found, err := streams.LeaderKey(ctx, c.js, c.kv.Bucket(), jobID)
	if err != nil {
		return admin.QueueMark{}, false, fmt.Errorf("marks: confirm mark of %s: %w", jobID, err)
	}
	if !found {
		return admin.QueueMark{}, false, nil // removed: the watch is behind
	}
	return Decode(value), true, nil
}

// Current reports whether Get answers from memory.
func (c *Cache) Current() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.current
}

// Stop ends the watch; later Gets ask the bucket.
func (c *Cache) Stop() {
	if err := c.w.Stop(); err != nil {
		c.log.Debug("stop marks watch", "err", err)
	}
	c.cancel()
	<-c.done
}

// Read returns the mark of jobID straight from the bucket.
func Read(ctx context.Context, kv jetstream.KeyValue, jobID string) (admin.QueueMark, bool, error) {
	e, err := kv.Get(ctx, jobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return admin.QueueMark{}, false, nil
	}
	if err != nil {
		return admin.QueueMark{}, false, fmt.Errorf("marks: read mark of %s: %w", jobID, err)
	}
	return Decode(e.Value()), true, nil
}

// Decode parses a stored mark. A mark that cannot be read is still a mark:
// it holds rather than lets a job be delivered.
func Decode(b []byte) admin.QueueMark {
	var m admin.QueueMark
	if err := json.Unmarshal(b, &m); err != nil || (m.Action != admin.MarkHold && m.Action != admin.MarkDelete) {
		m.Action = admin.MarkHold
	}
	return m
}
