package scheduler

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/services/telemetry"
)

// The instruments come out of the Prometheus endpoint under their declared
// names (no doubled _total or unit suffix).
func TestPrometheusNames(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, "scheduler", telemetry.Env{}, nil, "error")
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	var js jetstream.JetStream // New does no I/O
	s, err := New(Default(), js, tel.Tracer, tel.Meter, tel.Logger)
	if err != nil {
		t.Fatal(err)
	}
	s.m.jobsCreated.Add(ctx, 1, metric.WithAttributes(attrClass.String("high")))
	s.m.retriesScheduled.Add(ctx, 1, metric.WithAttributes(attrReason.String("dns")))
	s.m.bouncesRequested.Add(ctx, 1, metric.WithAttributes(attrKind.String("failed")))
	s.m.bouncesSuppressed.Add(ctx, 1, metric.WithAttributes(attrReason.String("null_sender")))
	s.m.expired.Add(ctx, 1)
	s.m.messagesCompleted.Add(ctx, 1)
	s.m.terminated.Add(ctx, 1, metric.WithAttributes(attrInput.String("messages"), attrReason.String("undecodable")))
	s.m.deliveryDelay.Record(ctx, 1.5)
	families, err := tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{
		"sluice_scheduler_jobs_created_total",
		"sluice_scheduler_retries_scheduled_total",
		"sluice_scheduler_bounces_requested_total",
		"sluice_scheduler_bounces_suppressed_total",
		"sluice_scheduler_expired_total",
		"sluice_scheduler_messages_completed_total",
		"sluice_scheduler_terminated_total",
		"sluice_scheduler_delivery_delay_seconds",
	} {
		if !got[name] {
			t.Errorf("metric %s not exported; have %v", name, got)
		}
	}
}
