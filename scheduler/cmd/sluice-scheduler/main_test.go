package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestMain lets the test binary act as sluice-scheduler, so the tests run
// the real main (flags, exit codes, signals) as a process without a build.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_SCHEDULER_TEST_MAIN") == "1" {
		os.Args = append([]string{"sluice-scheduler"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func command(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SLUICE_SCHEDULER_TEST_MAIN=1", "OTEL_TRACES_EXPORTER=none")
	return cmd
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestRunsAndStopsOnSignal(t *testing.T) {
	srv := natstest.Start(t)
	metrics := freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := fmt.Sprintf(`nats: {url: %q, request_timeout: 5s}
queue: {replicas: 1, lifetime: 1h}
scheduler:
  retry: {min: 10s, max: 100s, jitter: 0.1}
  priority_rules:
    - {sender_domain: news.test, class: bulk}
  metrics_listen: %q
  log_level: info
ingress: {listen: "127.0.0.1:2525"}
`, srv.ClientURL(), metrics)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := command(t, "-config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	lines := make(chan map[string]any, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				lines <- rec
			}
		}
	}()
	waitFor := func(msg string) map[string]any {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case rec, ok := <-lines:
				if !ok {
					t.Fatalf("process ended before logging %q", msg)
				}
				if rec["msg"] == msg {
					return rec
				}
			case <-timeout:
				t.Fatalf("no %q log line", msg)
			}
		}
	}
	started := waitFor("started")
	if started["metrics"] != metrics || started["service"] != "scheduler" {
		t.Errorf("started line %v", started)
	}

	resp, err := http.Get("http://" + metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
	resp, err = http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Counters with no observations yet are not exported; the histogram
	// and process metrics are enough to see the endpoint serve ours.
	if !strings.Contains(string(body), "go_goroutines") {
		t.Errorf("/metrics does not look like Prometheus output")
	}

	// Both durable consumers exist.
	_, js := srv.Connect(t)
	for stream, name := range map[string]string{wire.StreamMessages: wire.ConsumerScheduler, wire.StreamResults: wire.ConsumerResults} {
		if _, err := js.Consumer(context.Background(), stream, name); err != nil {
			t.Errorf("consumer %s: %v", name, err)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor("stopped")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15s after SIGTERM")
	}
}

func TestConfigErrorExits2(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(cfg, []byte("scheduler: {retry: {min: 10s, max: 5s}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := command(t, "-config", cfg)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %s", err, out)
	}
	if !strings.Contains(string(out), "scheduler.retry.max") {
		t.Errorf("error does not name the field: %s", out)
	}
}
