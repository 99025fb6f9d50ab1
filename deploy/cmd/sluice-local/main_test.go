package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"gopkg.in/yaml.v3"

	delivererd "github.com/sluice-mta/sluice/deliverer/daemon"
	"github.com/sluice-mta/sluice/deploy/stack"
	"github.com/sluice-mta/sluice/services/freeport"
)

func TestParseFlags(t *testing.T) {
	l, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	// make run's defaults, as the README gives them.
	want := map[string]string{"ingress": "127.0.0.1:9101", "scheduler": "127.0.0.1:9102", "deliverer": "127.0.0.1:9103", "bouncer": "127.0.0.1:9104", "deliverer-1": "127.0.0.1:9111"}
	if got := metricsAddrs(l.metricsPort, l.deliverers); !reflect.DeepEqual(got, want) {
		t.Errorf("default metrics addresses %v, want %v", got, want)
	}
	if o := l.options("", nil); o.JaegerQuery != "127.0.0.1:16686" || o.JaegerOTLP != "127.0.0.1:4318" || o.ConfigFile != "" {
		t.Errorf("default Jaeger %s %s, config %q", o.JaegerQuery, o.JaegerOTLP, o.ConfigFile)
	}

	l, err = parseFlags([]string{"-metrics-port", "9201", "-deliverers", "2", "-jaeger-ui", "127.0.0.1:26686", "-jaeger-otlp", "127.0.0.1:24318", "-config", "my.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	o := l.options("", nil)
	want = map[string]string{"ingress": "127.0.0.1:9201", "scheduler": "127.0.0.1:9202", "deliverer": "127.0.0.1:9203", "bouncer": "127.0.0.1:9204", "deliverer-1": "127.0.0.1:9211", "deliverer-2": "127.0.0.1:9212"}
	if !reflect.DeepEqual(o.MetricsAddrs, want) {
		t.Errorf("metrics addresses %v, want %v", o.MetricsAddrs, want)
	}
	if o.JaegerQuery != "127.0.0.1:26686" || o.JaegerOTLP != "127.0.0.1:24318" || o.ConfigFile != "my.yaml" {
		t.Errorf("Jaeger %s %s, config %q", o.JaegerQuery, o.JaegerOTLP, o.ConfigFile)
	}
	if l, _ := parseFlags([]string{"-metrics-port", "0"}); l == nil || l.options("", nil).MetricsAddrs != nil {
		t.Errorf("-metrics-port 0 fixes metrics addresses")
	}

	// The shipped shaping file: in the generated configuration by its
	// absolute path; the default is skipped away from the repository's
	// root (here); a file given and missing is an error.
	if o := l.options("", nil); o.Config["deliverer"] != nil {
		t.Errorf("deliverer section %v away from the repository's root", o.Config["deliverer"])
	}
	l, err = parseFlags([]string{"-shaping-file", "../../shaping/providers.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("../../shaping/providers.yaml")
	if sh, _ := l.options("", nil).Config["deliverer"]["shaping"].(map[string]any); sh["file"] != abs {
		t.Errorf("deliverer.shaping %v, want file %s", sh, abs)
	}
	if _, err := parseFlags([]string{"-shaping-file", "missing.yaml"}); err == nil || !strings.Contains(err.Error(), "-shaping-file") {
		t.Errorf("missing -shaping-file: %v", err)
	}
	if _, err := parseFlags([]string{"-config", "my.yaml", "-shaping-file", "../../shaping/providers.yaml"}); err == nil {
		t.Error("-shaping-file accepted with -config")
	}

	for _, args := range [][]string{
		{"-config", "my.yaml", "-smtp", "127.0.0.1:2526"},
		{"-config", "my.yaml", "-route", "example.net=127.0.0.1:25"},
		{"-metrics-port", "65530"},
		{"-cluster", "2"},
		{"-cluster", "3", "-cluster-port", "65534"},
		{"-cluster", "3", "-monitor-port", "0"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// TestTwoInstancesOneFromAUserConfig runs two launchers' stacks side by
// side, as two users on one host would: the first generates its
// configuration; the second runs from a file a user wrote (the first's,
// edited), which the launcher uses as it is and does not overwrite. Each
// answers SMTP and metrics on its own ports, and the second delivers to
// the capture destination its file routes to.
func TestTwoInstancesOneFromAUserConfig(t *testing.T) {
	a := startInstance(t, []string{"-shaping-file", "../../shaping/providers.yaml"})
	generated, err := os.ReadFile(a.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	// Its deliverer runs with the shipped provider limits.
	if cfg, err := delivererd.Load(a.ConfigPath); err != nil {
		t.Fatal(err)
	} else if g := cfg.Deliverer.Shaping.Sites["google.com"]; g.MaxConnections != 10 {
		t.Errorf("generated configuration: google.com site %+v, want the shipped file's", g)
	}
	if want := filepath.Join(a.dataDir, "sluice.yaml"); a.ConfigPath != want {
		t.Errorf("generated configuration at %s, want %s", a.ConfigPath, want)
	}

	// The user's file: the generated one with another NATS server, SMTP
	// address, capture route and host name.
	var cfg map[string]map[string]any
	if err := yaml.Unmarshal(generated, &cfg); err != nil {
		t.Fatal(err)
	}
	natsB, smtpB, captureB := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg["nats"]["url"] = "nats://" + natsB
	cfg["ingress"]["listen"] = smtpB
	cfg["ingress"]["hostname"] = "mine.example"
	cfg["deliverer"]["routes"] = map[string]any{"example.test": captureB}
	mine, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mine.yaml")
	if err := os.WriteFile(file, mine, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startInstance(t, []string{"-config", file, "-nats", natsB, "-capture", captureB})

	if b.ConfigPath != file {
		t.Errorf("second instance reads %s, want %s", b.ConfigPath, file)
	}
	if _, err := os.Stat(filepath.Join(b.dataDir, "sluice.yaml")); !os.IsNotExist(err) {
		t.Errorf("a configuration was generated next to the user's: %v", err)
	}
	if got, _ := os.ReadFile(file); string(got) != string(mine) {
		t.Errorf("the user's file changed:\n%s", got)
	}
	if smtpB, err := b.ingressListen(); err != nil || smtpB != cfg["ingress"]["listen"] {
		t.Errorf("ingress address from the file: %q %v", smtpB, err)
	}
	if g := greeting(t, a.smtp); !strings.HasPrefix(g, "220 sluice.localhost ") {
		t.Errorf("first instance greets %q", g)
	}
	if g := greeting(t, smtpB); !strings.HasPrefix(g, "220 mine.example ") {
		t.Errorf("second instance greets %q, want its file's host name", g)
	}
	for _, in := range []*instance{a, b} {
		for _, svc := range []string{"ingress", "scheduler", "deliverer", "bouncer"} {
			addr := fmt.Sprintf("127.0.0.1:%d", in.metricsPort+map[string]int{"ingress": 0, "scheduler": 1, "deliverer": 2, "bouncer": 3}[svc])
			if in.Metrics[svc] != addr {
				t.Errorf("%s metrics at %s, want %s", svc, in.Metrics[svc], addr)
			}
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				t.Fatalf("%s metrics: %v", svc, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Each service's metrics name it (target_info's service_name).
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"sluice-`+svc+`"`) {
				t.Errorf("%s metrics at %s: %d, not the service's:\n%.500s", svc, addr, resp.StatusCode, body)
			}
		}
	}

	// Mail through the second instance lands in its capture directory.
	send(t, smtpB, "you@example.test", "Subject: mine\r\n\r\nhello\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		eml, _ := filepath.Glob(filepath.Join(b.dataDir, "capture", "*.eml"))
		if len(eml) == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d messages captured by the second instance, want 1", len(eml))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if eml, _ := filepath.Glob(filepath.Join(a.dataDir, "capture", "*.eml")); len(eml) != 0 {
		t.Errorf("%d messages captured by the first instance", len(eml))
	}
}

// instance is one launcher's stack in this process.
type instance struct {
	*stack.Stack
	*launch
	dataDir string
}

// startInstance starts the stack the command line args (plus a data
// directory, free ports and no Jaeger) asks for, and waits until it is
// ready.
func startInstance(t *testing.T, args []string) *instance {
	t.Helper()
	dataDir := t.TempDir()
	base := []string{"-data", dataDir, "-jaeger", "", "-metrics-port", fmt.Sprint(freePorts(t, 4))}
	if !contains(args, "-config") {
		base = append(base, "-smtp", freeAddr(t))
	}
	if !contains(args, "-nats") {
		base = append(base, "-nats", freeAddr(t))
	}
	if !contains(args, "-capture") {
		base = append(base, "-capture", freeAddr(t))
	}
	l, err := parseFlags(append(base, args...))
	if err != nil {
		t.Fatal(err)
	}
	s, err := stack.Start(context.Background(), l.options("", slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return &instance{Stack: s, launch: l, dataDir: dataDir}
}

func contains(args []string, flag string) bool {
	for _, a := range args {
		if a == flag {
			return true
		}
	}
	return false
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// freePorts returns the first of n consecutive loopback ports that were
// free a moment ago.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		addr := freeAddr(t)
		_, p, _ := net.SplitHostPort(addr)
		var first int
		fmt.Sscan(p, &first)
		ok := true
		for i := 1; i < n && ok; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", first+i))
			if err != nil {
				ok = false
				continue
			}
			ln.Close()
		}
		if ok {
			// Later calls of freeport.Addr must not hand out the others.
			for i := 1; i < n; i++ {
				freeAddr(t)
			}
			return first
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}

// greeting is the first line an SMTP server at addr sends.
func greeting(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	return strings.TrimSpace(string(buf[:n]))
}

// send submits one message over SMTP without TLS.
func send(t *testing.T, addr, to, msg string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("me@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// Without -service-procs no GOMAXPROCS is set (each service adapts its
// own); with it every service process gets that one, unless the environment
// sets one; in one process nothing changes.
func TestServiceEnv(t *testing.T) {
	base := []string{"PATH=/bin", "OTEL_X=1"}
	for _, args := range [][]string{nil, {"-processes"}, {"-service-procs", "3"}} {
		l, err := parseFlags(args)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.serviceEnv(base); !reflect.DeepEqual(got, base) {
			t.Errorf("%q: %v, want %v", args, got, base)
		}
	}
	l, err := parseFlags([]string{"-processes", "-service-procs", "3"})
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]string{}, base...), "GOMAXPROCS=3")
	if got := l.serviceEnv(base); !reflect.DeepEqual(got, want) {
		t.Errorf("-processes -service-procs 3: %v, want %v", got, want)
	}
	if got := l.options("", nil).Env; !slices.Contains(got, "GOMAXPROCS=3") {
		t.Errorf("the stack's environment lacks GOMAXPROCS=3: %v", got)
	}
	own := append(append([]string{}, base...), "GOMAXPROCS=6")
	if got := l.serviceEnv(own); !reflect.DeepEqual(got, own) {
		t.Errorf("GOMAXPROCS of the environment: %v, want %v", got, own)
	}
}
