package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/consume"
)

// A poison job is one whose handling never ends: the deliverer crashes or
// is killed while delivering it, or cannot store its outcome, and
// JetStream hands it out again, for ever (the consumers have no maximum
// delivery count, as a count of deliveries also counts the jobs a
// deliverer hands back on purpose, such as those waiting for a busy
// site). Instead, a delivery that reaches the attempt for a job that was
// handed out before counts a strike for the job's attempt in the
// sluice_strikes bucket; a job with MaxStrikes strikes is not attempted
// again but ends as a permanent failure with the reason, which the
// scheduler turns into a bounce like any other. A first delivery, the
// common case, costs nothing.

// strike records one more delivery of job's attempt that reached the
// attempt after an earlier one, and returns the count.
func (s *Service) strike(ctx context.Context, job *sluicev1.Job) (uint64, error) {
	return s.addStrike(ctx, job, true)
}

// unstrike takes back the strike this delivery counted, when it did not
// reach the remote server after all: its attempt could not be recorded
// (SLUICE_EVENTS without a leader while a cluster recovers) or its body
// could not be read. Those are JetStream's troubles, not the job's, and a
// few of them in a row must not end a mail as poison. Best effort: when
// the bucket cannot be reached either, the strike stays.
func (s *Service) unstrike(ctx context.Context, job *sluicev1.Job, log *slog.Logger) {
	if _, err := s.addStrike(ctx, job, false); err != nil {
		log.WarnContext(ctx, "cannot take back the strike of a delivery that did not reach the attempt", "err", err)
	}
}

// addStrike counts one strike more (up) or one less for job's attempt in
// sluice_strikes, with compare-and-set so that concurrent deliveries of a
// copy each count, and returns the new count. Taking back from a count
// that is not there (or is zero) leaves it so.
func (s *Service) addStrike(ctx context.Context, job *sluicev1.Job, up bool) (uint64, error) {
	key := strikeKey(job)
	for range 10 {
		e, err := s.strikes.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if !up {
				return 0, nil
			}
			if _, err = s.strikes.Create(ctx, key, []byte("1")); err == nil {
				return 1, nil
			}
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another delivery's strike, or a replica behind
			}
			return 0, err
		}
		if err != nil {
			return 0, err
		}
		n, _ := strconv.ParseUint(string(e.Value()), 10, 64)
		switch {
		case up:
			n++
		case n == 0:
			return 0, nil
		default:
			n--
		}
		if _, err = s.strikes.Update(ctx, key, []byte(strconv.FormatUint(n, 10)), e.Revision()); err == nil {
			return n, nil
		}
		// A stale read or a concurrent strike: read again.
	}
	return 0, fmt.Errorf("strike %s: too many conflicting updates", key)
}

// strikeKey is job's attempt's key in sluice_strikes.
func strikeKey(job *sluicev1.Job) string {
	return job.JobId + "." + strconv.FormatUint(uint64(job.Attempt), 10)
}

// checkStrikes counts a strike when msg was handed out before and reports
// whether the job must not be attempted (poison, or strikes cannot be
// counted), and then what becomes of it; struck says a strike was counted.
func (s *Service) checkStrikes(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, log *slog.Logger) (o consume.Outcome, stop, struck bool) {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered <= 1 {
		return consume.Outcome{}, false, false
	}
	// Handed out before and now at the attempt: a possible duplicate (an
	// earlier delivery may have reached the attempt too). Jobs handed back
	// before the attempt on purpose (a busy site) are counted once here,
	// not at each return.
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int64("sluice.redelivered", int64(md.NumDelivered-1)))
	s.m.redelivered.Add(ctx, 1, metric.WithAttributes(attribute.String("priority", wire.ClassName(job.Priority))))
	n, err := s.strike(ctx, job)
	if err != nil {
		log.WarnContext(ctx, "cannot count a strike; job returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry), true, false
	}
	if n < uint64(s.cfg.MaxStrikes) {
		return consume.Outcome{}, false, true
	}
	// Poison: end it with a failure the scheduler bounces.
	e := status.Permanent(sluicev1.Reason_REASON_INTERNAL, 554, "5.3.0", fmt.Sprintf(
		"delivery of this message was started %d times and never finished (the deliverer crashed, was stopped or "+
			"could not store the outcome each time); it is not tried again", n))
	res := &sluicev1.Result{
		Schema: wire.SchemaVersion, Job: job, Recipients: failAll(job, e), Deliverer: s.cfg.Instance,
	}
	job.Body = nil
	if err := s.publish(ctx, job, res); err != nil {
		log.ErrorContext(ctx, "cannot store the failure of a poison job; job returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry), true, true
	}
	s.m.poisoned.Add(context.Background(), 1, metric.WithAttributes(attribute.String("priority", wire.ClassName(job.Priority))))
	log.ErrorContext(ctx, "poison job failed for good", "strikes", n, "deliveries", md.NumDelivered)
	return s.confirmed(), true, true
}
