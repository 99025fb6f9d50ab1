package lifecycle

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/embedded"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func TestProcessStartServeStop(t *testing.T) {
	s := natstest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), Host: Host{OTel: telemetry.Env{}}}
	o.NATS.URL = s.ClientURL()
	p, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	// The streams are provisioned.
	if _, err := p.JS.Stream(context.Background(), wire.StreamJobs); err != nil {
		t.Fatalf("stream %s after Start: %v", wire.StreamJobs, err)
	}
	if err := p.ServeMetrics(addr, p.NATSReady); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ok") {
		t.Fatalf("healthz = %d %q", resp.StatusCode, body)
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

func TestStartFailsClearlyWithoutNATS(t *testing.T) {
	o := Options{Service: "bouncer", NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), ConnectWait: 300 * time.Millisecond}
	o.NATS.URL = "nats://127.0.0.1:1"
	_, err := Start(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "nats://127.0.0.1:1") {
		t.Fatalf("want an error naming the NATS URL, got %v", err)
	}
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
