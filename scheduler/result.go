package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/events"
	"github.com/sluice-mta/sluice/scheduler/hold"
	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/scheduler/refs"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// result applies one deliverer report (step 4 of the pipeline). This is the
// one place where an outcome becomes an action:
//
//   - delivered: done; a success DSN if the recipient asked for one;
//   - permanent: done; a failure DSN;
//   - temporary, job expired: done; a failure DSN with status 4.4.7;
//   - temporary: a retry job as a message schedule on the job's schedule
//     subject, firing into its class subject at the next attempt time.
//
// Every output (DSN requests, the schedule) is published and acknowledged by
// JetStream before the job is marked final and the result acknowledged, and
// each output's message id is derived from the job, attempt and kind, so a
// redelivered result yields nothing twice.
func (s *Service) result(ctx context.Context, msg jetstream.Msg) consume.Outcome {
	s.handled.Add(1)
	ctx = telemetry.Extract(ctx, msg.Headers())
	ctx, span := s.tracer.Start(ctx, "scheduler.result",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(consumeAttrs(msg, wire.ConsumerResults)...))
	defer span.End()

	var r sluicev1.Result
	if err := proto.Unmarshal(msg.Data(), &r); err != nil {
		return s.term(ctx, span, msg, s.log, "results", "undecodable", err)
	}
	job := r.GetJob()
	if job.GetJobId() == "" || job.GetQueueId() == "" || !wire.ValidToken(job.GetJobId()) {
		return s.term(ctx, span, msg, s.log, "results", "no_job", errors.New("result carries no valid job"))
	}
	span.SetAttributes(
		attrQueueID.String(job.GetQueueId()), attrJobID.String(job.GetJobId()),
		attrAttempt.Int64(int64(job.GetAttempt())), attrPriority.String(wire.ClassName(job.GetPriority())),
		attrDomain.String(job.GetDomain()),
	)
	log := s.log.With("queue_id", job.GetQueueId(), "job_id", job.GetJobId(), "attempt", job.GetAttempt())

	now := s.now()
	d := policy.Decide(job, r.GetRecipients(), now)
	// An operator may have held or deleted the job while it was being
	// attempted: a held job's retry is parked instead of scheduled, and
	// what a deleted job would have retried is dropped.
	mark, marked, err := s.marks.Get(ctx, job.GetJobId())
	if err != nil {
		return s.retryLater(ctx, span, msg, log, "read hold mark", err)
	}
	held := marked && mark.Action != admin.MarkDelete
	var dropped []*sluicev1.RecipientResult
	if marked && mark.Action == admin.MarkDelete && len(d.Retry) > 0 {
		dropped, d.Retry = d.Retry, nil
	}
	span.SetAttributes(attrDelivered.Int(len(d.Delivered)), attrFailed.Int(len(d.Failed)), attrDeferred.Int(len(d.Retry)))

	var (
		futures    []jetstream.PubAckFuture
		bounced    []sluicev1.BounceKind
		suppressed []string
	)
	bounce := func(kind sluicev1.BounceKind, rcpts []*sluicev1.RecipientResult) error {
		b := &sluicev1.Bounce{
			Schema: wire.SchemaVersion, Job: job, Kind: kind, Recipients: rcpts,
			OriginalHeaders: r.GetOriginalHeaders(), CreatedUnixNano: now.UnixNano(),
		}
		data, err := proto.Marshal(b)
		if err != nil {
			return err
		}
		id := jobMsgID(job) + "/" + kindName(kind)
		f, err := s.js.PublishMsgAsync(newMsg(ctx, wire.BounceSubject(job.GetJobId()), id, job, data))
		if err != nil {
			return err
		}
		futures = append(futures, f)
		bounced = append(bounced, kind)
		return nil
	}
	// suppress returns why no DSN may be sent about this job, or "".
	suppress := func() string {
		switch {
		case job.GetIsDsn():
			return "dsn"
		case job.GetMailFrom() == "":
			return "null_sender"
		}
		return ""
	}

	if len(d.Failed) > 0 {
		want := policy.Filter(d.Failed, policy.WantsFailure)
		switch {
		case len(want) == 0:
			suppressed = append(suppressed, "notify_never")
		case !policy.MayBounce(job):
			suppressed = append(suppressed, suppress())
		default:
			if err := bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED, want); err != nil {
				return s.retryLater(ctx, span, msg, log, "publish bounce request", err)
			}
		}
	}
	if want := policy.Filter(d.Delivered, policy.WantsSuccess); len(want) > 0 {
		if !policy.MayBounce(job) {
			suppressed = append(suppressed, suppress())
		} else if err := bounce(sluicev1.BounceKind_BOUNCE_KIND_DELIVERED, want); err != nil {
			return s.retryLater(ctx, span, msg, log, "publish success DSN request", err)
		}
	}

	var next *sluicev1.Job
	if len(d.Retry) > 0 {
		expires := time.Time{}
		if e := job.GetExpiresUnixNano(); e != 0 {
			expires = time.Unix(0, e)
		}
		at := policy.NextAttempt(now, s.cfg.Scheduler.Retry.Policy().Backoff(job.GetAttempt(), s.random), expires)
		next = policy.RetryJob(job, d.Retry, now, at)
		if policy.ShouldWarnDelay(job, now, s.cfg.Scheduler.DelayWarning) {
			// Warn the sender once (RFC 3464 Action: delayed); the retry
			// carries the flag so later attempts do not warn again.
			next.DelayWarned = true
			if want := policy.Filter(d.Retry, policy.WantsDelay); len(want) > 0 && policy.MayBounce(job) {
				if err := bounce(sluicev1.BounceKind_BOUNCE_KIND_DELAYED, want); err != nil {
					return s.retryLater(ctx, span, msg, log, "publish delay DSN request", err)
				}
			}
		}
		span.SetAttributes(attrDeferReason.String(reasonName(next.GetLastReason())), attrNextAttempt.String(at.UTC().Format(time.RFC3339)))
		var f jetstream.PubAckFuture
		if held {
			f, err = s.park(ctx, next)
		} else {
			f, err = s.schedule(ctx, next, at)
		}
		if err != nil {
			return s.retryLater(ctx, span, msg, log, "publish retry schedule", err)
		}
		futures = append(futures, f)
	}

	ev := s.outcomeEvent(ctx, &r, d, dropped, next, held, now)
	f, err := s.events.Async(ctx, ev, events.MsgID(job, ev.Type))
	if err != nil {
		return s.retryLater(ctx, span, msg, log, "publish outcome event", err)
	}
	futures = append(futures, f)

	acks, err := waitAll(ctx, s.stuck, futures)
	if err != nil {
		return s.retryLater(ctx, span, msg, log, "publish result outputs", err)
	}
	// When JetStream reports every output as a duplicate, an earlier
	// delivery of this result already produced them (and was counted); the
	// rest of the work below is idempotent.
	replay := len(acks) > 0
	for _, a := range acks {
		replay = replay && a.Duplicate
	}
	if d.Final() {
		if err := s.complete(ctx, job, log); err != nil {
			return s.retryLater(ctx, span, msg, log, "complete job", err)
		}
		if held {
			// The job finished while on hold: drop the hold and any copy
			// parked before the attempt ended.
			if err := s.unpark(ctx, job.GetJobId()); err != nil {
				return s.retryLater(ctx, span, msg, log, "clear hold of finished job", err)
			}
		}
	}
	if replay {
		log.InfoContext(ctx, "result already applied by an earlier delivery")
		return consume.Done()
	}
	s.record(ctx, log, &r, d, bounced, suppressed, next, now)
	return consume.Done()
}

