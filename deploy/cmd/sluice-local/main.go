// Command sluice-local runs a whole Sluice system on this machine, for a first
// look and for development: `make run` builds the binaries and starts it. It
// starts an embedded single-node JetStream server, a capture destination that
// receives all mail for the test domain, and the four services, restarting
// any that dies, until Ctrl-C.
//
// By default the services run in this process, each with its own
// configuration, telemetry, metrics endpoint and log file, connected to the
// embedded server in-process: they still meet only through JetStream, but no
// NATS message costs a socket write and read, which on a small machine is a
// fifth to a third of the CPU a message takes. With -processes each service
// runs as a process of its binary, as production deploys them. Every
// process, the launcher's and each service's, runs on one P while it uses
// less than a CPU and on all of them when it needs more
// (lifecycle.AdaptProcs; -service-procs fixes the services' GOMAXPROCS).
//
// With -cluster 3 (`make cluster`) the embedded server is replaced by a
// JetStream cluster of three nats-server processes on loopback, every
// stream replicated on all three, so failover can be tried on one machine:
// kill -9 a node (or freeze it with kill -STOP) while mail flows, and
// nothing accepted is lost. A node that exits is started again after
// -node-restart.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
	ingressd "github.com/sluice-mta/sluice/ingress/daemon"
	"github.com/sluice-mta/sluice/services/lifecycle"
)

// embeddedMemoryLimit is the Go soft memory limit of this process (the
// embedded NATS server, and the services unless -processes) when GOMEMLIMIT
// does not set one. It is above what 4 KB and 100 KB loads reach (make
// bench's 4k-c50 peaks near 565 MiB since the ingress's in-flow control, so
// the limit does not make the collector run more there), and it bounds the
// 5 MB load, which filled any limit with the file store's 8 MiB block
// buffers: with 1 GiB it peaked at 1,022 MiB and was no faster (see the
// README's Performance, "The soft memory limit").
const embeddedMemoryLimit = 640 << 20

// launch is what the command line asks for.
type launch struct {
	bin, data, smtp, natsAddr, captureAddr, testDomain string
	deliverers                                         int
	processes, syncAlways                              bool
	jaeger, jaegerConfig, jaegerUI, jaegerOTLP         string
	pprofAddr                                          string
	clusterNodes, clusterPort, monitorPort             int
	natsServer                                         string
	nodeRestart                                        time.Duration
	routes                                             routeFlags
	// configFile is -config: the services read it instead of a generated
	// configuration.
	configFile string
	// shapingFile is -shaping-file, made absolute: the generated
	// configuration's deliverer.shaping.file, or "" for none.
	shapingFile string
	// metricsPort is the ingress's metrics port; the other services take
	// the next ones (see metricsAddrs). 0 picks free ports.
	metricsPort int
	// serviceProcs is -service-procs: GOMAXPROCS of each service process
	// with -processes; 0 sets none (each service adapts its own).
	serviceProcs int
}

