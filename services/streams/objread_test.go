package streams

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

// bodiesForTest provisions a fresh server's streams and opens the bodies
// bucket and its stream.
func bodiesForTest(t *testing.T) (*natstest.Server, *nats.Conn, jetstream.JetStream, jetstream.ObjectStore, jetstream.Stream) {
	t.Helper()
	s := natstest.Start(t)
	nc, js := s.Connect(t)
	ctx := context.Background()
	q := config.DefaultQueue()
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	obs, err := Bodies(ctx, js, q)
	if err != nil {
		t.Fatal(err)
	}
	str, err := js.Stream(ctx, "OBJ_"+wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	return s, nc, js, obs, str
}

// content is n octets that differ from one chunk to the next.
func content(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i/1000)
	}
	return b
}

// Objects stored at the same time, so that their chunks interleave in the
// stream, read back exactly, by direct gets alone: no consumer is made.
func TestObjectReaderReadsWhatWasStored(t *testing.T) {
	_, nc, js, obs, str := bodiesForTest(t)
	ctx := context.Background()
	sizes := []int{0, 1, 128 << 10, 128<<10 + 1, 450 << 10, 9 << 20}
	var wg sync.WaitGroup
	errs := make(chan error, len(sizes))
	for i, n := range sizes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := obs.PutBytes(ctx, fmt.Sprintf("B%d", i), content(n, byte(i)))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	api := watchAPI(t, nc)
	gets := 0
	for i, n := range sizes {
		info, err := obs.GetInfo(ctx, fmt.Sprintf("B%d", i))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(NewObjectReader(ctx, js, str, info, 5*time.Second))
		if err != nil {
			t.Fatalf("object of %d octets: %v", n, err)
		}
		if !bytes.Equal(got, content(n, byte(i))) {
			t.Fatalf("object of %d octets: read %d octets that differ from what was stored", n, len(got))
		}
		gets += int(info.Chunks)
	}
	reqs := api.take(t, nc)
	direct := 0
	for _, r := range reqs {
		switch {
		case strings.HasPrefix(r, "$JS.API.DIRECT.GET.OBJ_"+wire.BucketBodies+" "):
			direct++
		case strings.HasPrefix(r, "$JS.API.CONSUMER."):
			t.Errorf("reading made a consumer request: %s", r)
		}
	}
	if direct != gets {
		t.Errorf("%d direct gets for %d chunks; requests: %q", direct, gets, reqs)
	}
}

// OpenObject reads what a tool asks for of a large object (here the first
// 64 KiB, as a DSN's header section is read) with a direct get or two,
// never a consumer that would push the rest; an absent object is
// jetstream.ErrObjectNotFound.
func TestOpenObjectReadsOnlyWhatIsAskedFor(t *testing.T) {
	_, nc, js, obs, _ := bodiesForTest(t)
	ctx := context.Background()
	want := content(3<<20, 7)
	if _, err := obs.PutBytes(ctx, "big", want); err != nil {
		t.Fatal(err)
	}
	api := watchAPI(t, nc)
	r, err := OpenObject(ctx, js, wire.BucketBodies, "big", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil || !bytes.Equal(got, want[:64<<10]) {
		t.Fatalf("read %d octets (%v), want the first 64 KiB of what was stored", len(got), err)
	}
	// The chunk asked for ahead may still be on its way: let it land.
	time.Sleep(100 * time.Millisecond)
	direct := 0
	for _, req := range api.take(t, nc) {
		switch {
		case strings.HasPrefix(req, "$JS.API.DIRECT.GET.OBJ_"+wire.BucketBodies+" "):
			direct++
		case strings.HasPrefix(req, "$JS.API.CONSUMER."):
			t.Errorf("opening made a consumer request: %s", req)
		}
	}
	if direct < 1 || direct > 2 {
		t.Errorf("%d direct gets of chunks for 64 KiB of a 3 MiB object; want the first chunk and at most one ahead", direct)
	}
	if _, err := OpenObject(ctx, js, wire.BucketBodies, "absent", 5*time.Second); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("absent object: %v, want ErrObjectNotFound", err)
	}
}

// What does not add up to the object's info is an error, not content: a
// digest that differs, a size smaller than the chunks, a chunk count that
// differs, and chunks deleted while the object is read.
func TestObjectReaderChecksWhatItReads(t *testing.T) {
	_, _, js, obs, str := bodiesForTest(t)
	ctx := context.Background()
	stored, err := obs.PutBytes(ctx, "X", content(300<<10, 7))
	if err != nil {
		t.Fatal(err)
	}
	read := func(edit func(*jetstream.ObjectInfo)) error {
		info := *stored
		edit(&info)
		_, err := io.ReadAll(NewObjectReader(ctx, js, str, &info, 5*time.Second))
		return err
	}
	if err := read(func(i *jetstream.ObjectInfo) {}); err != nil {
		t.Fatalf("the object as stored: %v", err)
	}
	if err := read(func(i *jetstream.ObjectInfo) { i.Digest = "SHA-256=" + strings.Repeat("A", 43) + "=" }); !errors.Is(err, jetstream.ErrDigestMismatch) {
		t.Errorf("another digest: %v, want a digest mismatch", err)
	}
	if err := read(func(i *jetstream.ObjectInfo) { i.Size -= 10 }); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a size 10 octets short: %v, want an error about the last chunk", err)
	}
	if err := read(func(i *jetstream.ObjectInfo) { i.Chunks++ }); err == nil || !strings.Contains(err.Error(), "read 3 chunks, its info says 4") {
		t.Errorf("one chunk more in the info: %v", err)
	}

	r := NewObjectReader(ctx, js, str, stored, 5*time.Second)
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := DeleteBody(ctx, js, wire.BucketBodies, "X", stored.NUID); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("chunks deleted during the read: %v, want object not found", err)
	}
}

// The leader answers a get of the next message on a subject, as the
// reader asks it when a replica does not hold a chunk.
func TestLeaderGetNextForSubject(t *testing.T) {
	_, _, js, obs, _ := bodiesForTest(t)
	ctx := context.Background()
	a, err := obs.PutBytes(ctx, "A", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := obs.PutBytes(ctx, "B", []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := leaderGet(ctx, js, "OBJ_"+wire.BucketBodies, getRequest{Seq: 1, NextFor: "$O." + wire.BucketBodies + ".C." + b.NUID})
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "second" || m.Sequence <= 2 {
		t.Fatalf("next chunk of B from sequence 1: %q at %d, want %q after A's", m.Data, m.Sequence, "second")
	}
	_, err = leaderGet(ctx, js, "OBJ_"+wire.BucketBodies, getRequest{Seq: m.Sequence + 1, NextFor: "$O." + wire.BucketBodies + ".C." + a.NUID})
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a chunk of A after B's: %v, want not found", err)
	}
}
