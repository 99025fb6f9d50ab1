package embedded

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A write returns before the other end reads it, the bytes arrive in order,
// and Close hands over everything queued before the end of the stream.
// Some writes are larger than a block of the queue, and many end inside one.
func TestQueuedConnQueuesInOrderAndDrainsOnClose(t *testing.T) {
	client, server := net.Pipe()
	q := newQueuedConn(client, 1<<20)

	var want bytes.Buffer
	for i := 0; i < 200; i++ {
		size := 1 + i*37%4096
		if i%70 == 3 {
			size = 2*queueBlock + i
		}
		chunk := bytes.Repeat([]byte{byte(i)}, size)
		want.Write(chunk)
		n, err := q.Write(chunk)
		if err != nil || n != len(chunk) {
			t.Fatalf("write %d: n=%d err=%v", i, n, err)
		}
	}
	// Nothing has read the pipe yet: with the pipe alone the first write
	// would still be waiting.
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read %d bytes, want %d in order", len(got), want.Len())
	}
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := q.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}

// A full queue makes the writer wait, until its write deadline.
func TestQueuedConnFullQueueHonoursWriteDeadline(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	q := newQueuedConn(client, 1024)
	defer q.Close()
	block := make([]byte, 1024)
	// The pump takes the first block and waits on the pipe; the second
	// fills the queue.
	for i := 0; i < 2; i++ {
		if _, err := q.Write(block); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if i == 0 {
			waitFor(t, func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.size == 0 })
		}
	}
	_ = q.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := q.Write(block)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("write to a full queue: %v, want a timeout", err)
	}
	if waited := time.Since(start); waited < 40*time.Millisecond {
		t.Fatalf("returned after %v, before the deadline", waited)
	}
	// Once the other end reads, the queue has room again.
	_ = q.SetWriteDeadline(time.Time{})
	go io.Copy(io.Discard, server)
	if _, err := q.Write(block); err != nil {
		t.Fatalf("write after the reader caught up: %v", err)
	}
}

// When the pipe fails, the next write says so.
func TestQueuedConnPipeFailure(t *testing.T) {
	client, server := net.Pipe()
	q := newQueuedConn(client, 1<<20)
	defer q.Close()
	server.Close()
	var err error
	waitFor(t, func() bool {
		_, err = q.Write([]byte("PING\r\n"))
		return err != nil
	})
	if !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write after the server end closed: %v, want io.ErrClosedPipe", err)
	}
}

// Through the embedded server: large publishes from many goroutines on one
// in-process connection are all stored, in the order each goroutine sent
// them.
func TestInProcessLargePublishes(t *testing.T) {
	s, err := Start(Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	probe, err := s.InProcess().InProcessConn()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := probe.(*queuedConn); !ok {
		t.Fatalf("in-process connection is a %T, want *queuedConn", probe)
	}
	probe.Close()
	nc, err := nats.Connect("", nats.InProcessServer(s.InProcess()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q.>"}}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func(w int) {
			for i := 0; i < each; i++ {
				body := bytes.Repeat([]byte{byte('a' + w)}, 100<<10+i)
				if _, err := js.Publish(ctx, "q."+string(rune('a'+w)), body); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}(w)
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	str, _ := js.Stream(ctx, "Q")
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != writers*each {
		t.Fatalf("stream holds %d messages, want %d", info.State.Msgs, writers*each)
	}
	for w := 0; w < writers; w++ {
		subj := "q." + string(rune('a'+w))
		c, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < each; i++ {
			m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("%s #%d: %v", subj, i, err)
			}
			if len(m.Data()) != 100<<10+i || m.Data()[0] != byte('a'+w) {
				t.Fatalf("%s #%d: %d bytes of %q, want %d of %q", subj, i, len(m.Data()), m.Data()[0], 100<<10+i, rune('a'+w))
			}
		}
	}
}

// BenchmarkQueuedConnLargeWrites writes 128 KiB at a time (an object
// store chunk) through a queue whose other end reads as a server's read loop
// does; B/op is what the queue allocates per write.
func BenchmarkQueuedConnLargeWrites(b *testing.B) {
	client, server := net.Pipe()
	q := newQueuedConn(client, queueLimit)
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 64<<10)
		for {
			if _, err := server.Read(buf); err != nil {
				return
			}
		}
	}()
	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := q.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	q.Close()
	<-read
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
