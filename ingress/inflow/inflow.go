// Package inflow slows the ingress down when delivery falls behind, as
// Postfix's in_flow_delay does: while more work waits for the scheduler and
// the deliverers than they take on, a new transaction waits a moment at MAIL
// FROM, so that the CPU and the streams go to the mail already queued
// instead of to a queue that only grows.
//
// The backlog is what no scheduler or deliverer has taken yet: the
// messages of SLUICE_MSGS not yet delivered to the scheduler's consumer and
// the ready jobs not yet delivered to any deliverer (the NumPending of the
// durable consumers "scheduler" and "deliver-<class>"). Jobs waiting for a
// retry, held by an operator or parked behind a busy site are not in it,
// nor are jobs a deliverer is working on, so a slow destination or a
// suspended provider does not slow the ingress; only a fleet whose
// scheduler or deliverers are all busy does.
//
// A transaction waits at most MaxDelay (1 s by default, Postfix's
// in_flow_delay) and is then accepted whatever the backlog: the gate slows
// clients down, it never refuses them. When the backlog cannot be read
// (NATS down, consumers not created yet) nothing waits: the ingress's
// storage checks answer for an unavailable queue.
package inflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Counter reads the backlog: the work waiting for a scheduler or a
// deliverer.
type Counter func(ctx context.Context) (uint64, error)

// Options configure a Gate.
type Options struct {
	// Backlog is the backlog above which new transactions wait; 0 turns
	// the gate off.
	Backlog uint64
	// MaxDelay is the longest a transaction waits; 0 turns the gate off.
	MaxDelay time.Duration
	// Interval is how often the backlog is read (250 ms when zero).
	Interval time.Duration
	// Timeout bounds one reading of the backlog (2 s when zero).
	Timeout time.Duration
	// Meter receives the gate's instruments; nil records nothing.
	Meter metric.Meter
	// Logger receives changes of state; nil discards.
	Logger *slog.Logger
}

// Gate makes transactions wait while the backlog is over its limit.
type Gate struct {
	o     Options
	count Counter
	log   *slog.Logger

	mu      sync.Mutex
	backlog uint64
	open    chan struct{} // closed when the backlog falls to the limit
	behind  bool          // the log said delivery is behind
	under   time.Time     // since when the backlog is under the limit again

	waits   metric.Float64Histogram
	current metric.Int64Gauge
}

// New returns a gate reading the backlog with count. Run must run for the
// gate to learn the backlog; until its first reading nothing waits.
func New(count Counter, o Options) (*Gate, error) {
	if o.Interval <= 0 {
		o.Interval = 250 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Gate{o: o, count: count, log: o.Logger, open: make(chan struct{})}
	close(g.open)
	if o.Meter != nil {
		var err error
		if g.waits, err = o.Meter.Float64Histogram("sluice_ingress_inflow_delay_seconds",
			metric.WithDescription("How long transactions waited at MAIL FROM because delivery was behind (ingress.inflow_backlog), by outcome: released (the backlog fell), timeout (ingress.inflow_delay passed) or cancelled (the session or the server ended)."),
			metric.WithUnit("s"),
			metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)); err != nil {
			return nil, fmt.Errorf("inflow metrics: %w", err)
		}
		if g.current, err = o.Meter.Int64Gauge("sluice_ingress_inflow_backlog",
			metric.WithDescription("Messages and ready jobs no scheduler or deliverer has taken yet, as the ingress last read them.")); err != nil {
			return nil, fmt.Errorf("inflow metrics: %w", err)
		}
	}
	return g, nil
}

// Enabled reports whether the gate ever makes a transaction wait.
func (g *Gate) Enabled() bool { return g != nil && g.o.Backlog > 0 && g.o.MaxDelay > 0 }

