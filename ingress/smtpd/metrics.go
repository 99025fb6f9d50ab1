package smtpd

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Values of the result label of sluice_ingress_messages_received_total.
const (
	// resultAccepted: stored in JetStream and answered 250.
	resultAccepted = "accepted"
	// resultRejected: refused for the client's fault (too large, line too
	// long, aborted), answered 5xx or not at all.
	resultRejected = "rejected"
	// resultFailed: our storage failed (JetStream unavailable or full),
	// answered 451.
	resultFailed = "failed"
)

// metrics are the ingress's instruments. They count DATA transactions;
// envelopes refused at MAIL or RCPT never become messages.
type metrics struct {
	// received counts transactions by result: accepted, rejected or failed.
	received metric.Int64Counter
	// size is the size of accepted messages as stored (Received header
	// included), in bytes.
	size metric.Int64Histogram
	// storeDuration is how long the durable write took, labelled by result
	// (accepted or failed).
	storeDuration metric.Float64Histogram
	// sessions is the number of open SMTP sessions.
	sessions metric.Int64UpDownCounter
	// panics counts panics recovered in a session (the session is closed
	// with 421, the server goes on), labelled by where: the session method
	// that panicked (new_session, mail, rcpt, data, reset, logout, auth),
	// or smtp for a panic go-smtp recovered outside them.
	panics metric.Int64Counter
	// authResults counts the inbound authentication results of MX mail,
	// by method (spf, dkim, dmarc) and result (pass, fail, softfail,
	// neutral, none, temperror, permerror, policy).
	authResults metric.Int64Counter
}

func newMetrics(m metric.Meter) (*metrics, error) {
	var (
		out metrics
		err error
	)
	if out.received, err = m.Int64Counter("sluice_ingress_messages_received_total",
		metric.WithDescription("SMTP transactions that reached DATA, by result (accepted, rejected, failed).")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.size, err = m.Int64Histogram("sluice_ingress_message_size_bytes",
		metric.WithDescription("Size of accepted messages as stored, Received header included."),
		metric.WithUnit("By"),
		metric.WithExplicitBucketBoundaries(1<<10, 4<<10, 16<<10, 64<<10, 256<<10, 1<<20, 4<<20, 16<<20, 64<<20)); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.storeDuration, err = m.Float64Histogram("sluice_ingress_store_duration_seconds",
		metric.WithDescription("Time to store a message durably in JetStream, by result (accepted, failed)."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.sessions, err = m.Int64UpDownCounter("sluice_ingress_sessions_active",
		metric.WithDescription("Open SMTP sessions.")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.panics, err = m.Int64Counter("sluice_ingress_panics_total",
		metric.WithDescription("Panics recovered in SMTP sessions, by session method (new_session, mail, rcpt, data, reset, logout, auth; smtp: recovered by go-smtp outside them).")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.authResults, err = m.Int64Counter("sluice_ingress_auth_results_total",
		metric.WithDescription("Inbound authentication results of MX mail, by method (spf, dkim, dmarc) and result (RFC 8601 values).")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	return &out, nil
}

func resultAttr(r string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("result", r))
}
