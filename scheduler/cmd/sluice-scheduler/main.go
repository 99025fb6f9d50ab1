// Command sluice-scheduler runs Sluice's queue manager: it splits accepted
// messages into delivery jobs and applies deliverers' results (done, bounce,
// retry, expiry). Any number may run against the same NATS system.
//
// Usage:
//
//	sluice-scheduler [-config sluice.yaml]
//
// Without -config the defaults apply; SLUICE_* environment variables
// override the file (see the config packages).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-mta/sluice/scheduler"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "path of the YAML configuration file")
	flag.Parse()
	cfg := scheduler.Default()
	if err := config.Load(*path, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-scheduler:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-scheduler:", err)
		os.Exit(1)
	}
}

func run(cfg scheduler.Config) error {
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "scheduler", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Scheduler.Telemetry, OTel: telemetry.EnvFrom(os.LookupEnv)})
	if err != nil {
		return err
	}
	if cfg.Scheduler.Instance == "" {
		host, _ := os.Hostname()
		cfg.Scheduler.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	svc, err := scheduler.New(cfg, p.JS, p.Tel.Tracer, p.Tel.Meter, p.Log)
	if err == nil {
		err = svc.Start(ctx)
	}
	if err == nil {
		if err = p.ServeMetrics(cfg.Scheduler.MetricsListen, svc.Ready); err != nil {
			_ = svc.Close()
		}
	}
	if err != nil {
		p.Stop()
		return err
	}
	p.Log.Info("started", "nats", p.NC.ConnectedUrlRedacted(), "metrics", p.MetricsAddr(),
		"retry_min", cfg.Scheduler.Retry.Min.String(), "retry_max", cfg.Scheduler.Retry.Max.String(),
		"priority_rules", len(cfg.Scheduler.PriorityRules))

	<-ctx.Done()
	p.Log.Info("stopping")
	p.Stop(svc.Close())
	return nil
}
