package scheduler

import (
	"context"
	"errors"
	"log/slog"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/events"
	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/scheduler/refs"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// split turns one accepted message into its first-attempt jobs (step 2 of
// the pipeline). The order matters for crash safety: the open-jobs entry is
// written before any job exists, so no job can finish before it is counted;
// the message is acknowledged only after every job's PubAck, so a crash in
// between redelivers the message and the jobs' message ids ("<job id>/1")
// make the second publish a no-op.
func (s *Service) split(ctx context.Context, msg jetstream.Msg) consume.Outcome {
	s.handled.Add(1)
	ctx = telemetry.Extract(ctx, msg.Headers())
	ctx, span := s.tracer.Start(ctx, "scheduler.split",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(consumeAttrs(msg, wire.ConsumerScheduler)...))
	defer span.End()

	var m sluicev1.Message
	if err := proto.Unmarshal(msg.Data(), &m); err != nil {
		return s.term(ctx, span, msg, s.log, "messages", "undecodable", err)
	}
	span.SetAttributes(attrQueueID.String(m.GetQueueId()), attrRecipients.Int(len(m.GetRecipients())))
	log := s.log.With("queue_id", m.GetQueueId())
	if m.GetQueueId() == "" || !wire.ValidToken(m.GetQueueId()) {
		return s.term(ctx, span, msg, log, "messages", "undecodable", errors.New("message has no valid queue id"))
	}
	if len(m.GetRecipients()) == 0 {
		return s.term(ctx, span, msg, log, "messages", "no_recipients", errors.New("message has no recipients"))
	}
	md, err := msg.Metadata()
	if err != nil {
		return s.term(ctx, span, msg, log, "messages", "undecodable", err)
	}

	now := s.now()
	jobs := policy.MakeJobs(&m, policy.JobParams{
		Seq: md.Sequence.Stream, Now: now, Lifetime: s.cfg.Queue.Lifetime, Rules: s.cfg.Scheduler.PriorityRules,
	})
	span.SetAttributes(attrJobs.Int(len(jobs)))
	if len(jobs) > 1 {
		ids := make([]string, len(jobs))
		for i, j := range jobs {
			ids[i] = j.GetJobId()
		}
		if err := refs.Create(ctx, s.refs, m.GetQueueId(), ids); err != nil {
			return s.retryLater(ctx, span, msg, log, "record open jobs", err)
		}
	}

	futures := make([]jetstream.PubAckFuture, 0, len(jobs))
	for _, j := range jobs {
		data, err := proto.Marshal(j)
		if err != nil {
			return s.retryLater(ctx, span, msg, log, "encode job", err)
		}
		f, err := s.js.PublishMsgAsync(newMsg(ctx, wire.JobSubject(j.GetPriority(), j.GetJobId()), jobMsgID(j), j, data))
		if err != nil {
			return s.retryLater(ctx, span, msg, log, "publish job", err)
		}
		futures = append(futures, f)
	}
	// The received events go with the jobs: the queue index learns of a
	// job no later than the message is acknowledged.
	for _, j := range jobs {
		f, err := s.events.Async(ctx, events.Received(ctx, j, now), events.MsgID(j, wire.EventReceived))
		if err != nil {
			return s.retryLater(ctx, span, msg, log, "publish received event", err)
		}
		futures = append(futures, f)
	}
	acks, err := waitAll(ctx, s.stuck, futures)
	if err != nil {
		return s.retryLater(ctx, span, msg, log, "publish job", err)
	}
	// The jobs are stored; if the ack is lost, a redelivery republishes
	// them as duplicates that JetStream drops.
	for i, j := range jobs {
		// A duplicate is a job an earlier delivery of this message
		// already created.
		if !acks[i].Duplicate {
			s.m.jobsCreated.Add(ctx, 1, metric.WithAttributes(attrClass.String(wire.ClassName(j.GetPriority()))))
		}
	}
	if log.Enabled(ctx, slog.LevelDebug) {
		for _, j := range jobs {
			log.DebugContext(ctx, "job created", "job_id", j.GetJobId(), "domain", j.GetDomain(),
				"class", wire.ClassName(j.GetPriority()), "recipients", len(j.GetRecipients()))
		}
	}
	return consume.Done()
}

// term terminates an input that can never be processed: it is logged,
// counted and never redelivered, so it cannot block the consumer.
func (s *Service) term(ctx context.Context, span trace.Span, msg jetstream.Msg, log *slog.Logger, input, reason string, err error) consume.Outcome {
	span.RecordError(err)
	span.SetStatus(codes.Error, reason)
	log.ErrorContext(ctx, "input terminated", "input", input, "reason", reason, "subject", msg.Subject(), "err", err)
	s.m.terminated.Add(ctx, 1, metric.WithAttributes(attrInput.String(input), attrReason.String(reason)))
	return consume.Poison(reason)
}

// retryLater asks for a redelivery shortly after a failure of our own
// infrastructure. Delivery retries never come here: they are schedules.
func (s *Service) retryLater(ctx context.Context, span trace.Span, msg jetstream.Msg, log *slog.Logger, what string, err error) consume.Outcome {
	span.RecordError(err)
	span.SetStatus(codes.Error, what)
	log.WarnContext(ctx, what+" failed; will retry", "subject", msg.Subject(), "err", err)
	return consume.RetryAfter(infraRetryDelay)
}
