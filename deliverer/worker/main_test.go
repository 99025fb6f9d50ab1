package worker

import (
	"fmt"
	"os"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// telemetry.Setup installs the W3C propagator in main; tests do the same.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	before := goleak.IgnoreCurrent()
	code := m.Run()
	if code == 0 {
		// Every goroutine the service starts must be gone once the tests
		// have closed their services and servers.
		if err := goleak.Find(before); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
