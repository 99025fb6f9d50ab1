package index

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// churn applies events that add, change and finish jobs, from seq on, so
// that interned strings are released and reused and slots are freed: what
// a snapshot must carry exactly for the index to go on as if it had never
// stopped.
func churn(x *Index, seq uint64, round int) uint64 {
	apply := func(ev *admin.QueueEvent) { seq++; x.Apply(ev, seq) }
	for i := range 200 {
		qid := fmt.Sprintf("R%d-%020d", round, i)
		d := fmt.Sprintf("r%d-%d.example", round, i%7)
		at := t0.Add(time.Duration(round*1000+i) * time.Second)
		apply(received(qid, 0, d, fmt.Sprintf("s%d@o.example", i%3), at, "a@"+d, "b@"+d))
		switch i % 4 {
		case 0:
			apply(deferred(wire.JobID(qid, 0), 1, at, at.Add(time.Hour), "remote", fmt.Sprintf("451 busy %d", i%5), "b@"+d))
		case 1:
			apply(&admin.QueueEvent{Type: wire.EventDelivered, Time: at.Add(time.Duration(i) * time.Second), JobID: wire.JobID(qid, 0), QueueID: qid,
				Recipients: []admin.QueueRecipientResult{{Address: "a@" + d, Outcome: "delivered"}, {Address: "b@" + d, Outcome: "delivered"}}})
		case 2:
			apply(&admin.QueueEvent{Type: wire.EventHeld, JobID: wire.JobID(qid, 0), QueueID: qid, State: admin.StateHeld, Attempt: 1})
		}
	}
	// Finish some jobs of the round before, releasing their strings.
	if round > 0 {
		for i := 0; i < 200; i += 8 {
			qid := fmt.Sprintf("R%d-%020d", round-1, i)
			apply(&admin.QueueEvent{Type: wire.EventDeleted, JobID: wire.JobID(qid, 0), QueueID: qid})
		}
	}
	return seq
}

// sameIndex fails unless x and y answer every query alike.
func sameIndex(t *testing.T, x, y *Index) {
	t.Helper()
	if x.Len() != y.Len() || x.Seq() != y.Seq() {
		t.Fatalf("len %d/%d seq %d/%d", x.Len(), y.Len(), x.Seq(), y.Seq())
	}
	all, _ := Compile(admin.QueueFilter{}, t0)
	ids := x.Matching(all)
	if len(ids) != x.Len() {
		t.Fatalf("%d jobs match everything, index has %d", len(ids), x.Len())
	}
	for _, id := range ids {
		a, _ := x.Get(id)
		b, ok := y.Get(id)
		if !ok || !reflect.DeepEqual(a, b) {
			t.Fatalf("job %s: %+v\nwant %+v", id, b, a)
		}
	}
	now := t0.Add(3 * time.Hour)
	if a, b := x.Stats(all, now, 10), y.Stats(all, now, 10); !reflect.DeepEqual(a, b) {
		t.Fatalf("stats differ:\n%+v\n%+v", a, b)
	}
	if a, b := x.Delays(now), y.Delays(now); a != b || a.Count == 0 {
		t.Fatalf("delays %+v and %+v (want equal, with samples)", a, b)
	}
	if a, b := x.Depth(), y.Depth(); a != b {
		t.Fatalf("depth %v and %v", a, b)
	}
}

// TestSnapshotRoundTrip: an index loaded from a snapshot answers as the
// original did, and keeps doing so as the same events go on arriving.
func TestSnapshotRoundTrip(t *testing.T) {
	x := New(24 * time.Hour)
	FillDeferred(x, 3000, 40, t0)
	seq := x.Seq()
	for round := range 3 {
		seq = churn(x, seq, round)
	}
	var buf bytes.Buffer
	got, err := x.WriteSnapshot(&buf)
	if err != nil || got != seq {
		t.Fatalf("snapshot at seq %d, %v; want %d", got, err, seq)
	}
	y := New(24 * time.Hour)
	if err := y.LoadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	sameIndex(t, x, y)
	// A job in both is not loaded twice.
	if err := y.LoadSnapshot(bytes.NewReader(buf.Bytes())); err == nil {
		t.Fatal("a snapshot loaded into an index that is not empty")
	}
	for round := 3; round < 6; round++ {
		churn(x, seq, round)
		seq = churn(y, seq, round)
	}
	sameIndex(t, x, y)
}