// schedule publishes the retry job to the job's schedule subject as a
// one-shot JetStream message schedule that fires into the job's class
// subject at at (with second resolution, hence policy.NextAttempt rounding
// up). JetStream copies the payload and the other headers, trace context
// included, into the fired message and then removes the schedule. The
// message id "<job id>/<next attempt>" makes a redelivered result's second
// schedule a duplicate; JetStream strips it from the fired job.
func (s *Service) schedule(ctx context.Context, next *sluicev1.Job, at time.Time) (jetstream.PubAckFuture, error) {
	data, err := proto.Marshal(next)
	if err != nil {
		return nil, err
	}
	m := newMsg(ctx, wire.ScheduleSubject(next.GetJobId()), jobMsgID(next), next, data)
	m.Header.Set(jetstream.ScheduleHeader, "@at "+at.UTC().Format(time.RFC3339))
	m.Header.Set(jetstream.ScheduleTargetHeader, wire.JobSubject(next.GetPriority(), next.GetJobId()))
	return s.js.PublishMsgAsync(m)
}

// park puts the retry of a held job on its held subject instead of
// scheduling it; `sluice queue release` schedules it later.
func (s *Service) park(ctx context.Context, next *sluicev1.Job) (jetstream.PubAckFuture, error) {
	data, err := proto.Marshal(next)
	if err != nil {
		return nil, err
	}
	h := nats.Header{}
	telemetry.Inject(ctx, h)
	return s.js.PublishMsgAsync(hold.ParkMsg(next, data, h, "scheduler", "result"))
}

