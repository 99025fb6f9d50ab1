package streams

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ObjectReader reads an object of a bucket chunk by chunk, each chunk with a
// direct get of the next message on the object's chunk subject, and at the
// end checks what it read against the object's size, chunk count and
// SHA-256 digest, as nats.go's ObjectStore.Get does.
//
// Why not ObjectStore.Get: it pushes the whole object through an ordered
// push consumer whose flow control lets up to 32 MiB be in flight per
// object. A deliverer streams many large bodies at once over one
// connection, and at 5 MB messages the server's pending bytes for that
// connection passed its limit (64 MiB): the server closed the connection as
// a slow consumer, and every request then in flight on it waited for its
// deadline, minutes for a body. Here at most two chunks are in flight per
// reader (the next is asked for as soon as the current one arrives), no
// consumer is created or deleted, and each request has its own timeout.
type ObjectReader struct {
	ctx     context.Context
	js      jetstream.JetStream
	stream  jetstream.Stream // the bucket's stream (OBJ_<bucket>), opened by the caller
	info    *jetstream.ObjectInfo
	subject string
	timeout time.Duration

	next   uint64 // the sequence to read the next chunk from
	left   uint64 // bytes still expected
	chunks uint32 // chunks read
	sum    hash.Hash
	buf    []byte // the rest of the current chunk
	err    error  // sticky; io.EOF once the object was read and checked
	// ahead answers the request for the next chunk, sent as the current
	// one arrived, so that a chunk's round trip overlaps the sending of
	// the one before (at most two chunks per reader, 256 KiB).
	ahead chan fetched
}

type fetched struct {
	m   *jetstream.RawStreamMsg
	err error
}

// RequestTimeout is the usual bound of one request for an object's
// metadata or one of its chunks: a lost request (a leader election) fails
// in seconds, not in the minutes a whole large read may take.
const RequestTimeout = 10 * time.Second

// objectTries bounds the attempts at one chunk whose request got no
// answer (a lost reply, as while a connection is replaced).
const objectTries = 3

// NewObjectReader reads the object info describes from stream, the bucket's
// stream. ctx bounds the whole read; timeout bounds each request (a chunk's
// read is tried again, up to objectTries times, when its answer does not
// come in time).
func NewObjectReader(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, info *jetstream.ObjectInfo, timeout time.Duration) *ObjectReader {
	return &ObjectReader{
		ctx: ctx, js: js, stream: stream, info: info, timeout: timeout,
		subject: chunkSubject(info.Bucket, info.NUID),
		next:    1,
		left:    info.Size,
		sum:     sha256.New(),
	}
}

// OpenObject opens object name of bucket for an ObjectReader: its metadata
// from the bucket, then its chunks by direct get, for readers that have
// neither the bucket nor its stream open (operators' tools, tests). ctx
// bounds the whole read; timeout bounds each request, the metadata's too.
func OpenObject(ctx context.Context, js jetstream.JetStream, bucket, name string, timeout time.Duration) (*ObjectReader, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	obs, err := js.ObjectStore(rctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", bucket, err)
	}
	info, err := obs.GetInfo(rctx, name)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	st, err := js.Stream(rctx, ObjectStream(bucket))
	if err != nil {
		return nil, fmt.Errorf("stream of object store %s: %w", bucket, err)
	}
	return NewObjectReader(ctx, js, st, info, timeout), nil
}

func (r *ObjectReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.left == 0 {
			r.err = r.check()
			continue
		}
		r.err = r.chunk()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// chunk reads the next chunk into buf.
func (r *ObjectReader) chunk() error {
	var m *jetstream.RawStreamMsg
	var err error
	if r.ahead != nil {
		f := <-r.ahead
		r.ahead, m, err = nil, f.m, f.err
	} else {
		m, err = r.fetch(r.next)
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("object %s: chunk %d is missing (%d of %d bytes read): %w",
			r.info.Name, r.chunks+1, r.info.Size-r.left, r.info.Size, jetstream.ErrObjectNotFound)
	}
	if err != nil {
		return fmt.Errorf("object %s: chunk %d: %w", r.info.Name, r.chunks+1, err)
	}
	if uint64(len(m.Data)) > r.left {
		return fmt.Errorf("object %s: chunk %d holds %d bytes, more than the %d its size leaves", r.info.Name, r.chunks+1, len(m.Data), r.left)
	}
	r.next = m.Sequence + 1
	r.left -= uint64(len(m.Data))
	r.chunks++
	r.sum.Write(m.Data)
	r.buf = m.Data
	if len(r.buf) == 0 && r.left > 0 {
		return fmt.Errorf("object %s: chunk %d is empty", r.info.Name, r.chunks)
	}
	if r.left > 0 {
		// The goroutine never waits: the channel holds its one answer,
		// and ctx ends its request if the reader is given up.
		ahead, seq := make(chan fetched, 1), r.next
		r.ahead = ahead
		go func() {
			m, err := r.fetch(seq)
			ahead <- fetched{m, err}
		}()
	}
	return nil
}

// fetch reads the first chunk at or after seq. It uses only what does not
// change after NewObjectReader, so it may run beside Read.
func (r *ObjectReader) fetch(seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := r.get(seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// A replica behind the leader may not hold it yet.
		m, err = r.leaderNext(seq)
	}
	return m, err
}

// get asks any replica for the first chunk at or after seq, trying again
// when an answer is lost.
func (r *ObjectReader) get(seq uint64) (*jetstream.RawStreamMsg, error) {
	var err error
	for range objectTries {
		ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
		var m *jetstream.RawStreamMsg
		m, err = r.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(r.subject))
		cancel()
		if err == nil || r.ctx.Err() != nil || !lostAnswer(err) {
			return m, err
		}
	}
	return nil, err
}

// lostAnswer tells an error after which the same request may be sent again.
func lostAnswer(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// leaderNext asks the stream's leader for the first chunk at or after seq.
func (r *ObjectReader) leaderNext(seq uint64) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	return leaderGet(ctx, r.js, ObjectStream(r.info.Bucket), getRequest{Seq: seq, NextFor: r.subject})
}

// check ends the read: the chunks add up to the object, and their digest is
// the one the object was stored with.
func (r *ObjectReader) check() error {
	if r.chunks != r.info.Chunks {
		return fmt.Errorf("object %s: read %d chunks, its info says %d", r.info.Name, r.chunks, r.info.Chunks)
	}
	if got := "SHA-256=" + base64.URLEncoding.EncodeToString(r.sum.Sum(nil)); got != r.info.Digest {
		return fmt.Errorf("object %s: digest %s, stored as %s: %w", r.info.Name, got, r.info.Digest, jetstream.ErrDigestMismatch)
	}
	return io.EOF
}
