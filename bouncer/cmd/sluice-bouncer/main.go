// Command sluice-bouncer turns DSN requests from SLUICE_BOUNCES into RFC 3464
// delivery status notifications queued on SLUICE_MSGS.
//
// Usage:
//
//	sluice-bouncer [-config sluice.yaml]
//
// It reads the nats, queue and bouncer sections of the file (defaults apply
// without one), then environment overrides (SLUICE_*). A configuration error
// exits 2; SIGINT or SIGTERM finishes the requests in hand and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/sluice-mta/sluice/bouncer/service"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// stopGrace bounds how long shutdown waits for in-flight requests.
const stopGrace = 5 * time.Second

func main() { os.Exit(run()) }

func run() int {
	configPath := flag.String("config", "", "path of the Sluice YAML configuration file (optional)")
	flag.Parse()

	cfg := service.Default()
	if h, err := os.Hostname(); err == nil {
		cfg.Bouncer.Hostname = h
	}
	if err := config.Load(*configPath, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	ctx, stop := lifecycle.SignalContext()
	defer stop()
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "bouncer", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Bouncer.Telemetry, OTel: telemetry.EnvFrom(os.LookupEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-bouncer:", err)
		return 1
	}
	log := p.Log
	svc, err := service.New(cfg.Bouncer, cfg.Queue, p.JS, p.Tel.Tracer, p.Tel.Meter, log)
	if err == nil {
		err = svc.Start(ctx)
		if err == nil {
			if err = p.ServeMetrics(cfg.Bouncer.MetricsListen, p.NATSReady); err != nil {
				_ = svc.Close(context.Background())
			}
		}
	}
	if err != nil {
		log.Error("start", "err", err)
		p.Stop()
		return 1
	}
	log.Info("started", "metrics_listen", p.MetricsAddr(), "nats", p.NC.ConnectedUrlRedacted(),
		"hostname", cfg.Bouncer.Hostname, "consumer", service.ConsumerConfig().Durable)

	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	p.Stop(svc.Close(sctx))
	return 0
}
