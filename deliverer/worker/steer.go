package worker

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/claim"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Operators steer the queue with `sluice queue hold` and `delete`. Both
// leave a mark in the wire.BucketHeld bucket before they touch the job, so
// that a job a deliverer fetched in the meantime is not attempted: before
// every attempt the deliverer reads the job's mark. A held job is parked on
// its held subject (where nothing consumes it until it is released) and
// acknowledged; a deleted one is acknowledged and dropped. Either way the
// operator's command has already recorded the event.
//
// The marks are read from a marks.Cache, a watched copy of the bucket in
// memory: a mark reaches it within about a millisecond of the operator's
// write, so only a job fetched in that instant can still be attempted.

// steer applies an operator's mark to a fetched job and reports whether
// the job must not be attempted, and then what becomes of it.
func (s *Service) steer(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, log *slog.Logger) (consume.Outcome, bool) {
	mark, marked, err := s.marks.Get(ctx, job.JobId)
	if err != nil {
		// Without knowing, attempting could deliver a held job.
		log.WarnContext(ctx, "cannot read hold mark; job returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry), true
	}
	if !marked {
		return consume.Outcome{}, false
	}
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.String("sluice.operator_mark", mark.Action))
	if mark.Action == admin.MarkHold {
		md, _ := msg.Metadata()
		nonce := "deliverer"
		if md != nil {
			nonce += "-" + strconv.FormatUint(md.Sequence.Stream, 10)
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := s.js.PublishMsg(pctx, parkMsg(job, msg.Data(), msg.Headers(), s.cfg.Instance, nonce)); err != nil {
			log.WarnContext(ctx, "cannot park held job; returned to the queue", "err", err)
			return consume.RetryAfter(infraRetry), true
		}
	}
	s.steered.Add(context.Background(), 1, metric.WithAttributes(attribute.String("action", mark.Action)))
	log.InfoContext(ctx, "job not attempted: "+mark.Action+" by an operator", "actor", mark.Actor)
	return consume.Confirmed(10 * time.Second), true
}

// parkMsg is the message parking job on its held subject: the job's own
// headers (trace context, ids) without JetStream's, rolling the held
// subject up so the job is parked once however many parked it.
func parkMsg(job *sluicev1.Job, data []byte, orig nats.Header, by, nonce string) *nats.Msg {
	m := &nats.Msg{Subject: wire.HeldSubject(job.JobId), Header: nats.Header{}, Data: data}
	for k, v := range orig {
		if len(k) > 5 && k[:5] == "Nats-" {
			continue
		}
		m.Header[k] = v
	}
	m.Header.Set(wire.HeaderHoldMark, by)
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.MsgIDHeader, job.JobId+"/"+strconv.FormatUint(uint64(job.Attempt), 10)+"/held/"+nonce)
	return m
}

// claimAttempt records the "attempt" event before the attempt is made, so
// the history shows an attempt even when the deliverer dies during it. The
// event also claims the job copy (package claim): an operator's prioritize
// claims it the same way before it moves the job to another class, and
// only one of the two claims is stored. It reports whether not to attempt
// the job, and then what becomes of it:
//   - the copy was moved: given back to the queue, where the scheduler
//     removes it once the moved copy is stored;
//   - the claim could not be made (JetStream unreachable): returned to the
//     queue.
//
// A copy handed out again (after a crash or a Nak) finds its earlier
// attempt's claim and is attempted again; that second try is recorded too.
//
// A claim has no message id: its condition (no claim of the copy yet)
// already makes a second publish of it fail, and each id would cost the
// server a deduplication entry per delivery for queue.duplicate_window.
//
// The claim expires after wire.ClaimTTL. When the attempt goes on, the
// returned renew records it again every claimRenew until its stop is
// called, so a copy handed out again during a long attempt still finds it.
//
// struck says this delivery counted a strike (poison.go): when the attempt
// cannot be recorded, nothing is sent, and the strike is taken back.
func (s *Service) claimAttempt(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, struck bool, log *slog.Logger) (o consume.Outcome, renew func() (stop func()), stop bool) {
	md, err := msg.Metadata()
	if err != nil {
		log.WarnContext(ctx, "job without JetStream metadata; returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry), nil, true
	}
	ev := &admin.QueueEvent{
		Type: wire.EventAttempt, Time: time.Now().UTC(), QueueID: job.QueueId, JobID: job.JobId, State: admin.StateActive,
		Attempt: job.Attempt, Priority: wire.ClassName(job.Priority), Instance: s.cfg.Instance,
	}
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().IsValid() {
		ev.TraceID = sc.TraceID().String()
	}
	m := nats.NewMsg(wire.ClaimSubject(job.QueueId, wire.EventAttempt, md.Sequence.Stream))
	m.Data = admin.MarshalQueueEvent(ev)
	m.Header.Set(wire.HeaderJobID, job.JobId)
	m.Header.Set(jetstream.MsgTTLHeader, wire.ClaimTTL.String())
	telemetry.Inject(ctx, m.Header)
	out, err := claim.Take(ctx, s.js, m, job.QueueId, md.Sequence.Stream)
	if err == nil && !out.Won && out.Holder == wire.EventAttempt {
		// Handed out again: this deliverer, or one before it, claimed
		// the copy already. The new try is recorded all the same.
		_, err = s.js.PublishMsg(ctx, m, jetstream.WithExpectStream(wire.StreamEvents))
		out.Won = err == nil
	}
	if err != nil {
		trace.SpanFromContext(ctx).SetStatus(codes.Error, "cannot record the attempt")
		log.WarnContext(ctx, "cannot record the attempt; job returned to the queue", "err", err)
		if struck {
			s.unstrike(ctx, job, log)
		}
		return consume.RetryAfter(infraRetry), nil, true
	}
	if out.Won {
		return consume.Outcome{}, func() func() { return s.renewClaim(ctx, m, ev, log) }, false
	}
	// Moved to another class by an operator: its new copy is delivered.
	// This one is given back rather than acknowledged: the scheduler
	// removes it once the moved copy is stored, and should that fail, it
	// gives the claim up and this copy is attempted after all.
	s.steered.Add(context.Background(), 1, metric.WithAttributes(attribute.String("action", out.Holder)))
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("sluice.operator_mark", out.Holder))
	log.InfoContext(ctx, "job not attempted: "+out.Holder+" by an operator")
	return consume.RetryAfter(movedRetry), nil, true
}

// renewClaim publishes the attempt's claim m (of event ev) again every
// claimRenew, each time with a note, until stop is called: the claim
// expires wire.ClaimTTL after its latest record. The renewal keeps the
// attempt's start time, which the history shows. Nearly every attempt
// ends long before its first renewal, so until then it costs a timer and a
// context: no goroutine, no copy of the claim.
func (s *Service) renewClaim(ctx context.Context, m *nats.Msg, ev *admin.QueueEvent, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu      sync.Mutex // held while a renewal is published; stop waits for it
		stopped bool
		t       *time.Timer
	)
	mu.Lock() // the first renewal needs t
	defer mu.Unlock()
	t = time.AfterFunc(s.claimRenew, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		renewed := *ev
		renewed.Note = "still running: claim renewed"
		r := claim.CopyMsg(m)
		r.Data = admin.MarshalQueueEvent(&renewed)
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := s.js.PublishMsg(pctx, r, jetstream.WithExpectStream(wire.StreamEvents))
		pcancel()
		if err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "cannot renew the attempt's claim; a copy handed out again after it expires is attempted again", "err", err)
		}
		t.Reset(s.claimRenew)
	})
	return func() {
		cancel() // a renewal being published gives up
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}