// parseFlags reads the command line (without the program name).
func parseFlags(args []string) (*launch, error) {
	l := &launch{}
	fs := flag.NewFlagSet("sluice-local", flag.ContinueOnError)
	fs.StringVar(&l.bin, "bin", "bin", "directory with the sluice-* binaries")
	fs.StringVar(&l.data, "data", "data", "directory for JetStream files, logs and captured mail")
	fs.StringVar(&l.configFile, "config", "", "the services' configuration `FILE`, used as it is; without it one is generated in -data on every start (sluice.yaml: a starting point to copy), from -smtp, -route and the capture route of -test-domain")
	fs.StringVar(&l.smtp, "smtp", "127.0.0.1:2525", "SMTP address of the ingress (not with -config: its ingress.listen)")
	fs.StringVar(&l.natsAddr, "nats", "127.0.0.1:4222", "client address of the embedded NATS server")
	fs.StringVar(&l.captureAddr, "capture", "127.0.0.1:2626", "address of the capture destination")
	fs.StringVar(&l.testDomain, "test-domain", "example.test", "domain delivered to the capture destination")
	fs.IntVar(&l.deliverers, "deliverers", 1, "number of deliverers")
	fs.IntVar(&l.metricsPort, "metrics-port", 9101, "metrics port of the ingress on 127.0.0.1; the scheduler, deliverer and bouncer take the next three, and with -deliverers N deliverer-i takes this+9+i; 0 picks free ports")
	fs.BoolVar(&l.processes, "processes", false, "run each service as a process of its binary in -bin, as in production, instead of in this process")
	fs.IntVar(&l.serviceProcs, "service-procs", 0, "with -processes, GOMAXPROCS of each service process (0: each adapts its own to the CPU it uses; a GOMAXPROCS in the environment wins)")
	fs.BoolVar(&l.syncAlways, "sync-always", false, "fsync every JetStream write")
	fs.StringVar(&l.jaeger, "jaeger", "bin/jaeger", "Jaeger binary to start next to Sluice, if it exists (make jaeger builds it)")
	fs.StringVar(&l.jaegerConfig, "jaeger-config", "deploy/jaeger/config.yaml", "Jaeger configuration")
	fs.StringVar(&l.jaegerUI, "jaeger-ui", "127.0.0.1:16686", "address of Jaeger's UI and query API")
	fs.StringVar(&l.jaegerOTLP, "jaeger-otlp", "127.0.0.1:4318", "address of Jaeger's OTLP/HTTP receiver, where the services send their traces")
	fs.StringVar(&l.pprofAddr, "pprof", "", "serve Go profiles of this process (the embedded NATS server, and the services unless -processes) on this address, e.g. 127.0.0.1:6060")
	fs.IntVar(&l.clusterNodes, "cluster", 0, "run a JetStream cluster of this many nats-server processes (3 or 5), every stream with 3 replicas, instead of the embedded server; client ports start at -nats's, route ports at 6222, monitoring at 8222")
	fs.IntVar(&l.clusterPort, "cluster-port", clusterRoutePort, "with -cluster, the first node's route port on 127.0.0.1; node i takes this+i-1")
	fs.IntVar(&l.monitorPort, "monitor-port", clusterMonitorPort, "with -cluster, the first node's monitoring port on 127.0.0.1; node i takes this+i-1")
	fs.StringVar(&l.natsServer, "nats-server", "bin/nats-server", "nats-server binary for -cluster (make cluster builds it)")
	fs.DurationVar(&l.nodeRestart, "node-restart", 10*time.Second, "with -cluster, start a node that exited (killed, crashed) again after this long; 0 leaves it down")
	fs.StringVar(&l.shapingFile, "shaping-file", defaultShapingFile, "shaping file of the generated configuration (deliverer.shaping.file): by default the provider limits shipped in the repository, skipped when run elsewhere; empty for none (not with -config: its deliverer.shaping.file)")
	fs.Var(&l.routes, "route", "extra static route `domain=host:port` (repeatable), e.g. for a benchmark sink (not with -config: its deliverer.routes)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if l.captureAddr == "" {
		return nil, errors.New("-capture: the capture destination needs an address")
	}
	if l.clusterNodes != 0 && l.clusterNodes != 3 && l.clusterNodes != 5 {
		return nil, fmt.Errorf("-cluster %d: want 3 or 5 nodes (every stream has 3 replicas)", l.clusterNodes)
	}
	for _, p := range []struct {
		flag string
		port int
	}{{"-cluster-port", l.clusterPort}, {"-monitor-port", l.monitorPort}} {
		if l.clusterNodes > 0 && (p.port <= 0 || p.port+l.clusterNodes > 65536) {
			return nil, fmt.Errorf("%s %d: out of range for %d nodes", p.flag, p.port, l.clusterNodes)
		}
	}
	if l.metricsPort < 0 || l.metricsPort+9+l.deliverers > 65535 {
		return nil, fmt.Errorf("-metrics-port %d: out of range", l.metricsPort)
	}
	if l.configFile != "" {
		// These flags only shape the generated configuration; silently
		// ignoring them would leave a user wondering.
		var conflict []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "smtp", "route", "shaping-file":
				conflict = append(conflict, "-"+f.Name)
			}
		})
		if len(conflict) > 0 {
			return nil, fmt.Errorf("%s: settings of the generated configuration; with -config, set them in %s (ingress.listen, deliverer.routes, deliverer.shaping.file)", strings.Join(conflict, ", "), l.configFile)
		}
		l.shapingFile = ""
	}
	if l.shapingFile != "" {
		path, err := filepath.Abs(l.shapingFile)
		if err == nil {
			_, err = os.Stat(path)
		}
		switch {
		case err == nil:
			l.shapingFile = path
		case l.shapingFile == defaultShapingFile:
			// Not started from the repository's root: no provider limits,
			// as with a configuration of one's own that names none.
			l.shapingFile = ""
		default:
			return nil, fmt.Errorf("-shaping-file: %w", err)
		}
	}
	return l, nil
}

// defaultShapingFile is the shaping file shipped with the repository, from
// its root (where make run starts sluice-local).
const defaultShapingFile = "deploy/shaping/providers.yaml"

