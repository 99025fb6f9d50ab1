// Package stack starts a whole Sluice system on one machine: an embedded
// single-node JetStream server (or, with Options.NATSURL, servers started
// elsewhere, such as a cluster), a capture destination for a test domain,
// and the four services, either as separate processes running the production
// binaries or (Options.InProcess) in this process, connected to the
// embedded server in-process. `make run` (cmd/sluice-local) and the
// end-to-end tests both use it, so what a newcomer runs is what the tests
// prove.
package stack

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/embedded"
	"github.com/sluice-mta/sluice/services/freeport"
)

// Services lists the service binaries in start order.
var Services = []string{"scheduler", "bouncer", "deliverer", "ingress"}

// Options configure a Stack.
type Options struct {
	// BinDir holds sluice-ingress, sluice-scheduler, sluice-deliverer and sluice-bouncer.
	BinDir string
	// DataDir holds JetStream files, logs, captured mail and the generated config.
	DataDir string
	// ConfigFile, when set, is the configuration every service reads,
	// as it is: no configuration is generated, and Config, Routes and the
	// route of TestDomain to the capture destination are not used (a file
	// that wants captured mail routes TestDomain to CaptureListen itself).
	// The metrics addresses (MetricsAddrs) still override the file's.
	ConfigFile string
	// NATSListen is the embedded server's client address.
	NATSListen string
	// NATSURL, when set, is a comma-separated list of NATS servers the
	// services connect to instead of an embedded server, which is then not
	// started (NATSListen and SyncAlways are not used): a cluster, for
	// example, with "queue": {"replicas": 3} in Config. Start does not
	// wait for these servers: the services wait for them.
	NATSURL string
	// SyncAlways makes JetStream fsync every write.
	SyncAlways bool
	// CaptureListen is the capture destination's address; empty disables it.
	CaptureListen string
	// CaptureOptions script the capture destination (tests).
	CaptureOptions capture.Options
	// TestDomain is routed to the capture destination.
	TestDomain string
	// Config is merged over the generated configuration, section by section
	// (e.g. {"deliverer": {"routes": {...}}}).
	Config map[string]map[string]any
	// Routes are static routes (domain -> host:port) added to the deliverer's.
	Routes map[string]string
	// Env is added to every service's environment (e.g. OTEL_*).
	Env []string
	// Deliverers is how many deliverer processes to start (default 1).
	Deliverers int
	// Instances is how many processes to start of the other services
	// ("scheduler", "bouncer", "ingress"; default 1). Two or more are
	// named "<service>-1", "<service>-2", ... as deliverers are. The
	// first ingress listens on the configuration's address, each other
	// one on a free loopback port (Stack.SMTP), as two MX or submission
	// hosts would.
	Instances map[string]int
	// InProcess runs the services in this process instead of as processes
	// of their binaries (BinDir is not used): each with its own
	// configuration, telemetry, metrics endpoint and log file as before,
	// but connected to the embedded NATS server in-process, which spares
	// every NATS message a socket write and read (with NATSURL, they
	// connect to those servers over TCP). Kill then stops a
	// service as Stop does. The trace exporters' OTEL_* settings are then
	// this process's environment, not Env.
	InProcess bool
	// MetricsAddrs fixes the metrics address of named processes; the others
	// get a free loopback port.
	MetricsAddrs map[string]string
	// JaegerBin, when it names an existing file, is started with
	// JaegerConfig before the services, which then export traces to it.
	JaegerBin    string
	JaegerConfig string
	// JaegerQuery and JaegerOTLP are its query (UI/API) and OTLP/HTTP
	// addresses; empty picks the defaults 127.0.0.1:16686 and :4318.
	JaegerQuery string
	JaegerOTLP  string
	// Log receives the stack's own messages.
	Log *slog.Logger
}

// Stack is a running system.
type Stack struct {
	opts Options
	// NATS is the embedded server; nil with Options.NATSURL.
	NATS       *embedded.Server
	Capture    *capture.Server
	ConfigPath string
	// Jaeger is the Jaeger process, nil when none was started.
	Jaeger *Proc
	// JaegerUI is Jaeger's query address (UI and API), when started.
	JaegerUI string
	// Ports of each service's metrics endpoint, by process name.
	Metrics map[string]string
	// SMTP is the listen address of each ingress after the first, by
	// process name ("ingress-2", ...), when Options.Instances asks for
	// more than one; the first listens on the configuration's address.
	SMTP map[string]string

	mu    sync.Mutex
	procs map[string]*Proc
	order []*Proc // in start order
}

// Proc is one service process, or one service running in this process
// (run is set).
type Proc struct {
	Name string
	bin  string
	args []string
	env  []string
	log  string
	run  runFunc

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	cancel context.CancelFunc // in-process run
	err    error              // of the last in-process run
}

