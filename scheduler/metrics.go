package scheduler

import (
	"fmt"

	"go.opentelemetry.io/otel/metric"
)

// instruments are the scheduler's metrics. Label values are listed beside
// each one; no label ever holds an address.
type instruments struct {
	// class: high, normal, bulk.
	jobsCreated metric.Int64Counter
	// reason: the lower-case Reason name of the first deferred recipient:
	// unspecified, dns, connect, tls, remote, timeout, throttled, protocol,
	// null_mx, no_domain, expired, internal, require_tls, held.
	retriesScheduled metric.Int64Counter
	// kind: failed, delivered.
	bouncesRequested metric.Int64Counter
	// reason: null_sender (mail_from is <>), dsn (the job is itself a DSN),
	// notify_never (every failed recipient asked for NOTIFY=NEVER).
	bouncesSuppressed metric.Int64Counter
	// Jobs whose temporarily failed recipients expired (no labels).
	expired metric.Int64Counter
	// Messages deleted because every job finished (no labels).
	messagesCompleted metric.Int64Counter
	// Accept-to-delivery time of each delivered recipient (no labels).
	deliveryDelay metric.Float64Histogram
	// input: messages, results; reason: undecodable, no_recipients, no_job,
	// panic.
	terminated metric.Int64Counter
}

// delayBuckets cover a fast local delivery up to a queue lifetime of days.
var delayBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 5 * 86400}

func newInstruments(m metric.Meter) (*instruments, error) {
	var in instruments
	var err error
	counter := func(dst *metric.Int64Counter, name, desc string) {
		if err != nil {
			return
		}
		*dst, err = m.Int64Counter(name, metric.WithDescription(desc))
	}
	counter(&in.jobsCreated, "sluice_scheduler_jobs_created_total", "First-attempt jobs made from accepted messages, by priority class.")
	counter(&in.retriesScheduled, "sluice_scheduler_retries_scheduled_total", "Retries scheduled after a temporary failure, by deferral reason.")
	counter(&in.bouncesRequested, "sluice_scheduler_bounces_requested_total", "DSN requests published to the bouncer, by kind.")
	counter(&in.bouncesSuppressed, "sluice_scheduler_bounces_suppressed_total", "DSNs not requested because they would go to the null sender, answer a DSN, or were refused by NOTIFY=NEVER.")
	counter(&in.expired, "sluice_scheduler_expired_total", "Jobs whose deferred recipients passed the queue lifetime and were bounced.")
	counter(&in.messagesCompleted, "sluice_scheduler_messages_completed_total", "Messages deleted from the queue after their last job finished.")
	counter(&in.terminated, "sluice_scheduler_terminated_total", "Inputs that could not be processed and were terminated, by input and reason.")
	if err != nil {
		return nil, fmt.Errorf("scheduler metrics: %w", err)
	}
	in.deliveryDelay, err = m.Float64Histogram("sluice_scheduler_delivery_delay_seconds",
		metric.WithDescription("Time from acceptance to delivery of each delivered recipient."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(delayBuckets...))
	if err != nil {
		return nil, fmt.Errorf("scheduler metrics: %w", err)
	}
	return &in, nil
}
