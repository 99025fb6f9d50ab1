// Package daemon runs the bouncer as a long-running service: in its own
// process (cmd/sluice-bouncer) or beside the other services in the process
// of an embedded NATS server (sluice-local).
package daemon

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/bouncer/service"
	"github.com/sluice-mta/sluice/bouncer/tlsrpt"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/streams"
)

// stopGrace bounds how long shutdown waits for in-flight requests.
const stopGrace = 5 * time.Second

// Load reads the configuration as the service's main does: the defaults
// (this host's name), the file at path (none when empty), then SLUICE_*
// variables.
func Load(path string) (service.Config, error) {
	cfg := service.Default()
	if h, err := os.Hostname(); err == nil {
		cfg.Bouncer.Hostname = h
	}
	err := config.Load(path, &cfg)
	return cfg, err
}

// Run runs the bouncer until ctx ends, then stops it, finishing the
// requests in hand.
func Run(ctx context.Context, cfg service.Config, host lifecycle.Host) error {
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "bouncer", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Bouncer.Telemetry, Host: host})
	if err != nil {
		return err
	}
	log := p.Log
	var svc *service.Service
	err = p.Retry(ctx, "start the bouncer", func(ctx context.Context) error {
		s, err := service.New(cfg.Bouncer, cfg.Queue, p.JS, p.Tel.Tracer, p.Tel.Meter, log)
		if err != nil {
			return lifecycle.Permanent(err)
		}
		if err := s.Start(ctx); err != nil {
			_ = s.Close(context.Background())
			return err
		}
		svc = s
		return nil
	})
	if err != nil {
		log.Error("start", "err", err)
		p.Stop()
		return err
	}
	p.Ready(svc.Ready)
	log.Info("started", "metrics_listen", p.MetricsAddr(), "nats", p.NC.ConnectedUrlRedacted(),
		"hostname", cfg.Bouncer.Hostname, "consumer", service.ConsumerConfig().Durable)

	var reports sync.WaitGroup
	if tr := cfg.Bouncer.TLSReports; tr.Enabled {
		reports.Go(func() { runTLSReports(ctx, p, cfg) })
	}

	<-ctx.Done()
	log.Info("stopping")
	reports.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	p.Stop(svc.Close(sctx))
	return nil
}

// runTLSReports sends the TLS-RPT report of each finished day until ctx
// ends (bouncer.tls_reports); every instance runs it, and the claims in
// the bucket make each report go once.
func runTLSReports(ctx context.Context, p *lifecycle.Process, cfg service.Config) {
	tr := cfg.Bouncer.TLSReports
	var rep *tlsrpt.Reporter
	err := p.Retry(ctx, "open the TLS report counts", func(ctx context.Context) error {
		kv, err := streams.TLSRPT(ctx, p.JS, cfg.Queue)
		if err != nil {
			return err
		}
		rep = tlsrpt.NewReporter(tlsrpt.Config{
			Params: tlsrpt.Params{Organization: tr.Organization, Contact: tr.Contact,
				Submitter: tr.SubmitterDomain(cfg.Bouncer.Hostname)},
			Hostname: cfg.Bouncer.Hostname, From: tr.From, DNSServer: tr.DNSServer,
		}, kv, p.JS, p.Log.With("part", "tls_reports"))
		return nil
	})
	if err != nil {
		return // ctx ended
	}
	interval := tr.Interval
	if interval == 0 {
		interval = time.Hour
	}
	p.Log.Info("tls reports", "submitter", tr.SubmitterDomain(cfg.Bouncer.Hostname), "interval", interval)
	rep.Run(ctx, time.Now, interval)
}
