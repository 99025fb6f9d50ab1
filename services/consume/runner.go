package consume

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Runner handles one input the way every Sluice consumer does: it keeps
// the input alive with in-progress acknowledgements while the handler
// runs, recovers and counts a panic (guard), and settles the handler's
// outcome (Settle). It is the part of a Loop that does not depend on how
// inputs are pulled: a Loop's workers run it, and so does the deliverer,
// which pulls its three priority classes in weighted turns of its own.
type Runner struct {
	// Input names the input in logs and metrics ("messages", "jobs").
	Input string
	// KeepAlive is the interval of in-progress acknowledgements (a third
	// of the consumer's AckWait).
	KeepAlive time.Duration
	// Timeout bounds one handler run (its context); 0 is no bound.
	Timeout time.Duration
	// RetryDelay is the delay of a retry after a panic.
	RetryDelay time.Duration
	// PanicsArePoison: an input that panicked on MaxPanics deliveries is
	// terminated. A consumer whose handler has a rule of its own for
	// inputs that never finish (the deliverer's strikes, which end the job
	// as a failure the scheduler bounces) leaves it false.
	PanicsArePoison bool
	Log             *slog.Logger
	Metrics         *Metrics
}

// Run hands msg to h and settles the outcome. The handler sees msg with
// its settlements counted (Metrics.counted), so one that settles the input
// itself and returns Settled is counted like the others. The error is the
// settlement's: the input comes back after AckWait, which every handler
// must tolerate.
func (r *Runner) Run(ctx context.Context, msg jetstream.Msg, h Handler) (Outcome, error) {
	hctx := ctx
	if r.Timeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	stop := KeepInProgress(msg, r.KeepAlive)
	counted := r.Metrics.counted(r.Input, msg)
	o := r.guard(hctx, msg, func() Outcome { return h(hctx, counted) })
	stop()
	err := r.Metrics.Settle(ctx, r.Input, msg, o)
	if err != nil {
		r.Log.Warn("settle input", "input", r.Input, "settlement", o.Name(), "err", err)
	}
	return o, err
}

// guard runs h and returns its outcome, or, when it panics, counts and
// logs the panic once (at warning level, without the stack: a panic that
// a client can provoke must not flood the log) and returns a retry after
// RetryDelay, or, with PanicsArePoison, Poison once the input has panicked
// on MaxPanics deliveries.
func (r *Runner) guard(ctx context.Context, msg jetstream.Msg, h func() Outcome) (o Outcome) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		r.Metrics.panics.Add(ctx, 1, metric.WithAttributes(attribute.String("input", r.Input)))
		delivered := uint64(1)
		if md, err := msg.Metadata(); err == nil {
			delivered = md.NumDelivered
		}
		r.Log.WarnContext(ctx, "panic handling input", "input", r.Input, "subject", msg.Subject(), "panic", fmt.Sprint(p), "delivered", delivered)
		if r.PanicsArePoison && delivered >= MaxPanics {
			o = Poison(fmt.Sprintf("%s: panicked on %d deliveries", r.Input, delivered))
			return
		}
		o = RetryAfter(r.RetryDelay)
	}()
	return h()
}
