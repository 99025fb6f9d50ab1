package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
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
	// ConnectWait bounds the wait for NATS at start (default 30 s), for
	// services started together with their servers.
	ConnectWait time.Duration
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
// NATS connection with the streams provisioned, and its metrics endpoint.
// Start sets it up in that order; Stop takes it down in reverse, once the
// service itself has stopped.
type Process struct {
	Tel *telemetry.Telemetry
	Log *slog.Logger
	NC  *nats.Conn
	JS  jetstream.JetStream

	metrics     *http.Server
	metricsAddr string
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

// Start sets up telemetry, connects to NATS and provisions the streams. On
// error, what was set up is taken down again. It applies TuneGC first.
func Start(ctx context.Context, o Options) (*Process, error) {
	TuneGC()
	if o.ConnectWait <= 0 {
		o.ConnectWait = 30 * time.Second
	}
	tel, err := telemetry.Setup(ctx, o.Service, o.OTel, o.LogOutput, o.Telemetry.LogLevel)
	if err != nil {
		return nil, err
	}
	p := &Process{Tel: tel, Log: tel.Logger}
	var extra []nats.Option
	if o.InProcess != nil {
		extra = append(extra, nats.InProcessServer(o.InProcess))
	}
	p.NC, p.JS, err = natsconn.Connect(o.NATS, "sluice-"+o.Service, o.ConnectWait, p.Log, extra...)
	if err != nil {
		p.shutdownTelemetry()
		return nil, err
	}
	if err := streams.Provision(ctx, p.JS, o.Queue); err != nil {
		p.NC.Close()
		p.shutdownTelemetry()
		return nil, err
	}
	return p, nil
}

// ServeMetrics serves /metrics, /healthz (ready decides) and /debug/pprof
// on addr; an empty addr serves nothing.
func (p *Process) ServeMetrics(addr string, ready func() error) error {
	if addr == "" {
		return nil
	}
	srv, err := p.Tel.Serve(addr, ready)
	if err != nil {
		return err
	}
	p.metrics, p.metricsAddr = srv, addr
	return nil
}

// MetricsAddr is the metrics address being served, or "".
func (p *Process) MetricsAddr() string { return p.metricsAddr }

// NATSReady is a readiness check: the NATS connection is up.
func (p *Process) NATSReady() error {
	if !p.NC.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return nil
}

// Stop takes the process down after the service stopped: the metrics
// endpoint, then the NATS connection, drained so what it still holds is
// flushed (bounded by a few seconds), then telemetry, flushing spans. It
// logs "stopped", with the errors errs carries from the service's own stop.
func (p *Process) Stop(errs ...error) {
	if p.metrics != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, p.metrics.Shutdown(sctx))
		cancel()
	}
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
