package guard

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// contextBackground is the context of the guard's measurements, which
// belong to no request.
var contextBackground = context.Background()

// metrics are the guard's instruments.
type metrics struct {
	// refused counts connections answered 421 at accept, by reason:
	// too_many_connections, too_many_from_client, storage_unavailable.
	refused metric.Int64Counter
	// closed counts connections the guard closed for breaking a rule, by
	// reason: bare_lf, bare_cr, line_too_long, timeout, too_many_errors,
	// too_many_commands.
	closed metric.Int64Counter
	// open is the number of accepted connections not yet closed.
	open metric.Int64UpDownCounter
}

func newMetrics(m metric.Meter) (*metrics, error) {
	var (
		out metrics
		err error
	)
	if out.refused, err = m.Int64Counter("sluice_ingress_connections_refused_total",
		metric.WithDescription("Connections answered 421 and closed at accept, by reason (too_many_connections, too_many_from_client, storage_unavailable).")); err != nil {
		return nil, fmt.Errorf("guard metrics: %w", err)
	}
	if out.closed, err = m.Int64Counter("sluice_ingress_connections_closed_total",
		metric.WithDescription("Connections closed by the ingress for breaking a rule, by reason (bare_lf, bare_cr, line_too_long, timeout, too_many_errors, too_many_commands).")); err != nil {
		return nil, fmt.Errorf("guard metrics: %w", err)
	}
	if out.open, err = m.Int64UpDownCounter("sluice_ingress_connections_open",
		metric.WithDescription("Accepted SMTP connections not yet closed.")); err != nil {
		return nil, fmt.Errorf("guard metrics: %w", err)
	}
	return &out, nil
}

func reasonAttr(r Reason) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("reason", r.String()))
}
