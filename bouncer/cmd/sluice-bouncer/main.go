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
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/sluice-mta/sluice/bouncer/service"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natsconn"
	"github.com/sluice-mta/sluice/services/streams"
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

	tel, err := telemetry.Setup(ctx, "bouncer", telemetry.EnvFrom(os.LookupEnv), cfg.Bouncer.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log := tel.Logger
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()

	nc, js, err := natsconn.Connect(cfg.NATS, "sluice-bouncer", 30*time.Second, log)
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer nc.Close()
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		log.Error("provision", "err", err)
		return 1
	}

	svc, err := service.New(cfg.Bouncer, cfg.Queue, js, tel.Tracer, tel.Meter, log)
	if err != nil {
		log.Error("bouncer", "err", err)
		return 1
	}
	if err := svc.Start(ctx); err != nil {
		log.Error("start", "err", err)
		return 1
	}

	var metrics *http.Server
	if cfg.Bouncer.MetricsListen != "" {
		metrics, err = tel.Serve(cfg.Bouncer.MetricsListen, func() error {
			if !nc.IsConnected() {
				return errors.New("NATS is not connected")
			}
			return nil
		})
		if err != nil {
			log.Error("metrics", "err", err)
			_ = svc.Close(context.Background())
			return 1
		}
	}
	log.Info("started", "metrics_listen", cfg.Bouncer.MetricsListen, "nats", nc.ConnectedUrlRedacted(),
		"hostname", cfg.Bouncer.Hostname, "consumer", service.ConsumerConfig().Durable)

	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := svc.Close(sctx); err != nil {
		log.Warn("stop", "err", err)
	}
	if metrics != nil {
		_ = metrics.Shutdown(sctx)
	}
	// Drain flushes what is buffered and closes the connection; wait for it
	// within the grace period.
	if err := nc.Drain(); err != nil {
		log.Warn("drain", "err", err)
	}
	for !nc.IsClosed() && sctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	log.Info("stopped")
	return 0
}