// metricsAddrs are the services' fixed metrics addresses: the ingress on
// port, the scheduler, deliverer and bouncer on the next three, and
// deliverer-i (with more than one deliverer) on port+9+i. Port 0 fixes
// none: the stack picks free ports.
func metricsAddrs(port, deliverers int) map[string]string {
	if port == 0 {
		return nil
	}
	at := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	m := map[string]string{"ingress": at(port), "scheduler": at(port + 1), "deliverer": at(port + 2), "bouncer": at(port + 3)}
	for i := 1; i <= deliverers; i++ {
		m[fmt.Sprintf("deliverer-%d", i)] = at(port + 9 + i)
	}
	return m
}

// options are the stack's options; natsURL, when not empty, names the
// servers to use instead of the embedded one (the cluster's).
func (l *launch) options(natsURL string, log *slog.Logger) stack.Options {
	dataDir, _ := filepath.Abs(l.data)
	binDir, _ := filepath.Abs(l.bin)
	config := map[string]map[string]any{"ingress": {"listen": l.smtp}}
	if l.shapingFile != "" {
		config["deliverer"] = map[string]any{"shaping": map[string]any{"file": l.shapingFile}}
	}
	if l.clusterNodes > 0 {
		config["queue"] = map[string]any{"replicas": 3}
	}
	return stack.Options{
		BinDir:        binDir,
		DataDir:       dataDir,
		ConfigFile:    l.configFile,
		NATSListen:    l.natsAddr,
		NATSURL:       natsURL,
		SyncAlways:    l.syncAlways,
		CaptureListen: l.captureAddr,
		TestDomain:    l.testDomain,
		Deliverers:    l.deliverers,
		InProcess:     !l.processes,
		MetricsAddrs:  metricsAddrs(l.metricsPort, l.deliverers),
		Config:        config,
		Routes:        l.routes.m,
		Env:           l.serviceEnv(os.Environ()),
		JaegerBin:     l.jaeger,
		JaegerConfig:  l.jaegerConfig,
		JaegerQuery:   l.jaegerUI,
		JaegerOTLP:    l.jaegerOTLP,
		Log:           log,
	}
}

// serviceEnv is the environment of the services: env, and with -processes
// and -service-procs N a GOMAXPROCS=N for each service process unless env
// has one. Without either, every service adapts its own GOMAXPROCS to the
// CPU it uses (lifecycle.AdaptProcs).
func (l *launch) serviceEnv(env []string) []string {
	if !l.processes || l.serviceProcs <= 0 {
		return env
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			return env
		}
	}
	return append(slices.Clip(env), fmt.Sprintf("GOMAXPROCS=%d", l.serviceProcs))
}

// ingressListen is the SMTP address the services will listen on: -smtp, or
// with -config the file's ingress.listen.
func (l *launch) ingressListen() (string, error) {
	if l.configFile == "" {
		return l.smtp, nil
	}
	cfg, err := ingressd.Load(l.configFile)
	if err != nil {
		return "", fmt.Errorf("-config: %w", err)
	}
	return cfg.Ingress.Listen, nil
}

