// Package store makes an accepted SMTP transaction durable: it writes the
// message's proto envelope (and its body, inline or in the object store) to
// the SLUICE_MSGS stream and returns only when JetStream has acknowledged the
// write, because the ingress's "250 queued" is a promise that the message
// survives a crash (RFC 5321 §6.1).
//
// Failures are reduced to two kinds the SMTP layer can answer without
// reading error text: ErrFull (the queue is over its limits) and
// ErrUnavailable (JetStream could not be reached or did not answer in time).
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Errors returned by Put; test with errors.Is.
var (
	// ErrFull means the message stream or the account is over its limits.
	ErrFull = errors.New("store: queue is full")
	// ErrUnavailable means JetStream was not reachable or did not
	// acknowledge the write within the request timeout. The write may or
	// may not have happened.
	ErrUnavailable = errors.New("store: JetStream unavailable")
)

// objectTimeoutPer is how many body bytes the object store write may take
// one request timeout for: a body is many publishes, so a 50 MiB body gets
// proportionally longer than a one-message publish. 4 MiB per 5 s asks
// less than 1 MB/s of a replicated store on a loaded host; the bound only
// matters when JetStream is stuck.
const objectTimeoutPer = 4 << 20

// Options configure a Store.
type Options struct {
	// InlineBodyLimit is the largest body stored inside the Message.
	InlineBodyLimit int
	// RequestTimeout bounds every JetStream request (nats.request_timeout).
	RequestTimeout time.Duration
	// RetryFor is how long Put keeps trying to store a message whose write
	// JetStream did not acknowledge (no leader during an election, a
	// timeout, the connection down): the same write is sent again with the
	// same message id, which JetStream stores once, so an election costs
	// the client a wait instead of a 451 and a resent duplicate. Zero
	// tries once. A full queue is never retried.
	RetryFor time.Duration
	// Logger receives cleanup failures; nil discards.
	Logger *slog.Logger
}

// Store writes messages to JetStream.
type Store struct {
	js        jetstream.JetStream
	bodies    jetstream.ObjectStore
	msgs      jetstream.Stream
	opts      Options
	log       *slog.Logger
	connected func() bool
}

// New returns a Store on js. The streams and buckets must have been
// provisioned (streams.Provision).
func New(ctx context.Context, js jetstream.JetStream, q config.Queue, o Options) (*Store, error) {
	if o.InlineBodyLimit <= 0 {
		o.InlineBodyLimit = q.InlineBodyLimit
	}
	if o.RequestTimeout <= 0 {
		return nil, errors.New("store: RequestTimeout must be positive")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
	defer cancel()
	bodies, err := js.ObjectStore(ctx, wire.BucketBodies)
	if err != nil {
		return nil, fmt.Errorf("store: object store %s: %w", wire.BucketBodies, err)
	}
	msgs, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		return nil, fmt.Errorf("store: stream %s: %w", wire.StreamMessages, err)
	}
	s := &Store{js: js, bodies: bodies, msgs: msgs, opts: o, log: o.Logger}
	s.connected = func() bool { return js.Conn().Status() == nats.CONNECTED }
	return s, nil
}

// Available reports whether the store can take a message now, as far as
// it knows without asking JetStream: false while the NATS connection is
// down (disconnected or reconnecting), when every Put would fail with
// ErrUnavailable. The ingress uses it to refuse new connections and
// transactions (421 4.3.2) before the client sends a message that could
// not be stored.
func (s *Store) Available() bool {
	return s.connected()
}

// Receipt describes a stored message.
type Receipt struct {
	// Seq is the message's sequence in SLUICE_MSGS.
	Seq uint64
	// Duplicate is set when JetStream already held a message with this
	// queue id (a retried write).
	Duplicate bool
	// Attempts is how many writes it took (more than one after an
	// election or a timeout; see Options.RetryFor).
	Attempts int
}

