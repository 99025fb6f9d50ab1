// Command sluice-deliverer runs a Sluice deliverer: it takes ready jobs from
// JetStream, delivers them over SMTP to the destinations' mail servers and
// reports each attempt. Any number of deliverers share the work.
//
// Usage:
//
//	sluice-deliverer [-config sluice.yaml]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/worker"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natsconn"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "configuration file (YAML); defaults apply without one")
	flag.Parse()

	cfg := worker.Default()
	host, _ := os.Hostname()
	cfg.Deliverer.Hostname = host
	if err := config.Load(*path, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if cfg.Deliverer.Instance == "" {
		cfg.Deliverer.Instance = cfg.Deliverer.Hostname + "-" + strconv.Itoa(os.Getpid())
	}
	if cfg.Deliverer.DNSServer == "" {
		server, err := systemResolver("/etc/resolv.conf")
		if err != nil {
			fmt.Fprintln(os.Stderr, "config: deliverer.dns_server: empty and", err)
			os.Exit(2)
		}
		cfg.Deliverer.DNSServer = server
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-deliverer:", err)
		os.Exit(1)
	}
}

// systemResolver returns the first nameserver of a resolv.conf file.
func systemResolver(path string) (string, error) {
	rc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", path, err)
	}
	if len(rc.Servers) == 0 {
		return "", fmt.Errorf("%s lists no nameserver", path)
	}
	return net.JoinHostPort(rc.Servers[0], rc.Port), nil
}

func run(cfg worker.Config) error {
	ctx, stop := lifecycle.SignalContext()
	defer stop()

	tel, err := telemetry.Setup(ctx, "deliverer", telemetry.EnvFrom(os.LookupEnv), cfg.Deliverer.LogLevel)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	log := tel.Logger

	nc, js, err := natsconn.Connect(cfg.NATS, "sluice-deliverer "+cfg.Deliverer.Instance, 30*time.Second, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		return err
	}

	svc, err := worker.New(cfg.Deliverer, worker.Deps{JS: js, Tracer: tel.Tracer, Meter: tel.Meter, Logger: log})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	metricsAddr := ""
	if cfg.Deliverer.MetricsListen != "" {
		srv, err := tel.Serve(cfg.Deliverer.MetricsListen, func() error {
			if !nc.IsConnected() {
				return errors.New("NATS disconnected")
			}
			return nil
		})
		if err != nil {
			_ = svc.Close(context.Background())
			return err
		}
		defer srv.Close()
		metricsAddr = cfg.Deliverer.MetricsListen
	}
	log.Info("started", "instance", cfg.Deliverer.Instance, "hostname", cfg.Deliverer.Hostname,
		"metrics", metricsAddr, "dns_server", cfg.Deliverer.DNSServer, "nats", nc.ConnectedUrlRedacted(),
		"concurrency", cfg.Deliverer.Concurrency)

	<-ctx.Done()
	log.Info("stopping", "in_flight", svc.InFlight())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Deliverer.ShutdownTimeout)
	defer cancel()
	if err := svc.Close(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	if err := nc.Drain(); err != nil {
		log.Warn("drain", "err", err)
	}
	log.Info("stopped")
	return nil
}
