package lifecycle

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/embedded"
	"github.com/sluice-mta/sluice/services/freeport"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// laterAddr is a free loopback address for a server that starts later,
// while a client keeps trying to connect to it: freeport's ports are below
// the ephemeral range, where freeAddr's port is, and which meanwhile an
// outgoing connection of another test (or the client's own, connected to
// itself) could take as its local port.
func laterAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := try(url)
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

func try(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func TestProcessStartServeStop(t *testing.T) {
	s := natstest.Start(t)
	addr := freeAddr(t)
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), Host: Host{OTel: telemetry.Env{}},
		Telemetry: config.Telemetry{MetricsListen: addr}}
	o.NATS.URL = s.ClientURL()
	p, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	// The streams are provisioned.
	if _, err := p.JS.Stream(context.Background(), wire.StreamJobs); err != nil {
		t.Fatalf("stream %s after Start: %v", wire.StreamJobs, err)
	}
	if code, body := get(t, "http://"+addr+"/healthz"); code != http.StatusOK || !strings.Contains(body, "ok") {
		t.Fatalf("healthz = %d %q", code, body)
	}
	// Connected and provisioned, but the service has not said it runs.
	if code, body := get(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: starting bouncer\n" {
		t.Fatalf("readyz before Ready = %d %q", code, body)
	}
	p.Ready(nil)
	if code, body := get(t, "http://"+addr+"/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("readyz after Ready = %d %q", code, body)
	}
	p.Stop()
	if !p.NC.IsClosed() {
		t.Fatal("NATS connection still open after Stop")
	}
	c := http.Client{Timeout: time.Second}
	if _, err := c.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("metrics endpoint still serving after Stop")
	}
}

// TestStartWaitsForNATS starts a service before its NATS server exists: it
// is alive and says what it waits for, logs its progress, and starts once
// the server comes up.
func TestStartWaitsForNATS(t *testing.T) {
	natsAddr, metrics := laterAddr(t), freeAddr(t)
	var log syncBuffer
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue(),
		Telemetry: config.Telemetry{MetricsListen: metrics}, Host: Host{LogOutput: &log}}
	o.NATS.URL = "nats://" + natsAddr
	type result struct {
		p   *Process
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := Start(context.Background(), o)
		done <- result{p, err}
	}()
	waitFor(t, func() bool {
		code, body, _ := try("http://" + metrics + "/readyz")
		return code == http.StatusServiceUnavailable && body == "not ready: connecting to NATS\n"
	})
	if code, _ := get(t, "http://"+metrics+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz while waiting for NATS = %d, want 200 (alive)", code)
	}
	waitFor(t, func() bool { return strings.Contains(log.String(), `"msg":"waiting for NATS"`) })
	select {
	case r := <-done:
		t.Fatalf("Start returned without a NATS server: %v", r.err)
	case <-time.After(time.Second):
	}
	ns, err := embedded.Start(embedded.Options{Listen: natsAddr, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Start did not return 30 s after the server came up")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.p.Stop()
	if _, err := r.p.JS.Stream(context.Background(), wire.StreamMessages); err != nil {
		t.Fatalf("stream %s after Start: %v", wire.StreamMessages, err)
	}
	r.p.Ready(nil)
	if code, _ := get(t, "http://"+metrics+"/readyz"); code != http.StatusOK {
		t.Fatalf("readyz once started = %d", code)
	}
	// Losing the server makes the service unready, not dead.
	ns.Shutdown()
	waitFor(t, func() bool {
		code, body := get(t, "http://"+metrics+"/readyz")
		return code == http.StatusServiceUnavailable && body == "not ready: not connected to NATS\n"
	})
}

func TestStartEndsWithItsContextNamingTheURL(t *testing.T) {
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue()}
	o.NATS.URL = "nats://127.0.0.1:1"
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "nats://127.0.0.1:1") || !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("want an error naming the NATS URL and the context, got %v", err)
	}
}

// TestStartRefusesBadStreamConfigAtOnce: replicas 3 on a single server is
// a configuration error JetStream names; waiting cannot cure it.
func TestStartRefusesBadStreamConfigAtOnce(t *testing.T) {
	s := natstest.Start(t)
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue()}
	o.NATS.URL = s.ClientURL()
	o.Queue.Replicas = 3
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Start(ctx, o)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "replicas > 1 not supported in non-clustered mode") {
		t.Fatalf("want JetStream's refusal before the deadline, got %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStartInProcess connects through the server's in-process connection
// (no socket: the URL is not even dialled) and logs where Host says.
func TestStartInProcess(t *testing.T) {
	ns, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	var log bytes.Buffer
	o := Options{Service: "scheduler", NATS: config.DefaultNATS(), Queue: config.DefaultQueue(),
		Host: Host{InProcess: ns.InProcess(), LogOutput: &log}}
	o.NATS.URL = "nats://127.0.0.1:1" // nothing listens there
	p, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.NC.ConnectedAddr(); got != "pipe" {
		t.Errorf("connected to %q, want the in-process pipe", got)
	}
	if _, err := p.JS.Stream(context.Background(), wire.StreamMessages); err != nil {
		t.Fatalf("stream %s after Start: %v", wire.StreamMessages, err)
	}
	p.Log.Info("hello")
	p.Stop()
	if !strings.Contains(log.String(), `"msg":"hello","service":"scheduler"`) || !strings.Contains(log.String(), `"msg":"stopped"`) {
		t.Fatalf("log output = %q, want the service's JSON lines", log.String())
	}
}