// Put stores m with the size bytes of body (the content with our Received
// header). m.QueueId must be set; Put fills in the schema and the body
// fields. Trace context from ctx travels in the NATS headers so the
// scheduler continues the trace.
func (s *Store) Put(ctx context.Context, m *sluicev1.Message, body io.Reader, size int64) (Receipt, error) {
	qid := m.GetQueueId()
	if !wire.ValidToken(qid) {
		return Receipt{}, fmt.Errorf("store: invalid queue id %q", qid)
	}
	// While the connection is down, nats.go would buffer the publish and
	// send it after a reconnect, possibly long after we answered 451 and
	// the client queued the message for a retry. Refusing at once avoids
	// that duplicate and answers the client promptly.
	if !s.connected() && s.opts.RetryFor <= 0 {
		return Receipt{}, fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	m.Schema = wire.SchemaVersion
	m.BodySize = size
	m.Body, m.BodyObject, m.BodyNuid = nil, "", ""
	if size <= int64(s.opts.InlineBodyLimit) {
		b := getBuf(int(size))
		defer putBuf(b)
		if _, err := io.ReadFull(body, *b); err != nil {
			return Receipt{}, fmt.Errorf("store: read body: %w", err)
		}
		m.Body = *b
		defer func() { m.Body = nil }()
		return s.publish(ctx, m)
	}

	info, err := s.putObject(ctx, qid, body, size)
	if err != nil {
		return Receipt{}, err
	}
	m.BodyObject, m.BodyNuid = qid, info.NUID
	r, err := s.publish(ctx, m)
	if err != nil {
		s.abandonObject(ctx, qid, err)
		return Receipt{}, err
	}
	return r, nil
}

func (s *Store) putObject(ctx context.Context, qid string, body io.Reader, size int64) (*jetstream.ObjectInfo, error) {
	timeout := s.opts.RequestTimeout * time.Duration(1+size/objectTimeoutPer)
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	info, err := s.bodies.Put(octx, jetstream.ObjectMeta{Name: qid}, io.LimitReader(body, size))
	if err != nil {
		// nats.go purges the partial chunks itself when a put fails.
		return nil, classify(fmt.Errorf("store: write body object %s: %w", qid, err))
	}
	if int64(info.Size) != size {
		s.deleteObject(qid)
		return nil, fmt.Errorf("store: body object %s has %d bytes, want %d", qid, info.Size, size)
	}
	return info, nil
}

func (s *Store) publish(ctx context.Context, m *sluicev1.Message) (Receipt, error) {
	buf := getBuf(0)
	defer putBuf(buf)
	data, err := proto.MarshalOptions{}.MarshalAppend(*buf, m)
	if err != nil {
		return Receipt{}, fmt.Errorf("store: encode message: %w", err)
	}
	*buf = data
	msg := nats.NewMsg(wire.MessageSubject(m.GetQueueId()))
	msg.Data = data
	msg.Header.Set(wire.HeaderQueueID, m.GetQueueId())
	telemetry.Inject(ctx, msg.Header)
	// The queue id is the message id, so JetStream stores a retried
	// publish of the same transaction once: a write whose acknowledgement
	// was lost is safe to send again.
	deadline := time.Now().Add(s.opts.RetryFor)
	wait := retryMin
	for attempt := 1; ; attempt++ {
		var err error
		if s.connected() {
			pctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
			var ack *jetstream.PubAck
			ack, err = s.js.PublishMsg(pctx, msg, jetstream.WithMsgID(m.GetQueueId()), jetstream.WithExpectStream(wire.StreamMessages))
			cancel()
			if err == nil {
				if attempt > 1 {
					s.log.InfoContext(ctx, "message stored after retrying", "queue_id", m.GetQueueId(), "attempts", attempt, "duplicate", ack.Duplicate)
				}
				return Receipt{Seq: ack.Sequence, Duplicate: ack.Duplicate, Attempts: attempt}, nil
			}
			err = classify(fmt.Errorf("store: publish message %s: %w", m.GetQueueId(), err))
		} else {
			err = fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
		}
		if errors.Is(err, ErrFull) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			if attempt > 1 {
				err = fmt.Errorf("%w (after %d attempts)", err, attempt)
			}
			return Receipt{}, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Receipt{}, err
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// Backoff between tries of one write (Options.RetryFor).
const (
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

// abandonObject removes the body of a message whose publish failed, so the
// object store never holds half of a message. When the publish timed out
// the message may have been stored all the same; deleting its body then
// would lose it, so the object stays unless JetStream confirms that the
// message is absent (the bucket's TTL removes it eventually).
func (s *Store) abandonObject(ctx context.Context, qid string, cause error) {
	if errors.Is(cause, ErrUnavailable) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.RequestTimeout)
		_, err := s.msgs.GetLastMsgForSubject(cctx, wire.MessageSubject(qid))
		cancel()
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.WarnContext(ctx, "message publish failed and its state is unknown; keeping the body object", "queue_id", qid, "err", err)
			return
		}
	}
	s.deleteObject(qid)
}

func (s *Store) deleteObject(qid string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	if err := s.bodies.Delete(ctx, qid); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		s.log.Warn("cannot delete body object of a message that was not stored", "queue_id", qid, "err", err)
	}
}

// classify wraps err with ErrFull or ErrUnavailable. Everything that is not
// a full queue is unavailability: an unknown failure of our own storage is
// temporary (the client retries) rather than a reason to refuse the mail.
func classify(err error) error {
	if streams.IsStorageFull(err) {
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Body reads back the stored content of m (by its queue id): inline in
// the stored message, or from the object store. Tests and tools use it to
// see what the ingress stored.
func (s *Store) Body(ctx context.Context, m *sluicev1.Message) ([]byte, error) {
	if m.GetBodyObject() == "" {
		raw, err := s.msgs.GetLastMsgForSubject(ctx, wire.MessageSubject(m.GetQueueId()))
		if err != nil {
			return nil, fmt.Errorf("store: message %s: %w", m.GetQueueId(), err)
		}
		var stored sluicev1.Message
		if err := proto.Unmarshal(raw.Data, &stored); err != nil {
			return nil, fmt.Errorf("store: decode message %s: %w", m.GetQueueId(), err)
		}
		return stored.GetBody(), nil
	}
	// A chunk at a time, not with the object store's Get (see
	// streams.ObjectReader).
	r, err := streams.OpenObject(ctx, s.js, wire.BucketBodies, m.GetBodyObject(), s.opts.RequestTimeout)
	if err != nil {
		return nil, fmt.Errorf("store: body object %s: %w", m.GetBodyObject(), err)
	}
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return nil, fmt.Errorf("store: read body object %s: %w", m.GetBodyObject(), err)
	}
	return b.Bytes(), nil
}

// bufPool recycles the buffers of inline bodies and encoded messages: a
// message is copied into them and out again (nats.go copies a synchronous
// publish into its write buffer before PublishMsg returns), so nothing
// keeps them. Buffers grown beyond maxPooledBuf are left to the collector.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledBuf = 2 << 20

// getBuf returns a pooled buffer of length n.
func getBuf(n int) *[]byte {
	b := bufPool.Get().(*[]byte)
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	*b = (*b)[:n]
	return b
}

func putBuf(b *[]byte) {
	if cap(*b) > maxPooledBuf {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}
