// Package lifecycle gives a service's main one way to stop: a context that is
// cancelled on SIGINT or SIGTERM.
package lifecycle

import (
	"context"
	"os/signal"
	"syscall"
)

// SignalContext returns a context cancelled by SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}