// unpark removes the hold mark and parked copy of a finished job.
func (s *Service) unpark(ctx context.Context, jobID string) error {
	if err := s.jobs.Purge(ctx, jetstream.WithPurgeSubject(wire.HeldSubject(jobID))); err != nil {
		return err
	}
	return hold.Clear(ctx, s.held, jobID)
}

// outcomeEvent is the event recording what an attempt led to: deferred
// (with the next attempt), or the final delivered, bounced, expired, or
// deleted when an operator deleted the job during the attempt.
func (s *Service) outcomeEvent(ctx context.Context, r *sluicev1.Result, d policy.Decision, dropped []*sluicev1.RecipientResult, next *sluicev1.Job, held bool, now time.Time) *admin.QueueEvent {
	job := r.GetJob()
	typ, state := wire.EventDelivered, admin.StateDone
	switch {
	case next != nil:
		typ, state = wire.EventDeferred, admin.StateDeferred
		if held {
			state = admin.StateHeld
		}
	case len(dropped) > 0:
		typ = wire.EventDeleted
	case d.Expired:
		typ = wire.EventExpired
	case len(d.Failed) > 0:
		typ = wire.EventBounced
	}
	ev := events.New(ctx, typ, job, state, now)
	ev.Instance = r.GetDeliverer()
	if t := r.GetStartedUnixNano(); t != 0 {
		ev.Started = time.Unix(0, t).UTC()
	}
	all := make([]*sluicev1.RecipientResult, 0, len(r.GetRecipients()))
	all = append(append(append(append(all, d.Delivered...), d.Failed...), d.Retry...), dropped...)
	ev.Recipients = events.Recipients(all)
	for _, rr := range all {
		if ev.RemoteHost == "" {
			ev.RemoteHost = rr.GetRemoteHost()
		}
	}
	// The reason and reply shown for the job: the first deferred
	// recipient's when it is retried, else the first failure's.
	for _, group := range [][]*sluicev1.RecipientResult{d.Retry, d.Failed, dropped} {
		if len(group) > 0 {
			ev.Reason, ev.Error = events.ReasonName(group[0].GetReason()), events.Reply(group[0])
			if h := group[0].GetRemoteHost(); h != "" {
				ev.RemoteHost = h
			}
			break
		}
	}
	if next != nil {
		ev.NextAttempt = time.Unix(0, next.GetNotBeforeUnixNano()).UTC()
		if held {
			ev.Note = "the job is on hold: the retry waits for a release"
		}
	}
	if len(dropped) > 0 {
		ev.Note = "deleted by an operator during the attempt: deferred recipients dropped"
	}
	return ev
}

