package smtpd

import (
	"context"
	"sort"
	"testing"

	"github.com/sluice-mta/sluice/services/telemetry"
)

// TestMetricNamesOnPrometheus checks the names operators see on /metrics:
// the exporter must not append unit or _total suffixes a second time.
func TestMetricNamesOnPrometheus(t *testing.T) {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, "ingress", telemetry.Env{}, nil, "error")
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	m, err := newMetrics(tel.Meter)
	if err != nil {
		t.Fatal(err)
	}
	m.received.Add(ctx, 1, resultAttr(resultAccepted))
	m.size.Record(ctx, 1234)
	m.storeDuration.Record(ctx, 0.01, resultAttr(resultAccepted))
	m.sessions.Add(ctx, 1)
	families, err := tel.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	var names []string
	for _, f := range families {
		got[f.GetName()] = true
		names = append(names, f.GetName())
	}
	sort.Strings(names)
	for _, want := range []string{
		"sluice_ingress_messages_received_total",
		"sluice_ingress_message_size_bytes",
		"sluice_ingress_store_duration_seconds",
		"sluice_ingress_sessions_active",
	} {
		if !got[want] {
			t.Errorf("metric %s not exposed; have %v", want, names)
		}
	}
}
