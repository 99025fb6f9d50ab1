package worker

import (
	"os"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

func TestMain(m *testing.M) {
	// telemetry.Setup installs the W3C propagator in main; tests do the same.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	os.Exit(m.Run())
}