// complete marks a job final. For a message split into several jobs that
// means removing the job from the open-jobs entry; the job that empties it
// (or the only job of the message) deletes the message from SLUICE_MSGS and
// its body object. Every step tolerates having been done already, because
// a result is redelivered when the scheduler dies before acknowledging it.
func (s *Service) complete(ctx context.Context, job *sluicev1.Job, log *slog.Logger) error {
	if job.GetJobsTotal() > 1 {
		last, err := refs.Done(ctx, s.refs, job.GetQueueId(), job.GetJobId())
		if err != nil {
			return err
		}
		if !last {
			return nil
		}
	}
	deleted := false
	if seq := job.GetMsgSeq(); seq != 0 {
		// Only the leader's answer to the delete says whether the message
		// is gone: a direct get may be answered by a replica that has not
		// caught up (see streams.LeaderMsg).
		var err error
		if deleted, err = streams.DeleteMsg(ctx, s.msgs, seq); err != nil {
			return fmt.Errorf("delete message %d: %w", seq, err)
		}
	}
	if name, nuid := job.GetBodyObject(), job.GetBodyNuid(); name != "" && nuid != "" {
		// The leader purges chunks and metadata: no lookup first, and a
		// body already gone is no error (see streams.DeleteBody).
		if err := streams.DeleteBody(ctx, s.js, wire.BucketBodies, name, nuid); err != nil {
			return err
		}
	} else if name != "" {
		err := s.bodies.Delete(ctx, name)
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			// Read from a replica: the leader confirms it is gone.
			switch gone, gerr := streams.ObjectGone(ctx, s.js, wire.BucketBodies, name); {
			case gerr != nil:
				err = gerr
			case gone:
				err = nil
			default:
				err = errors.New("a replica says it is not found, the stream's leader still holds it")
			}
		}
		if err != nil {
			return fmt.Errorf("delete body %s: %w", name, err)
		}
	}
	if deleted {
		s.m.messagesCompleted.Add(ctx, 1)
		log.InfoContext(ctx, "message completed", "msg_seq", job.GetMsgSeq())
	}
	return nil
}

// record counts and logs what a result led to, once it is all durable.
func (s *Service) record(ctx context.Context, log *slog.Logger, r *sluicev1.Result, d policy.Decision, bounced []sluicev1.BounceKind, suppressed []string, next *sluicev1.Job, now time.Time) {
	job := r.GetJob()
	for _, k := range bounced {
		s.m.bouncesRequested.Add(ctx, 1, metric.WithAttributes(attrKind.String(kindName(k))))
		log.InfoContext(ctx, "bounce requested", "kind", kindName(k))
	}
	for _, reason := range suppressed {
		s.m.bouncesSuppressed.Add(ctx, 1, metric.WithAttributes(attrReason.String(reason)))
		log.InfoContext(ctx, "bounce suppressed", "reason", reason)
	}
	if d.Expired {
		s.m.expired.Add(ctx, 1)
		log.InfoContext(ctx, "job expired", "domain", job.GetDomain())
	}
	if next != nil {
		reason := reasonName(next.GetLastReason())
		s.m.retriesScheduled.Add(ctx, 1, metric.WithAttributes(attrReason.String(reason)))
		log.InfoContext(ctx, "retry scheduled", "domain", job.GetDomain(), "reason", reason,
			"next_attempt", next.GetAttempt(), "at", time.Unix(0, next.GetNotBeforeUnixNano()).UTC().Format(time.RFC3339),
			"recipients", len(next.GetRecipients()), "last_error", next.GetLastError())
	}
	if len(d.Delivered) > 0 && job.GetReceivedUnixNano() != 0 {
		finished := r.GetFinishedUnixNano()
		if finished == 0 {
			finished = now.UnixNano()
		}
		delay := time.Duration(finished - job.GetReceivedUnixNano()).Seconds()
		if delay < 0 {
			delay = 0
		}
		for range d.Delivered {
			s.m.deliveryDelay.Record(ctx, delay)
		}
	}
	trace.SpanFromContext(ctx).AddEvent("result applied", trace.WithAttributes(attribute.Bool("sluice.final", d.Final())))
}
