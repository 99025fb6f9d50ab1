package worker

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
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

// steer applies an operator's mark to a fetched job and reports whether it
// settled the job (so it must not be attempted).
func (s *Service) steer(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, log *slog.Logger) bool {
	mark, marked, err := s.marks.Get(ctx, job.JobId)
	if err != nil {
		// Without knowing, attempting could deliver a held job.
		log.WarnContext(ctx, "cannot read hold mark; job returned to the queue", "err", err)
		_ = msg.NakWithDelay(infraRetry)
		return true
	}
	if !marked {
		return false
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
			_ = msg.NakWithDelay(infraRetry)
			return true
		}
	}
	ackCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := msg.DoubleAck(ackCtx); err != nil {
		log.WarnContext(ctx, "ack of steered job failed", "err", err)
	}
	s.steered.Add(context.Background(), 1, metric.WithAttributes(attribute.String("action", mark.Action)))
	log.InfoContext(ctx, "job not attempted: "+mark.Action+" by an operator", "actor", mark.Actor)
	return true
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

// recordAttempt sends the "attempt" event before the attempt is made, so
// the history shows an attempt even when the deliverer dies during it. It
// does not wait for JetStream: the returned future is checked before the
// result is published (see handle), which keeps the attempt before its
// outcome in the history without a round trip ahead of every delivery. The
// message id includes the delivery count: a job redelivered after a crash
// records its second try.
func (s *Service) recordAttempt(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job) (jetstream.PubAckFuture, error) {
	now := time.Now().UTC()
	ev := &admin.QueueEvent{
		Type: wire.EventAttempt, Time: now, QueueID: job.QueueId, JobID: job.JobId, State: admin.StateActive,
		Attempt: job.Attempt, Priority: wire.ClassName(job.Priority), Instance: s.cfg.Instance,
	}
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().IsValid() {
		ev.TraceID = sc.TraceID().String()
	}
	data := admin.MarshalQueueEvent(ev)
	n := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		n = md.NumDelivered
	}
	m := nats.NewMsg(wire.EventSubject(job.QueueId, wire.EventAttempt))
	m.Data = data
	m.Header.Set(wire.HeaderJobID, job.JobId)
	telemetry.Inject(ctx, m.Header)
	return s.js.PublishMsgAsync(m, jetstream.WithExpectStream(wire.StreamEvents),
		jetstream.WithMsgID(job.JobId+"/"+strconv.FormatUint(uint64(job.Attempt), 10)+"/ev/attempt/"+strconv.FormatUint(n, 10)))
}

// awaitRecorded waits for the attempt event's PubAck. The attempt has been
// made by then, so a failure is only logged: the result still goes out.
func awaitRecorded(ctx context.Context, f jetstream.PubAckFuture, log *slog.Logger) {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-f.Ok():
	case err := <-f.Err():
		log.WarnContext(ctx, "attempt event not stored; the history misses this attempt", "err", err)
	case <-t.C:
		log.WarnContext(ctx, "attempt event not acknowledged in time; the history may miss this attempt")
	}
}
