// Package daemon runs a deliverer as a long-running service, with its admin
// API (the doctor endpoints of `sluice doctor`): in its own process
// (cmd/sluice-deliverer) or beside the other services in the process of an
// embedded NATS server (sluice-local).
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/miekg/dns"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/deliverer/doctor"
	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/deliverer/worker"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/lifecycle"
)

// Load reads the configuration as the service's main does: the defaults
// (this host's name), the file at path (none when empty), then SLUICE_*
// variables; an instance name and DNS server the configuration leaves empty
// become hostname-pid and the first nameserver of /etc/resolv.conf. A
// shaping file named by deliverer.shaping.file is read too, under the
// deliverer.shaping section (shaping.Config.File).
func Load(path string) (worker.Config, error) {
	cfg, err := load(path, shaping.DefaultConfig())
	if err != nil || cfg.Deliverer.Shaping.File == "" {
		return cfg, err
	}
	name := cfg.Deliverer.Shaping.File
	if !filepath.IsAbs(name) && path != "" {
		name = filepath.Join(filepath.Dir(path), name)
	}
	file, err := shaping.ReadFile(name)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	// The section again, over the file this time: what it sets wins.
	if cfg, err = load(path, file.Base()); err != nil {
		return cfg, err
	}
	cfg.Deliverer.Shaping = file.Under(cfg.Deliverer.Shaping)
	cfg.Deliverer.Shaping.File = name
	if err := cfg.Deliverer.Shaping.Validate(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// load is Load with shaping as what deliverer.shaping is decoded over.
func load(path string, shaping shaping.Config) (worker.Config, error) {
	cfg := worker.Default()
	host, _ := os.Hostname()
	cfg.Deliverer.Hostname = host
	cfg.Deliverer.Shaping = shaping
	if err := config.Load(path, &cfg); err != nil {
		return cfg, err
	}
	if cfg.Deliverer.Instance == "" {
		cfg.Deliverer.Instance = cfg.Deliverer.Hostname + "-" + strconv.Itoa(os.Getpid())
	}
	if cfg.Deliverer.DNSServer == "" {
		server, err := SystemResolver("/etc/resolv.conf")
		if err != nil {
			return cfg, fmt.Errorf("config: deliverer.dns_server: empty and %w", err)
		}
		cfg.Deliverer.DNSServer = server
	}
	return cfg, nil
}

// SystemResolver returns the first nameserver of a resolv.conf file.
func SystemResolver(path string) (string, error) {
	rc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", path, err)
	}
	if len(rc.Servers) == 0 {
		return "", fmt.Errorf("%s lists no nameserver", path)
	}
	return net.JoinHostPort(rc.Servers[0], rc.Port), nil
}

// Option changes how Run runs.
type Option func(*options)

type options struct {
	reload func() (worker.Config, error)
}

// WithReload makes SIGHUP read the configuration again with load and put
// its deliverer.shaping section in force without a restart, with the
// shaping file it names read again when load is Load (the other sections
// take effect at the next start).
func WithReload(load func() (worker.Config, error)) Option {
	return func(o *options) { o.reload = load }
}

// Run runs the deliverer and its admin API until ctx ends, then stops
// them gracefully: deliveries in progress get deliverer.shutdown_timeout.
func Run(ctx context.Context, cfg worker.Config, host lifecycle.Host, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	p, err := lifecycle.Start(ctx, lifecycle.Options{Service: "deliverer", NATS: cfg.NATS, Queue: cfg.Queue,
		Telemetry: cfg.Deliverer.Telemetry, Host: host})
	if err != nil {
		return err
	}
	log := p.Log
	var svc *worker.Service
	err = p.Retry(ctx, "start the deliverer", func(ctx context.Context) error {
		s, err := worker.New(cfg.Deliverer, worker.Deps{JS: p.JS, Tracer: p.Tel.Tracer, Meter: p.Tel.Meter, Logger: log})
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
		p.Stop()
		return err
	}
	api, err := startAdmin(ctx, p.NC, cfg.Deliverer, p.Tel.Meter, log)
	if err != nil {
		p.Stop(svc.Close(context.Background()))
		return err
	}
	// `sluice shaping`: any one deliverer answers for the fleet's state.
	if err := svc.ServeShaping(api.svc); err != nil {
		api.stop()
		p.Stop(svc.Close(context.Background()))
		return err
	}
	p.Ready(nil)
	log.Info("started", "instance", cfg.Deliverer.Instance, "hostname", cfg.Deliverer.Hostname,
		"metrics", p.MetricsAddr(), "dns_server", cfg.Deliverer.DNSServer, "nats", p.NC.ConnectedUrlRedacted(),
		"concurrency", cfg.Deliverer.Concurrency, "egress_ips", api.doctor.EgressIPs(), "egress_guessed", api.guessed,
		"admin_service", api.svc.Info().ID)

	if o.reload != nil {
		stopReload := reloadOnHangup(ctx, svc, o.reload, log)
		defer stopReload()
	}
	<-ctx.Done()
	log.Info("stopping", "in_flight", svc.InFlight())
	api.stop()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Deliverer.ShutdownTimeout)
	defer cancel()
	p.Stop(svc.Close(sctx))
	return nil
}

// adminAPI is the deliverer's nats micro service ("sluice-deliverer", one
// instance per process) with the doctor endpoints, and the background DNSBL
// monitor that keeps sluice_deliverer_dnsbl_listed current.
type adminAPI struct {
	svc     micro.Service
	doctor  *doctor.Doctor
	server  *doctor.Server
	guessed bool
	cancel  context.CancelFunc
	monitor sync.WaitGroup
	once    sync.Once
}

func startAdmin(ctx context.Context, nc *nats.Conn, s worker.Settings, meter metric.Meter, log *slog.Logger) (*adminAPI, error) {
	a := &adminAPI{}
	var egress []netip.Addr
	for _, ip := range s.EgressIPs {
		egress = append(egress, netip.MustParseAddr(ip).Unmap()) // validated by config
	}
	if len(egress) == 0 {
		// Nothing is sent: a UDP "connect" only asks the kernel which
		// source address it would use.
		guess, err := doctor.DetectEgress(doctor.EgressProbes)
		if err != nil {
			log.Warn("cannot guess the egress IP; set deliverer.egress_ips", "err", err)
		}
		egress, a.guessed = guess, len(guess) > 0
	}
	signer, err := s.DKIMSigner()
	if err != nil {
		return nil, err
	}
	a.doctor, err = doctor.New(doctor.Config{
		Instance: s.Instance, Hostname: s.Hostname, EgressIPs: egress, EgressGuessed: a.guessed,
		SendingDomains: s.SendingDomains, DNSBLZones: s.DNSBLZones, ProbeDomains: s.DoctorProbeDomains,
		Signer: signer, DNSServer: s.DNSServer, DNSTimeout: s.DNSTimeout, SMTPPort: s.SMTPPort, Routes: s.Routes,
		Meter: meter, TLSPolicy: s.TLSPolicy,
	})
	if err != nil {
		return nil, err
	}
	a.svc, err = micro.AddService(nc, micro.Config{
		Name:        admin.DelivererService,
		Version:     version,
		Description: "Sluice deliverer: delivery diagnostics from this host (sluice doctor)",
		Metadata:    map[string]string{admin.MetadataInstance: s.Instance, admin.MetadataHostname: s.Hostname},
	})
	if err != nil {
		return nil, fmt.Errorf("admin service: %w", err)
	}
	a.server, err = doctor.Serve(a.svc, a.doctor, log)
	if err != nil {
		_ = a.svc.Stop()
		return nil, err
	}
	mctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.monitor.Go(func() { a.doctor.MonitorDNSBL(mctx, s.DNSBLInterval, log) })
	return a, nil
}

// stop ends the admin API: no new requests, running checks cancelled. It
// is safe to call twice.
func (a *adminAPI) stop() {
	a.once.Do(func() {
		_ = a.svc.Stop()
		a.server.Close()
		a.cancel()
		a.monitor.Wait()
	})
}

// version is the admin service version reported by `nats micro ls`.
const version = "0.1.0"

// reloadOnHangup puts the shaping section of a freshly loaded
// configuration in force at every SIGHUP, until the returned function is
// called.
func reloadOnHangup(ctx context.Context, svc *worker.Service, load func() (worker.Config, error), log *slog.Logger) func() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-hup:
			case <-done:
				return
			case <-ctx.Done():
				return
			}
			cfg, err := load()
			if err == nil {
				err = svc.ReloadShaping(cfg.Deliverer.Shaping)
			}
			if err != nil {
				log.Error("configuration not reloaded; the shaping in force is unchanged", "err", err)
				continue
			}
			log.Info("deliverer.shaping reloaded")
		}
	})
	return func() {
		signal.Stop(hup)
		close(done)
		wg.Wait()
	}
}
