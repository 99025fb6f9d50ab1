package embedded

import (
	"net"
	"os"
	"sync"
	"time"
)

// queuedConn is a client's end of an in-process connection whose writes are
// queued and handed to the server by a goroutine of its own.
//
// The server's in-process connection is a net.Pipe: a write returns only
// when the server's read loop has read every byte of it. nats.go writes
// while it holds its connection's lock (the flusher, and a publish larger
// than its buffer), so with a pipe every publisher, request and
// acknowledgement of the connection waited for the server to read the bytes
// before it: at 100 KB per message, the deliverer's workers spent their time
// queued on that lock. Here a write copies into memory and returns; the pump
// writes to the pipe in order, with no lock held by the client.
//
// The queue is a list of fixed blocks (queueBlock), not one slice: a slice
// that grew by append to the queue's megabytes for large messages was
// copied and cleared at every doubling, which a profile at 5 MB messages
// put at a seventh of the whole process's CPU and at 43% of the bytes it
// allocated.
type queuedConn struct {
	net.Conn // the pipe's client end: reads, addresses and read deadlines pass through

	limit int // a writer waits while this much is queued

	mu       sync.Mutex
	queued   [][]byte  // blocks of the queue in order, each of capacity queueBlock
	size     int       // bytes queued
	spare    [][]byte  // the list the pump handed back, for reuse
	err      error     // set once: by Close, or when the pipe failed (the pump has then returned)
	deadline time.Time // write deadline, for a writer waiting for room

	wake  chan struct{} // cap 1: there is something to write, or Close was called
	room  chan struct{} // cap 1: the pump took the queue
	pumpd chan struct{} // closed when the pump has returned
	once  sync.Once
}

// queueLimit bounds what one in-process connection holds in memory before a
// writer waits, as the kernel's socket buffer would over TCP.
const queueLimit = 2 << 20

// queueBlock is the size of the blocks a queue is made of. A server's read
// loop reads at most 64 KiB at a time, so handing the pipe one block per
// write costs no more reads than handing it the whole queue.
const queueBlock = 64 << 10

// blocks are the queues' blocks once written, shared by all connections;
// the garbage collector empties the pool, so idle connections hold none.
var blocks = sync.Pool{New: func() any { return new([queueBlock]byte) }}

// closeDrain bounds how long Close waits for queued writes to reach the
// server.
const closeDrain = 2 * time.Second

func newQueuedConn(c net.Conn, limit int) *queuedConn {
	q := &queuedConn{
		Conn:  c,
		limit: limit,
		wake:  make(chan struct{}, 1),
		room:  make(chan struct{}, 1),
		pumpd: make(chan struct{}),
	}
	go q.pump()
	return q
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Write queues p and returns, unless the queue is full: then it waits for
// the pump, until the write deadline.
func (q *queuedConn) Write(p []byte) (int, error) {
	q.mu.Lock()
	for q.err == nil && q.size > 0 && q.size+len(p) > q.limit {
		dl := q.deadline
		q.mu.Unlock()
		if err := q.waitRoom(dl); err != nil {
			return 0, err
		}
		q.mu.Lock()
	}
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		last := len(q.queued) - 1
		if last < 0 || len(q.queued[last]) == queueBlock {
			q.queued = append(q.queued, blocks.Get().(*[queueBlock]byte)[:0])
			last++
		}
		b := q.queued[last]
		k := copy(b[len(b):queueBlock], p)
		q.queued[last] = b[:len(b)+k]
		p = p[k:]
	}
	q.size += n
	q.mu.Unlock()
	signal(q.wake)
	return n, nil
}

func (q *queuedConn) waitRoom(deadline time.Time) error {
	var expired <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-q.room:
		return nil
	case <-q.pumpd:
		return nil // the loop finds q.err set
	case <-expired:
		return os.ErrDeadlineExceeded
	}
}

// pump writes the queue to the pipe, in order, until the connection closes
// or the pipe fails.
func (q *queuedConn) pump() {
	defer close(q.pumpd)
	for range q.wake {
		q.mu.Lock()
		out := q.queued
		q.queued, q.spare, q.size = q.spare[:0], nil, 0
		closing := q.err != nil // only Close sets it while the pump runs
		q.mu.Unlock()
		signal(q.room)
		for i, b := range out {
			if _, err := q.Conn.Write(b); err != nil {
				q.fail(err)
				return
			}
			blocks.Put((*[queueBlock]byte)(b[:queueBlock]))
			out[i] = nil
		}
		q.mu.Lock()
		q.spare = out[:0]
		done := closing && q.size == 0
		q.mu.Unlock()
		if done {
			return
		}
	}
}

func (q *queuedConn) fail(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.mu.Unlock()
	q.Conn.Close()
}

// Close hands what is queued to the server (for at most closeDrain), then
// closes the pipe. Writes after Close fail with net.ErrClosed.
func (q *queuedConn) Close() error {
	var err error
	q.once.Do(func() {
		q.mu.Lock()
		if q.err == nil {
			q.err = net.ErrClosed
		}
		q.mu.Unlock()
		signal(q.wake)
		t := time.NewTimer(closeDrain)
		select {
		case <-q.pumpd:
		case <-t.C:
		}
		t.Stop()
		err = q.Conn.Close()
		<-q.pumpd
	})
	return err
}

// SetWriteDeadline bounds a writer's wait for room in the queue.
func (q *queuedConn) SetWriteDeadline(t time.Time) error {
	q.mu.Lock()
	q.deadline = t
	q.mu.Unlock()
	return nil
}

// SetDeadline sets the read deadline of the pipe and the write deadline of
// the queue.
func (q *queuedConn) SetDeadline(t time.Time) error {
	_ = q.SetWriteDeadline(t)
	return q.Conn.SetReadDeadline(t)
}