// TestSnapshotDamaged: a snapshot cut short or altered is refused, and the
// index is left empty and working, to be rebuilt from the events.
func TestSnapshotDamaged(t *testing.T) {
	x := New(time.Hour)
	FillDeferred(x, 500, 10, t0)
	churn(x, x.Seq(), 0)
	var buf bytes.Buffer
	if _, err := x.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	damaged := map[string][]byte{
		"empty":         nil,
		"cut in half":   good[:len(good)/2],
		"last byte cut": good[:len(good)-1],
		"other version": append([]byte(strings.Replace(snapshotMagic, "1", "9", 1)), good[len(snapshotMagic):]...),
	}
	// A job's state byte out of range.
	bad := bytes.Clone(good)
	i := bytes.Index(bad, []byte(fmt.Sprintf("%024d", 0)))
	bad[i-1-entryWire+40] = 200
	damaged["state out of range"] = bad
	for name, b := range damaged {
		y := New(time.Hour)
		if err := y.LoadSnapshot(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: loaded", name)
			continue
		}
		if y.Len() != 0 || y.Seq() != 0 {
			t.Errorf("%s: index left with %d jobs at seq %d", name, y.Len(), y.Seq())
		}
		y.Apply(received("Q1", 0, "dest.test", "a@o.test", t0, "x@dest.test"), 1)
		if j, ok := y.Get("Q1-0"); !ok || j.Domain != "dest.test" || y.Len() != 1 {
			t.Errorf("%s: index after a refused snapshot: %+v %v", name, j, ok)
		}
	}
}

// TestFollowFromSnapshot: a follower that stops saves a snapshot, and the
// next one loads it and reads only the events stored after it. The events
// the snapshot holds are purged from the stream before the restart, so an
// index that read the stream from its start would miss their jobs.
func TestFollowFromSnapshot(t *testing.T) {
	const n = 300
	js := eventsStream(t, n, 0)
	ctx := context.Background()
	snaps, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: wire.BucketIndex})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	start := func() (*Index, *Follower) {
		x := New(time.Hour)
		f, err := Follow(ctx, js, x, time.Hour, snaps, log)
		if err != nil {
			t.Fatal(err)
		}
		for done, _, _ := f.Loaded(); !done; done, _, _ = f.Loaded() {
			time.Sleep(time.Millisecond)
		}
		return x, f
	}
	x, f := start()
	if x.Len() != n || strings.Contains(logs.String(), "snapshot loaded") {
		t.Fatalf("first start: %d jobs, log:\n%s", x.Len(), logs.String())
	}
	f.Stop()
	info, err := snaps.GetInfo(ctx, SnapshotObject)
	if err != nil || info.Size == 0 {
		t.Fatalf("no snapshot after stop: %v", err)
	}
	seq := x.Seq()

	str, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := str.Purge(ctx, jetstream.WithPurgeSequence(seq+1)); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		qid := fmt.Sprintf("N%023d", i)
		if _, err := js.Publish(ctx, wire.EventSubject(qid, wire.EventReceived, t0), admin.MarshalQueueEvent(received(qid, 0, "new.example", "a@o.example", t0, "x@new.example"))); err != nil {
			t.Fatal(err)
		}
	}
	y, g := start()
	defer g.Stop()
	if y.Len() != n+5 || y.Seq() != seq+5 {
		t.Fatalf("restart from the snapshot: %d jobs at seq %d, want %d at %d; log:\n%s", y.Len(), y.Seq(), n+5, seq+5, logs.String())
	}
	if j, ok := y.Get(wire.JobID(fmt.Sprintf("%024d", 7), 0)); !ok || j.State != Deferred || j.LastError == "" {
		t.Fatalf("job from the snapshot: %+v %v", j, ok)
	}
	if !strings.Contains(logs.String(), fmt.Sprintf(`msg="queue index snapshot loaded" jobs=%d seq=%d`, n, seq)) {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// lockedBuffer is a log that the follower's goroutines write while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFollowSnapshotAheadOfStream: a snapshot of events the stream never
// held (it was deleted and made again) is dropped for a rebuild.
func TestFollowSnapshotAheadOfStream(t *testing.T) {
	js := eventsStream(t, 50, 0)
	ctx := context.Background()
	snaps, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: wire.BucketIndex})
	if err != nil {
		t.Fatal(err)
	}
	x := New(time.Hour)
	FillDeferred(x, 80, 5, t0) // 160 events: beyond the stream's 100
	var buf bytes.Buffer
	if _, err := x.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := snaps.PutBytes(ctx, SnapshotObject, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	y := New(time.Hour)
	f, err := Follow(ctx, js, y, time.Hour, snaps, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	for done, _, _ := f.Loaded(); !done; done, _, _ = f.Loaded() {
		time.Sleep(time.Millisecond)
	}
	if y.Len() != 50 || y.Seq() != 100 {
		t.Fatalf("index has %d jobs at seq %d, want the stream's 50 at 100", y.Len(), y.Seq())
	}
}
