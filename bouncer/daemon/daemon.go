// Package daemon runs the bouncer as a long-running service: in its own
// process (cmd/sluice-bouncer) or beside the other services in the process
// of an embedded NATS server (sluice-local).
package daemon

import (
	"context"
	"os"
	"time"

	"github.com/sluice-mta/sluice/bouncer/service"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
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

	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	p.Stop(svc.Close(sctx))
	return nil
}
