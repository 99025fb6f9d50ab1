// Package daemon runs the scheduler as a long-running service: in its own
// process (cmd/sluice-scheduler) or beside the other services in the
// process of an embedded NATS server (sluice-local).
package daemon

import (
	"context"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/scheduler"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
)

// Load reads the configuration as the service's main does: the defaults,
// the file at path (none when empty), then SLUICE_* variables.
func Load(path string) (scheduler.Config, error) {
	cfg := scheduler.Default()
	err := config.Load(path, &cfg)
	return cfg, err
}

// Run runs the scheduler until ctx ends, then stops it gracefully.
func Run(ctx context.Context, cfg scheduler.Config, host lifecycle.Host) error {
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "scheduler", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Scheduler.Telemetry, Host: host})
	if err != nil {
		return err
	}
	if cfg.Scheduler.Instance == "" {
		h, _ := os.Hostname()
		cfg.Scheduler.Instance = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	// Start builds a fresh service on every attempt: one that failed
	// half-way (a consumer not created while the cluster elects) is closed
	// and forgotten.
	var svc *scheduler.Service
	err = p.Retry(ctx, "start the scheduler", func(ctx context.Context) error {
		s, err := scheduler.New(cfg, p.JS, p.Tel.Tracer, p.Tel.Meter, p.Log)
		if err != nil {
			return lifecycle.Permanent(err)
		}
		if err := s.Start(ctx); err != nil {
			_ = s.Close()
			return err
		}
		svc = s
		return nil
	})
	if err != nil {
		p.Stop()
		return err
	}
	p.Ready(svc.Ready)
	p.Log.Info("started", "nats", p.NC.ConnectedUrlRedacted(), "metrics", p.MetricsAddr(),
		"retry_min", cfg.Scheduler.Retry.Min.String(), "retry_max", cfg.Scheduler.Retry.Max.String(),
		"priority_rules", len(cfg.Scheduler.PriorityRules))

	<-ctx.Done()
	p.Log.Info("stopping")
	p.Stop(svc.Close())
	return nil
}
