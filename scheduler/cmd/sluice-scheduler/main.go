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
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sluice-mta/sluice/scheduler"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natsconn"
	"github.com/sluice-mta/sluice/services/streams"
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

	tel, err := telemetry.Setup(ctx, "scheduler", telemetry.EnvFrom(os.LookupEnv), cfg.Scheduler.LogLevel)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	log := tel.Logger

	nc, js, err := natsconn.Connect(cfg.NATS, "sluice-scheduler", 30*time.Second, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		return err
	}

	if cfg.Scheduler.Instance == "" {
		host, _ := os.Hostname()
		cfg.Scheduler.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	svc, err := scheduler.New(cfg, js, tel.Tracer, tel.Meter, log)
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	var srv *http.Server
	if addr := cfg.Scheduler.MetricsListen; addr != "" {
		if srv, err = tel.Serve(addr, svc.Ready); err != nil {
			_ = svc.Close()
			return err
		}
	}
	log.Info("started", "nats", nc.ConnectedUrlRedacted(), "metrics", cfg.Scheduler.MetricsListen,
		"retry_min", cfg.Scheduler.Retry.Min.String(), "retry_max", cfg.Scheduler.Retry.Max.String(),
		"priority_rules", len(cfg.Scheduler.PriorityRules))

	<-ctx.Done()
	log.Info("stopping")
	var errs []error
	if err := svc.Close(); err != nil {
		errs = append(errs, err)
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, srv.Shutdown(sctx))
		cancel()
	}
	// Drain flushes what the connection still holds, then closes it.
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		errs = append(errs, err)
	} else {
		select {
		case <-closed:
		case <-time.After(3 * time.Second):
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.Warn("stopped with errors", "err", err)
	} else {
		log.Info("stopped")
	}
	return nil
}