// Run reads the backlog every Interval until ctx ends.
func (g *Gate) Run(ctx context.Context) {
	if !g.Enabled() {
		return
	}
	t := time.NewTicker(g.o.Interval)
	defer t.Stop()
	var lastErr string
	for {
		rctx, cancel := context.WithTimeout(ctx, g.o.Timeout)
		n, err := g.count(rctx)
		cancel()
		if ctx.Err() != nil {
			g.set(0)
			return
		}
		if err != nil {
			// Fail open: an unreadable backlog makes nobody wait.
			if err.Error() != lastErr {
				g.log.Warn("inflow: cannot read the delivery backlog; transactions are not slowed until it can", "err", err)
				lastErr = err.Error()
			}
			g.set(0)
		} else {
			lastErr = ""
			g.set(n)
		}
		select {
		case <-ctx.Done():
			g.set(0)
			return
		case <-t.C:
		}
	}
}

// set records a reading and opens or closes the gate.
func (g *Gate) set(n uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.overLocked()
	g.backlog = n
	if g.current != nil {
		g.current.Record(context.Background(), int64(min(n, 1<<62)))
	}
	over := g.overLocked()
	switch {
	case over && !was:
		g.open = make(chan struct{})
	case !over && was:
		close(g.open)
	}
	// Under a steady overload the backlog crosses the limit several times
	// a second; the log says when a spell of it begins and when the
	// backlog has stayed under the limit for quietAfter.
	now := time.Now()
	switch {
	case over:
		if !g.behind {
			g.behind = true
			g.log.Info("inflow: delivery is behind, new transactions wait", "backlog", n, "limit", g.o.Backlog, "max_delay", g.o.MaxDelay.String())
		}
		g.under = time.Time{}
	case g.behind && g.under.IsZero():
		g.under = now
	case g.behind && now.Sub(g.under) >= quietAfter:
		g.behind = false
		g.log.Info("inflow: delivery caught up", "backlog", n, "limit", g.o.Backlog)
	}
}

// quietAfter is how long the backlog stays under the limit before the log
// says delivery caught up.
const quietAfter = 10 * time.Second

// overLocked reports whether the last reading is over the limit; g.mu is
// held.
func (g *Gate) overLocked() bool { return g.backlog > g.o.Backlog }

// Backlog is the last reading.
func (g *Gate) Backlog() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.backlog
}

// Wait returns at once while the backlog is at most the limit; otherwise
// when it falls to the limit, after MaxDelay, or when ctx ends, whichever
// comes first. It returns how long it waited.
func (g *Gate) Wait(ctx context.Context) time.Duration {
	if !g.Enabled() {
		return 0
	}
	g.mu.Lock()
	over, open := g.overLocked(), g.open
	g.mu.Unlock()
	if !over {
		return 0
	}
	start := time.Now()
	t := time.NewTimer(g.o.MaxDelay)
	defer t.Stop()
	outcome := "released"
	select {
	case <-open:
	case <-t.C:
		outcome = "timeout"
	case <-ctx.Done():
		outcome = "cancelled"
	}
	d := time.Since(start)
	if g.waits != nil {
		g.waits.Record(ctx, d.Seconds(), metric.WithAttributes(attribute.String("outcome", outcome)))
	}
	return d
}

// JetStreamBacklog counts the backlog from the durable consumers of the
// scheduler (SLUICE_MSGS) and of the deliverers (SLUICE_JOBS, one per
// priority class): the sum of their NumPending. A consumer that does not
// exist yet (its service has not started) counts as nothing.
func JetStreamBacklog(js jetstream.JetStream) Counter {
	type ref struct{ stream, name string }
	refs := []ref{{wire.StreamMessages, wire.ConsumerScheduler}}
	for _, c := range wire.Classes {
		refs = append(refs, ref{wire.StreamJobs, wire.DelivererConsumer(c)})
	}
	return func(ctx context.Context) (uint64, error) {
		var total uint64
		for _, r := range refs {
			cons, err := js.Consumer(ctx, r.stream, r.name)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("consumer %s of %s: %w", r.name, r.stream, err)
			}
			// js.Consumer has just fetched the consumer's info.
			total += cons.CachedInfo().NumPending
		}
		return total, nil
	}
}
