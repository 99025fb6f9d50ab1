// Package claim decides who acts on one copy of a job: the deliverer that
// attempts it, or an operator's command that moves it elsewhere
// (`sluice queue prioritize`). Both hand the copy on by an event, and the
// event is the claim: it goes to wire.ClaimSubject(queue id, type, copy's
// stream sequence) with Nats-Expected-Last-Subject-Sequence 0 checked on
// wire.ClaimFilter, which matches every claim of that copy. JetStream's
// stream leader checks and stores it in one step, and holds back a second
// check on the same filter while the first is being replicated, so of two
// claims racing for a copy exactly one is stored; the other learns which
// event won and gives way.
//
// Without it, a copy that a deliverer had fetched in the instant between
// the scheduler's "was it handed out?" and its removal was attempted by
// the deliverer while its moved copy waited for another one: the mail went
// out twice.
package claim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Outcome is the result of Take.
type Outcome struct {
	// Won: m was stored; the caller acts on the copy.
	Won bool
	// Holder is the type of the event that holds the claim when the
	// caller lost: wire.EventAttempt or wire.EventReprioritised.
	Holder string
	// Seq is the stream sequence of the event that holds the claim (m's
	// own when Won).
	Seq uint64
}

// retries and pause bound how long Take waits when its check collided with
// another claim still being replicated (the leader refuses both checks
// until it is stored, and the winner may not be readable yet).
const (
	retries = 20
	pause   = 25 * time.Millisecond
)

// CopyMsg returns a copy of m whose headers can be changed without
// changing m's: a claim is published again with another condition (Take)
// or content (a deliverer's renewal).
func CopyMsg(m *nats.Msg) *nats.Msg {
	c := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: make(nats.Header, len(m.Header)+1)}
	for k, v := range m.Header {
		c.Header[k] = append([]string(nil), v...)
	}
	return c
}

// Take publishes m, an event on wire.ClaimSubject(queueID, type, seq), to
// the events stream on condition that no claim of the copy exists. When
// another one does, nothing is published and the outcome names the holder.
// The error is JetStream's when it could not be asked. m itself is left as
// it was: the condition goes on a copy of its headers, so a caller may
// publish m unconditionally afterwards.
func Take(ctx context.Context, js jetstream.JetStream, m *nats.Msg, queueID string, seq uint64) (Outcome, error) {
	filter := wire.ClaimFilter(queueID, seq)
	cm := CopyMsg(m)
	for i := 0; ; i++ {
		ack, err := js.PublishMsg(ctx, cm, jetstream.WithExpectStream(wire.StreamEvents), jetstream.WithExpectLastSequenceForSubject(0, filter))
		if err == nil {
			return Outcome{Won: true, Seq: ack.Sequence}, nil
		}
		if !conflict(err) {
			return Outcome{}, fmt.Errorf("claim %s: %w", filter, err)
		}
		holder, hseq, err := Holder(ctx, js, queueID, seq)
		if err != nil {
			return Outcome{}, err
		}
		if holder != "" {
			return Outcome{Holder: holder, Seq: hseq}, nil
		}
		if i == retries {
			return Outcome{}, fmt.Errorf("claim %s: refused, and no claim to be found after %d tries", filter, retries)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return Outcome{}, ctx.Err()
		case <-t.C:
		}
	}
}

// Holder is the type and sequence of the claim of the copy at seq, or ""
// when there is none.
func Holder(ctx context.Context, js jetstream.JetStream, queueID string, seq uint64) (string, uint64, error) {
	msg, err := Latest(ctx, js, queueID, seq)
	if msg == nil || err != nil {
		return "", 0, err
	}
	return wire.ClaimType(msg.Subject), msg.Sequence, nil
}

// Latest is the last event on the claim subjects of the copy at seq (its
// type is wire.ClaimType of its subject): the claim itself, or a later try
// recorded on the same subject. It is nil when there is none.
func Latest(ctx context.Context, js jetstream.JetStream, queueID string, seq uint64) (*jetstream.RawStreamMsg, error) {
	st, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("claim of %s/%s: %w", queueID, strconv.FormatUint(seq, 10), err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, wire.ClaimFilter(queueID, seq))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claim of %s/%s: %w", queueID, strconv.FormatUint(seq, 10), err)
	}
	return msg, nil
}

// conflict reports whether err is JetStream refusing the expected last
// subject sequence: another claim exists or was being stored.
func conflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
