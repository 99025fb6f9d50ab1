package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/natstest"
)

// build compiles the binary once per test run.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sluice-bouncer")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := build(t)

	t.Run("config error exits 2", func(t *testing.T) {
		cmd := exec.Command(bin, "-config", writeConfig(t, "bouncer: {hostname: \"bad host\"}\n"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Fatalf("exit: %v, want status 2", err)
		}
		if !strings.Contains(stderr.String(), "bouncer.hostname") {
			t.Errorf("stderr does not name the field: %q", stderr.String())
		}
	})

	t.Run("serves, bounces and stops on SIGTERM", func(t *testing.T) {
		srv := natstest.Start(t)
		_, js := srv.Connect(t)
		metrics := freeAddr(t)
		cfgPath := writeConfig(t, "nats: {url: \""+srv.ClientURL()+"\"}\nbouncer: {hostname: mx.sluice.test, metrics_listen: \""+metrics+"\"}\n")
		cmd := exec.Command(bin, "-config", cfgPath)
		cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		started := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stderr)
			signalled := false
			for sc.Scan() {
				t.Log(sc.Text())
				if !signalled && strings.Contains(sc.Text(), `"msg":"started"`) {
					close(started)
					signalled = true
				}
			}
			done <- cmd.Wait()
		}()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("exited before starting: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("no started line within 20s")
		}

		b := &sluicev1.Bounce{
			Schema: 1, Kind: sluicev1.BounceKind_BOUNCE_KIND_FAILED,
			Job: &sluicev1.Job{JobId: "Q-0", QueueId: "Q", MailFrom: "alice@example.com", Attempt: 1},
			Recipients: []*sluicev1.RecipientResult{
				{Address: "bob@example.org", Code: 550, EnhancedCode: "5.1.1", Text: "no such user", RemoteHost: "mx.example.org"},
			},
		}
		data, _ := proto.Marshal(b)
		ctx := context.Background()
		if _, err := js.Publish(ctx, wire.BounceSubject("Q-0"), data); err != nil {
			t.Fatal(err)
		}
		var body string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			st, err := js.Stream(ctx, wire.StreamMessages)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := st.GetLastMsgForSubject(ctx, wire.SubjectMessages+".>"); err == nil {
				var msg sluicev1.Message
				if err := proto.Unmarshal(m.Data, &msg); err != nil {
					t.Fatal(err)
				}
				body = string(msg.GetBody())
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(body, "Diagnostic-Code: smtp; 550 5.1.1 no such user") {
			t.Fatalf("no DSN on %s within 10s (body %q)", wire.StreamMessages, body)
		}
		// Scraped until the counter shows, for a few seconds: one clean-clone
		// CI run read a page without any sluice_ series just after the DSN
		// was stored (cause not found; the status and the page's start are
		// reported should it happen again).
		var page []byte
		var status int
		for deadline := time.Now().Add(5 * time.Second); ; {
			resp, err := http.Get("http://" + metrics + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			page, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			status = resp.StatusCode
			if strings.Contains(string(page), `sluice_bouncer_dsn_generated_total{kind="failed"} 1`) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(string(page), `sluice_bouncer_dsn_generated_total{kind="failed"} 1`) {
			t.Errorf("/metrics (status %d) lacks the generated counter:\n%s\npage starts: %.500s", status, grepLines(string(page), "sluice_"), page)
		}

		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("exit after SIGTERM: %v, want 0", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("did not exit within 10s of SIGTERM")
		}
	})
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
