package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natsconn"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Options say what a service process needs around its own work.
type Options struct {
	// Service is the short name: ingress, scheduler, deliverer, bouncer.
	Service   string
	NATS      config.NATS
	Queue     config.Queue
	Telemetry config.Telemetry
	Host
}

// Host is what runs a service gives it besides its configuration: its own
// process (the service's main), or sluice-local, which runs all four
// services in the process of its embedded NATS server.
type Host struct {
	// OTel is what the standard OTEL_* variables say; main reads them with
	// telemetry.EnvFrom(os.LookupEnv).
	OTel telemetry.Env
	// InProcess, when set, is the NATS server the service connects to
	// in-process (nats.InProcessServer) instead of over TCP: the same
	// protocol, streams and consumers, without a socket or a system call
	// per message.
	InProcess nats.InProcessConnProvider
	// LogOutput receives the service's JSON log; nil is standard error.
	LogOutput io.Writer
}

// Process is the plumbing every Sluice service shares: its telemetry, its
// metrics and health endpoint, and its NATS connection with the streams
// provisioned. Start sets it up in that order; Stop takes it down in
// reverse, once the service itself has stopped.
type Process struct {
	Tel *telemetry.Telemetry
	Log *slog.Logger
	NC  *nats.Conn
	JS  jetstream.JetStream

	metrics     *http.Server
	metricsAddr string
	// phase is what the process is doing while it is not ready yet
	// ("connecting to NATS", ...); empty once the service runs.
	phase atomic.Pointer[string]
	// check is the service's own readiness, set by Ready.
	check atomic.Pointer[func() error]
}

// GCPercent is the garbage collector's target (GOGC) of a service process
// when the GOGC variable does not set one. A service's live heap is small
// (tens of MiB) and almost all of its allocations die with the message that
// made them, so Go's default of 100 collects far more often than memory
// requires; 200 halves that work for a few more MiB of heap.
const GCPercent = 200

// TuneGC applies GCPercent unless the environment sets GOGC.
func TuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(GCPercent)
	}
}

// Start sets up telemetry, serves the metrics endpoint (so /healthz answers
// and /readyz says what the service waits for from the first moment),
// connects to NATS and provisions the streams. It waits for NATS as long as
// ctx allows: a service never exits because NATS is slow, absent or
// electing; it returns an error only for bad configuration (a listener that
// cannot be opened, refused credentials, a stream configuration JetStream
// rejects) or when ctx ends. On error, what was set up is taken down again.
// It applies TuneGC first.
func Start(ctx context.Context, o Options) (*Process, error) {
	TuneGC()
	tel, err := telemetry.Setup(ctx, o.Service, o.OTel, o.LogOutput, o.Telemetry.LogLevel)
	if err != nil {
		return nil, err
	}
	p := &Process{Tel: tel, Log: tel.Logger}
	p.setPhase("connecting to NATS")
	if addr := o.Telemetry.MetricsListen; addr != "" {
		srv, err := p.Tel.Serve(addr, p.readiness)
		if err != nil {
			p.shutdownTelemetry()
			return nil, err
		}
		p.metrics, p.metricsAddr = srv, addr
	}
	var extra []nats.Option
	if o.InProcess != nil {
		extra = append(extra, nats.InProcessServer(o.InProcess))
	}
	p.NC, p.JS, err = natsconn.Connect(ctx, o.NATS, "sluice-"+o.Service, p.Log, extra...)
	if err != nil {
		p.stopMetrics()
		p.shutdownTelemetry()
		return nil, err
	}
	p.setPhase("provisioning streams")
	if err := p.Retry(ctx, "provision streams", func(ctx context.Context) error {
		return streams.Provision(ctx, p.JS, o.Queue)
	}); err != nil {
		p.stopMetrics()
		p.NC.Close()
		p.shutdownTelemetry()
		return nil, err
	}
	p.setPhase("starting " + o.Service)
	return p, nil
}

// Retry runs fn until it succeeds, fails for good or ctx ends, with backoff
// and progress logs (natsconn.Retry). Services wrap every JetStream call
// they make to start (consumers, buckets) in it, with fn building what it
// needs afresh on each attempt.
func (p *Process) Retry(ctx context.Context, what string, fn func(context.Context) error) error {
	return natsconn.Retry(ctx, p.Log, what, fn)
}

// Ready marks the service started: from now on /readyz answers 200 while
// the NATS connection is up and check (nil for none) reports no error.
func (p *Process) Ready(check func() error) {
	if check == nil {
		check = func() error { return nil }
	}
	p.check.Store(&check)
	p.phase.Store(nil)
}

func (p *Process) setPhase(s string) { p.phase.Store(&s) }

// readiness is what /readyz reports: the phase of a starting process, then
// the NATS connection and the service's own check.
func (p *Process) readiness() error {
	if ph := p.phase.Load(); ph != nil {
		return errors.New(*ph)
	}
	if err := p.NATSReady(); err != nil {
		return err
	}
	if c := p.check.Load(); c != nil {
		return (*c)()
	}
	return nil
}

// Readiness is what /readyz reports, for a host that has no endpoint.
func (p *Process) Readiness() error { return p.readiness() }

// MetricsAddr is the metrics address being served, or "".
func (p *Process) MetricsAddr() string { return p.metricsAddr }

// NATSReady is a readiness check: the NATS connection is up.
func (p *Process) NATSReady() error {
	if p.NC == nil || !p.NC.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return nil
}

func (p *Process) stopMetrics() error {
	if p.metrics == nil {
		return nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := p.metrics.Shutdown(sctx)
	p.metrics = nil
	return err
}

// Stop takes the process down after the service stopped: the metrics
// endpoint, then the NATS connection, drained so what it still holds is
// flushed (bounded by a few seconds), then telemetry, flushing spans. It
// logs "stopped", with the errors errs carries from the service's own stop.
func (p *Process) Stop(errs ...error) {
	errs = append(errs, p.stopMetrics())
	closed := make(chan struct{})
	p.NC.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := p.NC.Drain(); err != nil {
		errs = append(errs, err)
		p.NC.Close()
	} else {
		select {
		case <-closed:
		case <-time.After(3 * time.Second):
			p.NC.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		p.Log.Warn("stopped with errors", "err", err)
	} else {
		p.Log.Info("stopped")
	}
	p.shutdownTelemetry()
}

func (p *Process) shutdownTelemetry() {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Tel.Shutdown(sctx)
}

// Permanent marks an error of a service's start as one that waiting cannot
// cure (bad configuration), so Retry returns it at once.
func Permanent(err error) error { return natsconn.Permanent(err) }