// Start brings the system up and returns once every process has started.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Deliverers <= 0 {
		o.Deliverers = 1
	}
	if o.TestDomain == "" {
		o.TestDomain = "example.test"
	}
	dirs := []string{"logs", "capture"}
	if o.NATSURL == "" {
		dirs = append(dirs, "jetstream")
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(o.DataDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	s := &Stack{opts: o, procs: map[string]*Proc{}, Metrics: map[string]string{}, SMTP: map[string]string{}}
	if o.NATSURL == "" {
		ns, err := embedded.Start(embedded.Options{
			Listen: o.NATSListen, StoreDir: filepath.Join(o.DataDir, "jetstream"), SyncAlways: o.SyncAlways,
		})
		if err != nil {
			return nil, err
		}
		s.NATS = ns
	}
	if o.CaptureListen != "" {
		co := o.CaptureOptions
		if co.Dir == "" {
			co.Dir = filepath.Join(o.DataDir, "capture")
		}
		// Captured mail is read from the files; kept in memory too, it
		// would grow the launcher (and the embedded server with it) by
		// every message for as long as it runs.
		co.Forget = true
		co.Log = o.Log
		c, err := capture.Listen(o.CaptureListen, co)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("capture destination: %w", err)
		}
		s.Capture = c
	}
	if err := s.writeConfig(); err != nil {
		s.Close()
		return nil, err
	}
	if o.JaegerBin != "" {
		if _, err := os.Stat(o.JaegerBin); err == nil {
			if err := s.startJaeger(); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	if o.InProcess && s.Jaeger != nil {
		// The OTLP exporters read their endpoint from the environment,
		// and the services now share this process's.
		os.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+s.opts.JaegerOTLP)
		os.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	}
	for _, svc := range Services {
		n := 1
		switch {
		case svc == "deliverer":
			n = o.Deliverers
		case o.Instances[svc] > 1:
			n = o.Instances[svc]
		}
		for i := 0; i < n; i++ {
			name := svc
			if n > 1 {
				name = fmt.Sprintf("%s-%d", svc, i+1)
			}
			env := append([]string{}, o.Env...)
			if s.Jaeger != nil {
				env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+s.opts.JaegerOTLP, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
			}
			if addr, ok := o.MetricsAddrs[name]; ok {
				env = append(env, "SLUICE_METRICS_LISTEN="+addr)
				s.Metrics[name] = addr
			} else if addr, err := freeport.Addr(); err == nil {
				env = append(env, "SLUICE_METRICS_LISTEN="+addr)
				s.Metrics[name] = addr
			}
			if svc == "deliverer" {
				env = append(env, "SLUICE_DELIVERER_INSTANCE="+name)
			}
			if svc == "ingress" && i > 0 {
				addr, err := freeport.Addr()
				if err != nil {
					s.Close()
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				env = append(env, "SLUICE_INGRESS_LISTEN="+addr)
				s.SMTP[name] = addr
			}
			p := &Proc{
				Name: name,
				bin:  filepath.Join(o.BinDir, "sluice-"+svc),
				args: []string{"-config", s.ConfigPath},
				env:  env,
				log:  filepath.Join(o.DataDir, "logs", name+".log"),
			}
			if o.InProcess {
				run, err := s.inProcess(svc, name, s.Metrics[name], env)
				if err != nil {
					s.Close()
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				p.run = run
			}
			if err := p.Start(); err != nil {
				s.Close()
				return nil, err
			}
			s.procs[name] = p
			s.order = append(s.order, p)
		}
	}
	return s, nil
}

// NATSURL is the URL (or comma-separated URLs) the services connect to.
func (s *Stack) NATSURL() string {
	if s.NATS == nil {
		return s.opts.NATSURL
	}
	return s.NATS.ClientURL()
}

// Proc returns the named process ("ingress", "deliverer", "deliverer-2", ...).
func (s *Stack) Proc(name string) *Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[name]
}

// Procs returns every process in start order.
func (s *Stack) Procs() []*Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Proc(nil), s.order...)
}

// Close stops every process gracefully, then the capture server and NATS.
func (s *Stack) Close() {
	procs := s.Procs()
	// Stop in reverse start order: the ingress first, so nothing new comes in.
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(10 * time.Second)
	}
	if s.Jaeger != nil {
		s.Jaeger.Stop(5 * time.Second)
	}
	if s.Capture != nil {
		s.Capture.Close()
	}
	if s.NATS != nil {
		s.NATS.Shutdown()
	}
}

