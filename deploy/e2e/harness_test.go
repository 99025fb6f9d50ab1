// Package e2e runs the whole system as production does — the four service
// binaries as separate processes on an embedded JetStream server — against
// real SMTP destinations and an in-process DNS server, and checks what
// arrives. These are the proofs of the pipeline.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/freeport"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"github.com/sluice-mta/sluice/ingress/cmd/sluice-ingress",
		"github.com/sluice-mta/sluice/scheduler/cmd/sluice-scheduler",
		"github.com/sluice-mta/sluice/deliverer/cmd/sluice-deliverer",
		"github.com/sluice-mta/sluice/bouncer/cmd/sluice-bouncer")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the service binaries failed:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// The cluster tests run nats-server processes of the version the
	// services are built against (the module's main package).
	cmd = exec.Command("go", "build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building nats-server failed:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// world is one running system with its surroundings: a DNS server, the
// recipients' mail server (dest.test, found by MX) and the senders' mail
// server (sender.test, where DSNs arrive, found by a static route).
type world struct {
	t       testing.TB
	st      *stack.Stack
	dns     *dnstest.Server
	dest    *capture.Server
	senders *capture.Server
	smtp    string
}

type worldOpts struct {
	lifetime   string
	destRcpt   capture.RcptFunc
	destDelay  time.Duration
	deliverers int
	instances  map[string]int // of the scheduler, bouncer and ingress (stack.Options.Instances)
	config     map[string]map[string]any
	env        []string
	jaeger     bool // start bin/jaeger next to the services
	inProcess  bool // run the services in the test process (stack.Options.InProcess)
	// cluster, when set, is the NATS cluster the services use (with
	// queue.replicas 3, or 1 on a single node) instead of an embedded
	// server; newWorld then waits for every service to be ready rather
	// than for SMTP alone.
	cluster *cluster.Cluster
}

func newWorld(t testing.TB, o worldOpts) *world {
	t.Helper()
	w := &world{t: t}
	w.dns = dnstest.Start(t)
	var err error
	w.dest, err = capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx1.dest.test", Rcpt: o.destRcpt, Delay: o.destDelay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.dest.Close() })
	w.senders, err = capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx.sender.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.senders.Close() })
	_, destPort, _ := strings.Cut(w.dest.Addr, ":")
	w.dns.MustAdd(t,
		"dest.test. 60 IN MX 10 mx1.dest.test.",
		"mx1.dest.test. 60 IN A 127.0.0.1",
	)
	smtpAddr, _ := freeport.Addr()
	natsAddr, _ := freeport.Addr()
	w.smtp = smtpAddr
	if o.lifetime == "" {
		o.lifetime = "1h"
	}
	port, _ := strconv.Atoi(destPort)
	cfg := map[string]map[string]any{
		"queue":     {"lifetime": o.lifetime},
		"ingress":   {"listen": smtpAddr, "hostname": "sluice.test"},
		"scheduler": {"retry": map[string]any{"min": "1s", "max": "2s", "jitter": 0.1}},
		"deliverer": {
			"hostname":    "sluice.test",
			"dns_server":  w.dns.Addr,
			"dns_timeout": "1s",
			"smtp_port":   port,
			"routes":      map[string]any{"sender.test": w.senders.Addr},
			"ack_wait":    "5s",
		},
		"bouncer": {"hostname": "sluice.test"},
	}
	var natsURL string
	if o.cluster != nil {
		natsURL = o.cluster.URLs()
		if len(o.cluster.Nodes) >= 3 {
			cfg["queue"]["replicas"] = 3
		}
	}
	for sec, kv := range o.config {
		for k, v := range kv {
			cfg[sec][k] = v
		}
	}
	dataDir := t.TempDir()
	var jaegerBin, jaegerCfg, jaegerQuery, jaegerOTLP string
	if o.jaeger {
		jaegerBin, _ = filepath.Abs("../../bin/jaeger")
		jaegerCfg, _ = filepath.Abs("../jaeger/config.yaml")
		jaegerQuery, _ = freeport.Addr()
		jaegerOTLP, _ = freeport.Addr()
	}
	st, err := stack.Start(context.Background(), stack.Options{
		JaegerBin:    jaegerBin,
		JaegerConfig: jaegerCfg,
		JaegerQuery:  jaegerQuery,
		JaegerOTLP:   jaegerOTLP,
		BinDir:       binDir,
		DataDir:      dataDir,
		NATSListen:   natsAddr,
		NATSURL:      natsURL,
		Config:       cfg,
		Deliverers:   o.deliverers,
		Instances:    o.instances,
		Env:          o.env,
		InProcess:    o.inProcess,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.st = st
	t.Cleanup(func() {
		st.Close()
		// A step-down asked for an id stuck "in process"
		// (streams.InProcess) is rare and worth seeing also in a passing
		// run: go test prints these lines with -v (make test runs without
		// it, so there they show only beside a failure). A failed test
		// also gets the last lines of every log.
		for _, p := range st.Procs() {
			b, _ := os.ReadFile(p.Log())
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			for _, line := range lines {
				if strings.Contains(line, "refusing a message id as in process") || strings.Contains(line, "step-down failed") {
					t.Logf("%s: %s", p.Name, line)
				}
			}
			if t.Failed() {
				t.Logf("--- %s log (last lines):\n%s", p.Name, strings.Join(lines[max(len(lines)-40, 0):], "\n"))
			}
		}
	})
	if o.cluster != nil {
		// A fresh cluster elects its meta leader and creates five R3
		// streams while every service waits for it: that takes seconds on
		// a quiet machine and far longer on a loaded one.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := st.Ready(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w.waitSMTP(30 * time.Second)
	return w
}

// waitSMTP waits until the ingress answers.
func (w *world) waitSMTP(d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := smtp.Dial(w.smtp)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("ingress not answering on %s after %s: %v", w.smtp, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// send submits one message and returns the queue id from the 250 reply.
func (w *world) send(from string, to []string, data string) (string, error) {
	c, err := smtp.Dial(w.smtp)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return sendOn(c, from, to, data)
}

func sendOn(c *smtp.Client, from string, to []string, data string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	wc, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := wc.Write([]byte(data)); err != nil {
		return "", err
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		return "", err
	}
	f := strings.Fields(resp.StatusText)
	if len(f) == 0 {
		return "", fmt.Errorf("250 reply without queue id: %q", resp.StatusText)
	}
	return f[len(f)-1], nil
}

func message(subject, body string) string {
	return "From: a@sender.test\r\nTo: b@dest.test\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@sender.test>\r\n\r\n" + body + "\r\n"
}

// metric scrapes name from a process's /metrics and sums its series whose
// labels contain every filter (like `result="delivered"`).
func (w *world) metric(proc, name string, filters ...string) float64 {
	w.t.Helper()
	addr := w.st.Metrics[proc]
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		for _, f := range filters {
			if !strings.Contains(line, f) {
				continue next
			}
		}
		fs := strings.Fields(line)
		v, err := strconv.ParseFloat(fs[len(fs)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// eventually polls cond until it is true or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
