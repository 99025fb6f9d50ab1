package streams

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A clustered stream's leader remembers a message id from the moment it
// proposes the message, marked "in process", and refuses the same id with
// 409 "duplicate message id is in process" (error 10158) until the
// proposal is applied, when the mark becomes the message's sequence. A
// proposal that is lost instead (one queued on a leader as it loses its
// leadership) leaves the mark behind. The server clears marks when the
// leader changes, but only the newest ones: a mark followed by an id the
// node stored afterwards (as a follower, applying what the next leader
// proposed) stays. When that node leads again, it
// refuses the id as "in process" until the stream's duplicate window
// (queue.duplicate_window) has passed.
//
// Seen for real: a node of three frozen for 30 s and thawed during a
// load; the scheduler's outcome event for one message was refused with
// 10158 every 2 s for as long as the test waited, so the message stayed
// in SLUICE_MSGS. A deliverer's result refused that way for longer than
// its result budget gives the job back, and the mail is delivered twice.
//
// Only the node that lost the proposal holds such a mark; the replicas
// know the id as stored or not at all. So when one id has been refused as
// in process for longer than any live proposal takes (InProcessAfter), a
// service asks the stream's leader to step down (at most once a minute
// per stream), and the next leader answers the retried publish from what
// it really stored.

// codeInProcess is JetStream's "duplicate message id is in process"
// (JSStreamDuplicateMessageConflict).
const codeInProcess = 10158

// InProcessAfter is how long one message id may be refused as in process
// before a service asks the stream's leader to step down. A proposal is
// applied in milliseconds while the stream has a quorum; a leader that
// has lost its quorum steps down by itself within 20 s, which clears its
// marks (and a step-down asked of it meanwhile does no harm).
const InProcessAfter = 15 * time.Second

// inProcessEvery is the least time between two step-down requests one
// service makes for one stream.
const inProcessEvery = time.Minute

// inProcessKeep bounds the ids a service remembers as refused, and
// inProcessForget is when one is forgotten once the bound is reached
// (longer than a duplicate window, after which JetStream forgets it too).
const (
	inProcessKeep   = 4096
	inProcessForget = 15 * time.Minute
)

// IsInProcess reports whether err is JetStream refusing a publish because
// a message with the same id is in process (409, error 10158).
func IsInProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeInProcess
}

// InProcess watches a service's publishes for message ids that a stream's
// leader keeps refusing as in process and asks that leader to step down
// (see above). It is safe for concurrent use; a nil *InProcess does
// nothing.
type InProcess struct {
	js  jetstream.JetStream
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	first map[string]time.Time // subject and id: first refusal
	asked map[string]time.Time // stream: last step-down request
}

// NewInProcess returns an InProcess for publishes made through js.
func NewInProcess(js jetstream.JetStream, log *slog.Logger) *InProcess {
	return &InProcess{js: js, log: log, now: time.Now,
		first: map[string]time.Time{}, asked: map[string]time.Time{}}
}

// Refused is told that a publish of message id to subject failed with
// err. It does nothing unless err is IsInProcess and the same id has been
// refused so for InProcessAfter; then, unless it asked within the last
// minute, it asks the leader of the subject's stream to step down and
// reports true.
func (p *InProcess) Refused(ctx context.Context, subject, id string, err error) bool {
	if p == nil || id == "" || subject == "" || !IsInProcess(err) {
		return false
	}
	now := p.now()
	key := subject + "\x00" + id
	p.mu.Lock()
	first, seen := p.first[key]
	if !seen || now.Sub(first) > inProcessForget {
		// New, or refused again long after (the mark of its first
		// refusal was cleared since): counted from now.
		if len(p.first) >= inProcessKeep {
			p.forgetLocked(now)
		}
		p.first[key] = now
		p.mu.Unlock()
		return false
	}
	if now.Sub(first) < InProcessAfter {
		p.mu.Unlock()
		return false
	}
	p.mu.Unlock()
	stream, err := p.js.StreamNameBySubject(ctx, subject)
	if err != nil {
		p.log.WarnContext(ctx, "JetStream keeps refusing a message id as in process, and its stream is unknown",
			"subject", subject, "msg_id", id, "err", err)
		return false
	}
	p.mu.Lock()
	if now.Sub(p.asked[stream]) < inProcessEvery {
		p.mu.Unlock()
		return false
	}
	p.asked[stream] = now
	p.mu.Unlock()

	p.log.WarnContext(ctx, "JetStream keeps refusing a message id as in process; asking the stream's leader to step down",
		"stream", stream, "msg_id", id, "refused_for", now.Sub(first).Round(time.Second).String())
	if err := StepDown(ctx, p.js, stream); err != nil {
		p.log.WarnContext(ctx, "stream leader step-down failed; the publish keeps being retried", "stream", stream, "err", err)
	}
	return true
}

// forgetLocked drops the ids first refused longer ago than
// inProcessForget, and if that is not enough,
// every id: at worst a stuck id is noticed InProcessAfter later.
func (p *InProcess) forgetLocked(now time.Time) {
	for k, t := range p.first {
		if now.Sub(t) > inProcessForget {
			delete(p.first, k)
		}
	}
	if len(p.first) >= inProcessKeep {
		clear(p.first)
	}
}

// StepDown asks stream's leader to hand its leadership to another replica
// and returns once it has agreed.
func StepDown(ctx context.Context, js jetstream.JetStream, stream string) error {
	done, err := actionRequest(ctx, js, "STREAM.LEADER.STEPDOWN."+stream, nil)
	if err != nil {
		return fmt.Errorf("step down the leader of %s: %w", stream, err)
	}
	if !done {
		return fmt.Errorf("step down the leader of %s: not done", stream)
	}
	return nil
}
