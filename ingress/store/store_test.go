package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func setup(t *testing.T, q config.Queue) (*Store, jetstream.JetStream) {
	t.Helper()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, js, q, Options{RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

func TestInlineLimitAndIdempotentPut(t *testing.T) {
	q := config.DefaultQueue()
	q.InlineBodyLimit = 4096
	s, _ := setup(t, q)
	ctx := context.Background()
	for _, tt := range []struct {
		size   int
		inline bool
	}{{4096, true}, {4097, false}} {
		qid := wire.NewQueueID(time.Now())
		body := bytes.Repeat([]byte{'x'}, tt.size)
		m := &sluicev1.Message{QueueId: qid, MailFrom: "a@example.org"}
		r, err := s.Put(ctx, m, bytes.NewReader(body), int64(tt.size))
		if err != nil {
			t.Fatal(err)
		}
		if (m.GetBodyObject() == "") != tt.inline || m.GetBodySize() != int64(tt.size) || r.Seq == 0 {
			t.Errorf("size %d: body_object %q body_size %d seq %d, want inline=%v", tt.size, m.GetBodyObject(), m.GetBodySize(), r.Seq, tt.inline)
		}
		// A body object's chunk id is recorded as its metadata says, so
		// that its deletion need not look it up.
		if tt.inline && m.GetBodyNuid() != "" {
			t.Errorf("inline body with chunk id %q", m.GetBodyNuid())
		}
		if !tt.inline {
			info, err := s.bodies.GetInfo(ctx, qid)
			if err != nil || info.NUID == "" || m.GetBodyNuid() != info.NUID {
				t.Errorf("message records chunk id %q, metadata says %+v (%v)", m.GetBodyNuid(), info, err)
			}
		}
		got, err := s.Body(ctx, m)
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("size %d: read back %d bytes, %v", tt.size, len(got), err)
		}
		// A retried write of the same transaction is stored once.
		r2, err := s.Put(ctx, &sluicev1.Message{QueueId: qid}, bytes.NewReader([]byte("x")), 1)
		if err != nil || !r2.Duplicate || r2.Seq != r.Seq {
			t.Errorf("size %d: second put = %+v, %v; want duplicate of seq %d", tt.size, r2, err, r.Seq)
		}
	}
}

func TestMissingStreamIsUnavailable(t *testing.T) {
	s, js := setup(t, config.DefaultQueue())
	ctx := context.Background()
	if err := js.DeleteStream(ctx, wire.StreamMessages); err != nil {
		t.Fatal(err)
	}
	_, err := s.Put(ctx, &sluicev1.Message{QueueId: wire.NewQueueID(time.Now())}, bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrFull) {
		t.Fatalf("Put = %v, want ErrUnavailable", err)
	}
}

func TestFullStreamIsFull(t *testing.T) {
	q := config.DefaultQueue()
	q.MaxBytes = 100
	s, _ := setup(t, q)
	_, err := s.Put(context.Background(), &sluicev1.Message{QueueId: wire.NewQueueID(time.Now())}, bytes.NewReader(make([]byte, 500)), 500)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Put = %v, want ErrFull", err)
	}
}

func TestInvalidQueueID(t *testing.T) {
	s, _ := setup(t, config.DefaultQueue())
	if _, err := s.Put(context.Background(), &sluicev1.Message{QueueId: "a.b"}, bytes.NewReader(nil), 0); err == nil {
		t.Fatal("Put accepted a queue id that is not a subject token")
	}
}

// TestPutRetriesThroughAnOutage: while the message stream does not answer
// (as during a leader election) Put keeps trying the same write, and stores
// the message once when the stream is back.
func TestPutRetriesThroughAnOutage(t *testing.T) {
	q := config.DefaultQueue()
	s, js := setup(t, q)
	s.opts.RetryFor = 20 * time.Second
	s.opts.RequestTimeout = 500 * time.Millisecond
	ctx := context.Background()
	if err := js.DeleteStream(ctx, wire.StreamMessages); err != nil {
		t.Fatal(err)
	}
	qid := wire.NewQueueID(time.Now())
	type result struct {
		r   Receipt
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := s.Put(ctx, &sluicev1.Message{QueueId: qid, MailFrom: "a@example.org"}, bytes.NewReader([]byte("hello")), 5)
		done <- result{r, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Put returned while the stream was missing: %+v, %v", r.r, r.err)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := streams.Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.r.Attempts < 2 || r.r.Duplicate {
		t.Fatalf("Put = %+v, %v; want stored after several attempts", r.r, r.err)
	}
	str, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want exactly 1", info.State.Msgs)
	}
	got, err := s.Body(ctx, &sluicev1.Message{QueueId: qid})
	if err != nil || string(got) != "hello" {
		t.Fatalf("stored body = %q, %v", got, err)
	}
}

func TestPutGivesUpAfterRetryFor(t *testing.T) {
	s, js := setup(t, config.DefaultQueue())
	s.opts.RetryFor = time.Second
	s.opts.RequestTimeout = 200 * time.Millisecond
	if err := js.DeleteStream(context.Background(), wire.StreamMessages); err != nil {
		t.Fatal(err)
	}
	_, err := s.Put(context.Background(), &sluicev1.Message{QueueId: wire.NewQueueID(time.Now())}, bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "attempts)") {
		t.Fatalf("Put = %v, want ErrUnavailable after several attempts", err)
	}
}

// TestFullIsNotRetried: a full queue is an answer, not an outage.
func TestFullIsNotRetried(t *testing.T) {
	q := config.DefaultQueue()
	q.MaxBytes = 100
	s, _ := setup(t, q)
	s.opts.RetryFor = time.Minute
	_, err := s.Put(context.Background(), &sluicev1.Message{QueueId: wire.NewQueueID(time.Now())}, bytes.NewReader(make([]byte, 500)), 500)
	if !errors.Is(err, ErrFull) || strings.Contains(err.Error(), "attempts") {
		t.Fatalf("Put = %v, want ErrFull at the first attempt", err)
	}
}