func main() {
	l, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "sluice-local:", err)
		os.Exit(2)
	}
	smtp, err := l.ingressListen()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-local:", err)
		os.Exit(2)
	}

	// The embedded NATS server runs in this process: the same collector
	// target as the services, and a soft memory limit, because the
	// server's heap (block caches, duplicate windows) is far larger than
	// a service's and would otherwise triple with GOGC=200.
	lifecycle.TuneGC()
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(embeddedMemoryLimit)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if l.pprofAddr != "" {
		// net/http/pprof registers on the default mux.
		go func() { log.Error("pprof", "err", http.ListenAndServe(l.pprofAddr, nil)) }()
	}
	dataDir, _ := filepath.Abs(l.data)
	binDir, _ := filepath.Abs(l.bin)
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)
	lifecycle.AdaptProcs(ctx)

	var nodes *cluster.Cluster
	if l.clusterNodes > 0 {
		var err error
		nodes, err = startCluster(l.natsServer, filepath.Join(dataDir, "cluster"), l.natsAddr, l.clusterNodes, l.clusterPort, l.monitorPort, l.syncAlways)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sluice-local:", err)
			os.Exit(1)
		}
		defer stopCluster(nodes)
	}

	natsURL := ""
	if nodes != nil {
		natsURL = nodes.URLs()
	}
	s, err := stack.Start(ctx, l.options(natsURL, log))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-local:", err)
		stopCluster(nodes)
		os.Exit(1)
	}
	if nodes != nil {
		// A fresh cluster elects its leaders and the services create
		// their replicated streams: say so rather than print an address
		// that answers nothing yet.
		fmt.Fprintf(os.Stderr, "waiting for the %d-node cluster and the services to be ready...\n", len(nodes.Nodes))
		if err := s.Ready(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "sluice-local:", err)
		}
	}
	printBanner(s, smtp, l.testDomain, dataDir, l.routes.m, l.configFile != "")
	if nodes != nil {
		printCluster(nodes, l.nodeRestart, dataDir)
	}
	if l.processes {
		fmt.Printf("  Services       processes of %s/sluice-{ingress,scheduler,deliverer,bouncer}\n", binDir)
	} else if nodes != nil {
		fmt.Printf("  Services       in this process, connected to the cluster over TCP (-processes: one process each)\n")
	} else {
		fmt.Printf("  Services       in this process, on in-process NATS connections (-processes: one process each)\n")
	}
	if s.Jaeger != nil {
		fmt.Printf("  Traces         http://%s  (Jaeger; pick service sluice-ingress, or search by tag sluice.queue_id=<id from the 250 reply>)\n", s.JaegerUI)
	} else {
		fmt.Printf("  Traces         Jaeger is not built: run `make jaeger` once (a few minutes), then `make run` again\n")
	}
	fmt.Print("\nCtrl-C stops everything.\n\n")

	// Supervise: restart a process that exits while we are running, as a
	// container orchestrator would.
	var wg sync.WaitGroup
	if nodes != nil && l.nodeRestart > 0 {
		for _, n := range nodes.Nodes {
			wg.Add(1)
			go func() { defer wg.Done(); superviseNode(ctx, n, l.nodeRestart, log) }()
		}
	}
	for _, p := range s.Procs() {
		wg.Add(1)
		go func(p *stack.Proc) {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-p.Done():
				}
				if ctx.Err() != nil {
					return
				}
				log.Warn("service exited; restarting in 1s", "service", p.Name, "exit", p.ExitCode(), "log", p.Log())
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				if err := p.Start(); err != nil {
					log.Error("restart failed", "service", p.Name, "err", err)
					return
				}
			}
		}(p)
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "\nstopping Sluice...")
	s.Close()
	wg.Wait()
}

func printBanner(s *stack.Stack, smtp, testDomain, dataDir string, routes map[string]string, userConfig bool) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, p); err == nil {
				return r
			}
		}
		return p
	}
	configNote := rel(s.ConfigPath) + "   (yours, from -config)"
	if !userConfig {
		configNote = rel(s.ConfigPath) + "   (generated on every start: copy it, change it, and pass -config FILE)"
	}
	delivererMetrics := s.Metrics["deliverer"]
	if delivererMetrics == "" {
		delivererMetrics = s.Metrics["deliverer-1"] + " (and on)"
	}
	fmt.Printf(`
Sluice is running.

  Send mail to   smtp://%[1]s   (no auth from loopback; e.g.
                 swaks --server %[1]s --from me@example.com --to you@%[2]s
                 any SMTP client works)
  %-14[2]s delivered to the local capture server %[3]s;
                 each message lands as a file in %[4]s/
  other domains  go to their real MX on port 25
  Logs (JSON)    %[5]s/{ingress,scheduler,deliverer,bouncer}.log
                 e.g. tail -f %[5]s/deliverer.log
  Metrics        http://%[6]s/metrics (ingress)  %[10]s scheduler  %[11]s deliverer  %[12]s bouncer
  Queue          bin/sluice -server %[7]s queue list   (or stats, show <id>)
  NATS           %[7]s   JetStream files in %[8]s/
  Config         %[9]s
`, smtp, testDomain, s.Capture.Addr, rel(filepath.Join(dataDir, "capture")), rel(filepath.Join(dataDir, "logs")),
		s.Metrics["ingress"], s.NATSURL(), rel(jetStreamDir(s, dataDir)), configNote, s.Metrics["scheduler"], delivererMetrics, s.Metrics["bouncer"])
	for d, hp := range routes {
		fmt.Printf("  route          %s -> %s\n", d, hp)
	}
}

// routeFlags collects -route domain=host:port flags.
type routeFlags struct{ m map[string]string }

func (r *routeFlags) String() string { return fmt.Sprint(r.m) }

func (r *routeFlags) Set(v string) error {
	d, hp, ok := strings.Cut(v, "=")
	if !ok || d == "" || hp == "" {
		return fmt.Errorf("want domain=host:port, got %q", v)
	}
	if r.m == nil {
		r.m = map[string]string{}
	}
	r.m[strings.ToLower(d)] = hp
	return nil
}
