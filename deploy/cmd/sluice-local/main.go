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
// runs as a process of its binary, as production deploys them.
//
// With -cluster 3 (`make cluster`) the embedded server is replaced by a
// JetStream cluster of three nats-server processes on loopback, every
// stream replicated on all three, so failover can be tried on one machine:
// kill -9 a node (or freeze it with kill -STOP) while mail flows, and
// nothing accepted is lost. A node that exits is started again after
// -node-restart.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
	"github.com/sluice-mta/sluice/services/lifecycle"
)

// embeddedMemoryLimit is the Go soft memory limit of this process (the
// embedded NATS server, and the services unless -processes) when GOMEMLIMIT
// does not set one. At 512 MiB, a burst of 20,000 4 KB messages from 50
// sessions (make bench's 4k-c50) peaked at the limit and the collector ran
// back to back; with 1 GiB the same load peaks near 630 MiB.
const embeddedMemoryLimit = 1 << 30

func main() {
	bin := flag.String("bin", "bin", "directory with the sluice-* binaries")
	data := flag.String("data", "data", "directory for JetStream files, logs and captured mail")
	smtp := flag.String("smtp", "127.0.0.1:2525", "SMTP address of the ingress")
	natsAddr := flag.String("nats", "127.0.0.1:4222", "client address of the embedded NATS server")
	captureAddr := flag.String("capture", "127.0.0.1:2626", "address of the capture destination")
	testDomain := flag.String("test-domain", "example.test", "domain delivered to the capture destination")
	deliverers := flag.Int("deliverers", 1, "number of deliverers")
	processes := flag.Bool("processes", false, "run each service as a process of its binary in -bin, as in production, instead of in this process")
	syncAlways := flag.Bool("sync-always", false, "fsync every JetStream write")
	jaeger := flag.String("jaeger", "bin/jaeger", "Jaeger binary to start next to Sluice, if it exists (make jaeger builds it)")
	jaegerConfig := flag.String("jaeger-config", "deploy/jaeger/config.yaml", "Jaeger configuration")
	pprofAddr := flag.String("pprof", "", "serve Go profiles of this process (the embedded NATS server, and the services unless -processes) on this address, e.g. 127.0.0.1:6060")
	clusterNodes := flag.Int("cluster", 0, "run a JetStream cluster of this many nats-server processes (3 or 5), every stream with 3 replicas, instead of the embedded server; client ports start at -nats's, route ports at 6222, monitoring at 8222")
	natsServer := flag.String("nats-server", "bin/nats-server", "nats-server binary for -cluster (make cluster builds it)")
	nodeRestart := flag.Duration("node-restart", 10*time.Second, "with -cluster, start a node that exited (killed, crashed) again after this long; 0 leaves it down")
	var routes routeFlags
	flag.Var(&routes, "route", "extra static route `domain=host:port` (repeatable), e.g. for a benchmark sink")
	flag.Parse()
	if *captureAddr == "" {
		fmt.Fprintln(os.Stderr, "sluice-local: -capture: the capture destination needs an address")
		os.Exit(2)
	}
	if *clusterNodes != 0 && *clusterNodes != 3 && *clusterNodes != 5 {
		fmt.Fprintf(os.Stderr, "sluice-local: -cluster %d: want 3 or 5 nodes (every stream has 3 replicas)\n", *clusterNodes)
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
	if *pprofAddr != "" {
		// net/http/pprof registers on the default mux.
		go func() { log.Error("pprof", "err", http.ListenAndServe(*pprofAddr, nil)) }()
	}
	dataDir, _ := filepath.Abs(*data)
	binDir, _ := filepath.Abs(*bin)
	ctx, stop := lifecycle.SignalContext()
	defer stop()
	lifecycle.HugePages(ctx)

	config := map[string]map[string]any{"ingress": {"listen": *smtp}}
	var nodes *cluster.Cluster
	if *clusterNodes > 0 {
		var err error
		nodes, err = startCluster(*natsServer, filepath.Join(dataDir, "cluster"), *natsAddr, *clusterNodes, *syncAlways)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sluice-local:", err)
			os.Exit(1)
		}
		defer stopCluster(nodes)
		config["queue"] = map[string]any{"replicas": 3}
	}

	metrics := map[string]string{"ingress": "127.0.0.1:9101", "scheduler": "127.0.0.1:9102", "deliverer": "127.0.0.1:9103", "bouncer": "127.0.0.1:9104"}
	for i := 1; i <= *deliverers; i++ {
		metrics[fmt.Sprintf("deliverer-%d", i)] = fmt.Sprintf("127.0.0.1:%d", 9110+i)
	}
	natsURL := ""
	if nodes != nil {
		natsURL = nodes.URLs()
	}
	s, err := stack.Start(ctx, stack.Options{
		BinDir:        binDir,
		DataDir:       dataDir,
		NATSListen:    *natsAddr,
		NATSURL:       natsURL,
		SyncAlways:    *syncAlways,
		CaptureListen: *captureAddr,
		TestDomain:    *testDomain,
		Deliverers:    *deliverers,
		InProcess:     !*processes,
		MetricsAddrs:  metrics,
		Config:        config,
		Routes:        routes.m,
		Env:           os.Environ(),
		JaegerBin:     *jaeger,
		JaegerConfig:  *jaegerConfig,
		Log:           log,
	})
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
	printBanner(s, *smtp, *testDomain, dataDir, routes.m)
	if nodes != nil {
		printCluster(nodes, *nodeRestart, dataDir)
	}
	if *processes {
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
	if nodes != nil && *nodeRestart > 0 {
		for _, n := range nodes.Nodes {
			wg.Add(1)
			go func() { defer wg.Done(); superviseNode(ctx, n, *nodeRestart, log) }()
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

func printBanner(s *stack.Stack, smtp, testDomain, dataDir string, routes map[string]string) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, p); err == nil {
				return r
			}
		}
		return p
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
  Metrics        http://%[6]s/metrics (ingress)  :9102 scheduler  :9103 deliverer  :9104 bouncer
  Queue          bin/sluice -server %[7]s queue list   (or stats, show <id>)
  NATS           %[7]s   JetStream files in %[8]s/
  Config         %[9]s
`, smtp, testDomain, s.Capture.Addr, rel(filepath.Join(dataDir, "capture")), rel(filepath.Join(dataDir, "logs")),
		s.Metrics["ingress"], s.NATSURL(), rel(jetStreamDir(s, dataDir)), rel(s.ConfigPath))
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
