package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
)

// diagBuildDeliverer builds the real sluice-deliverer binary from the
// workspace, once per test binary.
var diagBuildDeliverer = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "sluice-cli-test")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sluice-deliverer")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mta/sluice/deliverer/cmd/sluice-deliverer").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return bin, nil
})

type diagBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *diagBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *diagBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDeliverer runs a deliverer process with the given deliverer section.
func diagStartDeliverer(t *testing.T, natsURL, name, section string) {
	t.Helper()
	bin, err := diagBuildDeliverer()
	if err != nil {
		t.Skipf("cannot build sluice-deliverer (needs the go.work workspace): %v", err)
	}
	cfg := filepath.Join(t.TempDir(), name+".yaml")
	y := fmt.Sprintf("nats: {url: %q}\ndeliverer:\n  instance: %s\n  metrics_listen: \"\"\n%s", natsURL, name, section)
	if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfg)
	logs := &diagBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exited with %v\n%s", name, err, logs.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGTERM", name)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"started"`) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start:\n%s", name, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func diagRun(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestDoctorTwoDeliverers runs two real deliverer processes with different
// egress IPs and checks that the CLI prints one row per deliverer, the
// finding of the broken one, and a failing verdict.
func TestDoctorTwoDeliverers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the deliverer binary")
	}
	ns := natstest.Start(t)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"mail.good.test. 60 IN A 192.0.2.10",
		"mail.good.test. 60 IN A 192.0.2.20",
		"10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.",
		"good.test. 60 IN MX 10 mail.good.test.",
		"good.test. 60 IN A 192.0.2.80",
		"20.2.0.192.bl.test. 60 IN A 127.0.0.2",
		`20.2.0.192.bl.test. 60 IN TXT "listed for testing"`,
	)
	common := fmt.Sprintf("  hostname: mail.good.test\n  dns_server: %q\n  dns_timeout: 1s\n  sending_domains: [good.test]\n  dnsbl_zones: [bl.test]\n  dnsbl_interval: 0s\n", dns.Addr)
	diagStartDeliverer(t, ns.ClientURL(), "d1", common+"  egress_ips: [192.0.2.10]\n")
	diagStartDeliverer(t, ns.ClientURL(), "d2", common+"  egress_ips: [192.0.2.20]\n")

	code, out, errOut := diagRun("doctor", "dns", "-server", ns.ClientURL())
	if code != 1 {
		t.Errorf("exit %d, want 1 (d2 has no PTR); stderr %s", code, errOut)
	}
	lines := strings.Split(out, "\n")
	header := regexp.MustCompile(`^DELIVERER\s+EHLO NAME\s+EGRESS IP\s+EHLO->IP\s+PTR\s+FCRDNS\s+DOMAINS\s+VERDICT$`)
	d1 := regexp.MustCompile(`^d1\s+mail\.good\.test\s+192\.0\.2\.10\s+ok\s+mail\.good\.test\s+ok\s+1/1 ok\s+ok$`)
	d2 := regexp.MustCompile(`^d2\s+mail\.good\.test\s+192\.0\.2\.20\s+ok\s+none\s+NO\s+1/1 ok\s+error$`)
	if len(lines) < 3 || !header.MatchString(lines[0]) || !d1.MatchString(lines[1]) || !d2.MatchString(lines[2]) {
		t.Fatalf("table:\n%s", out)
	}
	// Aligned: every column starts at the same offset in every row.
	if strings.Index(lines[1], "192.0.2.10") != strings.Index(lines[0], "EGRESS IP") || strings.Index(lines[2], "error") != strings.Index(lines[0], "VERDICT") {
		t.Errorf("columns not aligned:\n%s", out)
	}
	for _, want := range []string{
		"error  egress IP 192.0.2.20 has no PTR record; many receivers refuse mail from such addresses (d2)",
		"fix: 20.2.0.192.in-addr.arpa. IN PTR mail.good.test.",
		"doctor dns: FAIL on 1 of 2 deliverers: egress IP 192.0.2.20 has no PTR record",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Error("colour on a non-terminal")
	}

	code, out, _ = diagRun("doctor", "dnsbl", "-json", "-server", ns.ClientURL())
	var reps []admin.DNSBLReport
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r admin.DNSBLReport
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("JSON line %q: %v", l, err)
		}
		reps = append(reps, r)
	}
	if code != 1 || len(reps) != 2 || reps[0].Deliverer.Instance != "d1" || reps[0].Results[0].Status != admin.DNSBLNotListed ||
		reps[1].Results[0].Status != admin.DNSBLListed || reps[1].Results[0].Text != "listed for testing" {
		t.Fatalf("dnsbl -json (exit %d):\n%s", code, out)
	}

	// A bad domain: every deliverer refuses with 400, at once.
	start := time.Now()
	code, out, _ = diagRun("doctor", "auth", "bad_domain!", "-server", ns.ClientURL(), "-wait", "20s")
	if code != 1 || !strings.Contains(out, "error 400: domain:") || time.Since(start) > 10*time.Second {
		t.Fatalf("bad domain (exit %d, %s):\n%s", code, time.Since(start), out)
	}
}

func TestDoctorNoDeliverer(t *testing.T) {
	ns := natstest.Start(t)
	code, _, errOut := diagRun("doctor", "dns", "-server", ns.ClientURL(), "-timeout", "1s")
	if code != 1 || !strings.Contains(errOut, "no answer from sluice-deliverer within 1s (is any deliverer running?") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	code, _, errOut = diagRun("doctor", "dns", "-server", "nats://127.0.0.1:1", "-timeout", "1s")
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS at nats://127.0.0.1:1 within 1s") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestDoctorUsage(t *testing.T) {
	for _, args := range [][]string{
		{"doctor"},
		{"doctor", "xray"},
		{"doctor", "connect"},
		{"doctor", "auth", "a.example", "b.example"},
		{"doctor", "dns", "extra"},
		{"doctor", "dns", "-wait", "0s"},
		{"doctor", "dns", "-bogus"},
	} {
		if code, _, errOut := diagRun(args...); code != 2 || !strings.Contains(errOut, "usage") && !strings.Contains(errOut, "-wait") && !strings.Contains(errOut, "takes no arguments") {
			t.Errorf("%q: exit %d, %s", args, code, errOut)
		}
	}
}

func TestGlobalFlagsBeforeTheCommand(t *testing.T) {
	got := strings.Join(globalFlagsLast([]string{"-server", "nats://x:4222", "--timeout=2s", "doctor", "dns", "-json"}), " ")
	if got != "doctor dns -json -server nats://x:4222 --timeout=2s" {
		t.Fatalf("got %q", got)
	}
	if got := strings.Join(globalFlagsLast([]string{"headers", "-server", "u"}), " "); got != "headers -server u" {
		t.Fatalf("got %q", got)
	}
	code, _, errOut := diagRun("-server", "nats://127.0.0.1:1", "-timeout", "1s", "doctor", "dns")
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS at nats://127.0.0.1:1 within 1s") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}