// writeConfig generates the services' configuration in the data
// directory, or, with Options.ConfigFile, uses that file.
func (s *Stack) writeConfig() error {
	o := s.opts
	if o.ConfigFile != "" {
		path, err := filepath.Abs(o.ConfigFile)
		if err != nil {
			return err
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("configuration file: %w", err)
		}
		s.ConfigPath = path
		return nil
	}
	host, _ := os.Hostname()
	cfg := map[string]map[string]any{
		"nats":      {"url": s.NATSURL()},
		"queue":     {"replicas": 1},
		"ingress":   {"listen": "127.0.0.1:2525", "hostname": "sluice.localhost"},
		"scheduler": {},
		"deliverer": {"hostname": host},
		"bouncer":   {"hostname": "sluice.localhost"},
	}
	routes := map[string]any{}
	if s.Capture != nil {
		routes[o.TestDomain] = s.Capture.Addr
	}
	for d, hp := range o.Routes {
		routes[d] = hp
	}
	if len(routes) > 0 {
		cfg["deliverer"]["routes"] = routes
	}
	for sec, kv := range o.Config {
		if cfg[sec] == nil {
			cfg[sec] = map[string]any{}
		}
		for k, v := range kv {
			cfg[sec][k] = v
		}
	}
	s.opts.Config = cfg
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	s.ConfigPath = filepath.Join(o.DataDir, "sluice.yaml")
	return os.WriteFile(s.ConfigPath, b, 0o644)
}

// Start starts the process, appending its output to its log file.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run != nil {
		return p.startInProcess()
	}
	if _, err := os.Stat(p.bin); err != nil {
		return fmt.Errorf("%s: binary missing (run `make build`): %w", p.Name, err)
	}
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		lf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// startInProcess runs the service in a goroutine; an error it ends with
// is written to its log, as a process's would be.
func (p *Proc) startInProcess() error {
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	p.cancel, p.done, p.err = cancel, done, nil
	go func() {
		defer close(done)
		err := p.run(ctx, lf)
		if err != nil {
			fmt.Fprintf(lf, "sluice-%s: %v\n", p.Name, err)
		}
		lf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
	}()
	return nil
}

// Done is closed when the current run of the process ends.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Log is the path of the process's log file.
func (p *Proc) Log() string { return p.log }

// Pid is the operating system's id of the running process, or 0 when it
// runs in this process or is not running.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run != nil || p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL, 5*time.Second)
}

// Freeze stops the process with SIGSTOP: its sockets stay open and it
// answers nothing, as a process stalled by its host. Thaw resumes it.
func (p *Proc) Freeze() error { return p.sendSignal(syscall.SIGSTOP) }

// Thaw resumes a frozen process with SIGCONT.
func (p *Proc) Thaw() error { return p.sendSignal(syscall.SIGCONT) }

func (p *Proc) sendSignal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if p.run != nil || cmd == nil || cmd.Process == nil {
		return fmt.Errorf("%s: not a running process", p.Name)
	}
	return cmd.Process.Signal(sig)
}

// Stop sends SIGTERM, waits up to grace, then kills.
func (p *Proc) Stop(grace time.Duration) {
	if !p.signal(syscall.SIGTERM, grace) {
		p.signal(syscall.SIGKILL, 5*time.Second)
	}
}

// ExitCode returns the exit code of the last run, or -1. A service run in
// this process "exits" 1 when it ended with an error, else 0.
func (p *Proc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run != nil {
		select {
		case <-p.done:
		default:
			return -1
		}
		if p.err != nil {
			return 1
		}
		return 0
	}
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *Proc) signal(sig syscall.Signal, wait time.Duration) bool {
	p.mu.Lock()
	cmd, done, cancel := p.cmd, p.done, p.cancel
	p.mu.Unlock()
	if cmd == nil && cancel == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
	}
	if p.run != nil {
		// A goroutine cannot be killed: every signal asks it to stop.
		cancel()
	} else {
		_ = cmd.Process.Signal(sig)
	}
	select {
	case <-done:
		return true
	case <-time.After(wait):
		return false
	}
}

// startJaeger starts Jaeger and waits until its query API answers.
func (s *Stack) startJaeger() error {
	o := &s.opts
	if o.JaegerQuery == "" {
		o.JaegerQuery = "127.0.0.1:16686"
	}
	if o.JaegerOTLP == "" {
		o.JaegerOTLP = "127.0.0.1:4318"
	}
	grpcQ, _ := freeport.Addr()
	grpcOTLP, _ := freeport.Addr()
	p := &Proc{
		Name: "jaeger",
		bin:  o.JaegerBin,
		args: []string{"--config", o.JaegerConfig},
		env: []string{
			"SLUICE_JAEGER_QUERY=" + o.JaegerQuery,
			"SLUICE_JAEGER_QUERY_GRPC=" + grpcQ,
			"SLUICE_JAEGER_OTLP_HTTP=" + o.JaegerOTLP,
			"SLUICE_JAEGER_OTLP_GRPC=" + grpcOTLP,
		},
		log: filepath.Join(o.DataDir, "logs", "jaeger.log"),
	}
	if err := p.Start(); err != nil {
		return err
	}
	s.Jaeger = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + o.JaegerQuery + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.JaegerUI = o.JaegerQuery
				return nil
			}
		}
		select {
		case <-p.Done():
			return fmt.Errorf("jaeger exited at start; see %s", p.log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not answering on %s after 30s; see %s", o.JaegerQuery, p.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
