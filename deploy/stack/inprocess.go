package stack

import (
	"context"
	"fmt"
	"io"
	"strings"

	bouncerd "github.com/sluice-mta/sluice/bouncer/daemon"
	delivererd "github.com/sluice-mta/sluice/deliverer/daemon"
	ingressd "github.com/sluice-mta/sluice/ingress/daemon"
	schedulerd "github.com/sluice-mta/sluice/scheduler/daemon"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// runFunc runs one service in this process until ctx ends, logging to log.
type runFunc func(ctx context.Context, log io.Writer) error

// inProcess prepares the named instance of svc to run in this process,
// connected to the embedded server in-process: the configuration file as
// its own process would read it (with the launcher's SLUICE_* variables),
// its metrics address, and the OTEL_* settings env gives. With
// Options.NATSURL it connects to those servers over TCP, as a process would.
func (s *Stack) inProcess(svc, name, metrics string, env []string) (runFunc, error) {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	host := lifecycle.Host{
		OTel: telemetry.EnvFrom(func(k string) (string, bool) { v, ok := vars[k]; return v, ok }),
	}
	if s.NATS != nil {
		host.InProcess = s.NATS.InProcess()
	}
	with := func(log io.Writer) lifecycle.Host { h := host; h.LogOutput = log; return h }
	path := s.ConfigPath
	switch svc {
	case "ingress":
		cfg, err := ingressd.Load(path)
		cfg.Ingress.MetricsListen = metrics
		if addr, ok := vars["SLUICE_INGRESS_LISTEN"]; ok {
			// A second ingress's own address (Options.Instances).
			cfg.Ingress.Listen = addr
		}
		return func(ctx context.Context, log io.Writer) error { return ingressd.Run(ctx, cfg, with(log)) }, err
	case "scheduler":
		cfg, err := schedulerd.Load(path)
		cfg.Scheduler.MetricsListen = metrics
		return func(ctx context.Context, log io.Writer) error { return schedulerd.Run(ctx, cfg, with(log)) }, err
	case "deliverer":
		cfg, err := delivererd.Load(path)
		cfg.Deliverer.MetricsListen, cfg.Deliverer.Instance = metrics, name
		return func(ctx context.Context, log io.Writer) error { return delivererd.Run(ctx, cfg, with(log)) }, err
	case "bouncer":
		cfg, err := bouncerd.Load(path)
		cfg.Bouncer.MetricsListen = metrics
		return func(ctx context.Context, log io.Writer) error { return bouncerd.Run(ctx, cfg, with(log)) }, err
	}
	return nil, fmt.Errorf("unknown service %q", svc)
}
