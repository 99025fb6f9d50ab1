// Command sluice-ingress is Sluice's SMTP ingress: it accepts mail over SMTP
// and answers 250 only once the message is stored in JetStream.
//
//	sluice-ingress [-config sluice.yaml]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/smtpd"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natsconn"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func main() {
	path := flag.String("config", "", "configuration file (YAML); defaults apply without it")
	flag.Parse()
	cfg := ingress.Default()
	if err := config.Load(*path, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-ingress:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-ingress:", err)
		os.Exit(1)
	}
}

func run(cfg ingress.Config) error {
	ctx, stop := lifecycle.SignalContext()
	defer stop()

	tel, err := telemetry.Setup(ctx, "ingress", telemetry.EnvFrom(os.LookupEnv), cfg.Ingress.LogLevel)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	log := tel.Logger

	nc, js, err := natsconn.Connect(cfg.NATS, "sluice-ingress", 30*time.Second, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		return err
	}
	st, err := store.New(ctx, js, cfg.Queue, store.Options{RequestTimeout: cfg.NATS.RequestTimeout, Logger: log})
	if err != nil {
		return err
	}
	srv, err := smtpd.New(smtpd.Options{Settings: cfg.Ingress, Store: st, Tracer: tel.Tracer, Meter: tel.Meter, Logger: log})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}

	var metricsSrv *http.Server
	metricsAddr := ""
	if cfg.Ingress.MetricsListen != "" {
		metricsSrv, err = tel.Serve(cfg.Ingress.MetricsListen, func() error {
			if !nc.IsConnected() {
				return errors.New("not connected to NATS")
			}
			return nil
		})
		if err != nil {
			_ = srv.Close()
			return err
		}
		metricsAddr = cfg.Ingress.MetricsListen
	}
	log.Info("started", "smtp_listen", addrString(srv.ListenerAddr(smtpd.ListenerSMTP)),
		"submission_listen", addrString(srv.ListenerAddr(smtpd.ListenerSubmission)),
		"submissions_listen", addrString(srv.ListenerAddr(smtpd.ListenerSubmissions)),
		"metrics_listen", metricsAddr, "hostname", cfg.Ingress.Hostname)

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
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	if err := nc.Drain(); err != nil {
		log.Warn("nats drain", "err", err)
	}
	log.Info("stopped")
	return nil
}

// addrString is an address for the log, or "" for a listener not running.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
