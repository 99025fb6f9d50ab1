package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/services/natstest"
)

// TestMain lets the test binary act as sluice-ingress, so the process test
// below runs the real main without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_INGRESS_TEST_MAIN") == "1" {
		os.Args = append([]string{"sluice-ingress"}, strings.Fields(os.Getenv("SLUICE_INGRESS_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestProcessStartsServesAndStopsOnSIGTERM(t *testing.T) {
	ns := natstest.Start(t)
	cfg := filepath.Join(t.TempDir(), "sluice.yaml")
	yaml := "nats: {url: \"" + ns.ClientURL() + "\", request_timeout: 2s}\n" +
		"ingress: {listen: \"127.0.0.1:0\", hostname: mx.sluice.test, metrics_listen: \"127.0.0.1:0\"}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "SLUICE_INGRESS_TEST_MAIN=1", "SLUICE_INGRESS_TEST_ARGS=-config "+cfg, "OTEL_TRACES_EXPORTER=none")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	lines := make(chan map[string]any, 100)
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
	var addr string
	deadline := time.After(20 * time.Second)
	for addr == "" {
		select {
		case rec, ok := <-lines:
			if !ok {
				t.Fatal("process exited before it started")
			}
			if rec["msg"] == "started" {
				addr, _ = rec["smtp_listen"].(string)
			}
		case <-deadline:
			t.Fatal("no started line")
		}
	}

	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("alice@example.org", []string{"bob@example.test"}, strings.NewReader("Subject: hi\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines { // drain until the process closes stderr
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("process did not stop after SIGTERM")
	}
}
