// Package daemon runs the SMTP ingress as a long-running service: in its
// own process (cmd/sluice-ingress) or beside the other services in the
// process of an embedded NATS server (sluice-local).
package daemon

import (
	"context"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/inflow"
	"github.com/sluice-mta/sluice/ingress/smtpd"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
)

// Load reads the configuration as the service's main does: the defaults,
// the file at path (none when empty), then SLUICE_* variables.
func Load(path string) (ingress.Config, error) {
	cfg := ingress.Default()
	err := config.Load(path, &cfg)
	return cfg, err
}

// Run runs the ingress until ctx ends, then stops it gracefully: no new
// sessions, and the ones open get ingress.shutdown_grace to finish.
func Run(ctx context.Context, cfg ingress.Config, host lifecycle.Host) error {
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "ingress", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Ingress.Telemetry, Host: host})
	if err != nil {
		return err
	}
	log := p.Log
	var st *store.Store
	err = p.Retry(ctx, "open the message store", func(ctx context.Context) error {
		st, err = store.New(ctx, p.JS, cfg.Queue, store.Options{RequestTimeout: cfg.NATS.RequestTimeout, RetryFor: cfg.Ingress.StoreTimeout, Logger: log})
		return err
	})
	if err != nil {
		p.Stop()
		return err
	}
	// Delivery behind: MAIL FROM waits (ingress.inflow_backlog and
	// inflow_delay), as Postfix's in_flow_delay.
	gate, err := inflow.New(inflow.JetStreamBacklog(p.JS), inflow.Options{Backlog: uint64(cfg.Ingress.InflowBacklog),
		MaxDelay: cfg.Ingress.InflowDelay, Timeout: cfg.NATS.RequestTimeout, Meter: p.Tel.Meter, Logger: log})
	if err != nil {
		p.Stop()
		return err
	}
	srv, err := smtpd.New(smtpd.Options{Settings: cfg.Ingress, Store: st, Inflow: gate, Tracer: p.Tel.Tracer, Meter: p.Tel.Meter, Logger: log})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		p.Stop()
		return err
	}
	// The gate reads the backlog from now until the server has stopped;
	// until its first reading nothing waits.
	gctx, stopGate := context.WithCancel(ctx)
	gateDone := make(chan struct{})
	go func() { defer close(gateDone); gate.Run(gctx) }()
	p.Ready(nil)
	log.Info("started", "smtp_listen", addrString(srv.ListenerAddr(smtpd.ListenerSMTP)),
		"submission_listen", addrString(srv.ListenerAddr(smtpd.ListenerSubmission)),
		"submissions_listen", addrString(srv.ListenerAddr(smtpd.ListenerSubmissions)),
		"metrics_listen", p.MetricsAddr(), "hostname", cfg.Ingress.Hostname)

	// SIGHUP re-reads the credentials and recipients files, as Postfix's
	// "postfix reload" would; they are also polled (reload_interval).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-hup:
			if err := srv.Reload(); err != nil {
				log.Error("reload", "err", err)
			}
		}
	}
	log.Info("stopping", "grace", cfg.Ingress.ShutdownGrace.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Ingress.ShutdownGrace)
	defer cancel()
	err = srv.Shutdown(sctx)
	stopGate()
	<-gateDone
	p.Stop(err)
	return nil
}

// addrString is an address for the log, or "" for a listener not running.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
