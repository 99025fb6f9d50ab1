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

// diagBuffer is a bytes.Buffer that several writers (a process's output,
// services' loggers) share.
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

// TestDoctorDNSDomains runs a real deliverer against a zone with the
// usual broken setups and checks what "sluice doctor dns DOMAIN..." prints
// for each: an MX host that does not exist, MX hosts whose lookups time
// out or fail with SERVFAIL or find no address, a null MX, a domain with
// only an A record (implicit MX, fine) and one with nothing.
func TestDoctorDNSDomains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the deliverer binary")
	}
	ns := natstest.Start(t)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"mail.good.test. 60 IN A 192.0.2.10",
		"10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.",
		"good.test. 60 IN MX 10 mail.good.test.",
		"good.test. 60 IN A 192.0.2.80",
		"partial.test. 60 IN MX 10 gone.partial.test.",
		"partial.test. 60 IN MX 20 mx.partial.test.",
		"mx.partial.test. 60 IN A 192.0.2.70",
		"failing.test. 60 IN MX 10 slow.failing.test.",
		"failing.test. 60 IN MX 20 broken.failing.test.",
		"failing.test. 60 IN MX 30 noaddr.failing.test.",
		`noaddr.failing.test. 60 IN TXT "nothing"`,
		"nullmx.test. 60 IN MX 0 .",
		"aonly.test. 60 IN A 192.0.2.60",
		`nomail.test. 60 IN TXT "v=spf1 -all"`,
	)
	dns.Drop("slow.failing.test", true)
	dns.ServFail("broken.failing.test", true)
	dns.ServFail("broken.test", true)
	diagStartDeliverer(t, ns.ClientURL(), "d1", fmt.Sprintf("  hostname: mail.good.test\n  dns_server: %q\n  dns_timeout: 1s\n"+
		"  sending_domains: [good.test]\n  egress_ips: [192.0.2.10]\n  dnsbl_interval: 0s\n", dns.Addr))

	code, out, errOut := diagRun("doctor", "dns", "-server", ns.ClientURL(),
		"partial.test", "failing.test", "nullmx.test", "aonly.test", "nomail.test", "broken.test")
	if code != 1 {
		t.Errorf("exit %d, want 1; stderr %s", code, errOut)
	}
	ns1 := func(name, qtype string) string {
		return fmt.Sprintf("check the name servers of %s (dig +trace %s %s) and the DNS server %s (deliverer.dns_server)", name, name, qtype, dns.Addr)
	}
	waits := "no MX host of failing.test has an address, so mail to it waits in the queue until one has, and bounces when it expires"
	want := strings.Join([]string{
		"DELIVERER  EHLO NAME       EGRESS IP   EHLO->IP  PTR             FCRDNS  DOMAINS  VERDICT",
		"d1         mail.good.test  192.0.2.10  ok        mail.good.test  ok      1/6 ok   error",
		"",
		"Details:",
		"  d1  partial.test: MX 10 gone.partial.test (NXDOMAIN), 20 mx.partial.test (192.0.2.70)",
		"  d1  failing.test: MX 10 slow.failing.test (timeout: no answer within 1s), 20 broken.failing.test (SERVFAIL), 30 noaddr.failing.test (no A/AAAA record)",
		"  d1  nullmx.test: null MX (RFC 7505): accepts no mail",
		"  d1  aonly.test: no MX; implicit MX (RFC 5321 §5.1): 192.0.2.60",
		"  d1  nomail.test: no MX and no A/AAAA record",
		"  d1  broken.test: MX lookup failed: SERVFAIL",
		"",
		"Findings:",
		"  warning  MX host gone.partial.test of partial.test does not exist (NXDOMAIN): deliveries to partial.test skip it for its other MX hosts (d1)",
		`      fix: gone.partial.test. IN A <address of the mail server>, or remove "partial.test. IN MX 10 gone.partial.test."`,
		"  error  MX host slow.failing.test of failing.test cannot be resolved: the lookup timed out (no answer within 1s): " + waits + " (d1)",
		"      fix: " + ns1("slow.failing.test", "A"),
		"  error  MX host broken.failing.test of failing.test cannot be resolved: the DNS server answered SERVFAIL: " + waits + " (d1)",
		"      fix: " + ns1("broken.failing.test", "A"),
		"  error  MX host noaddr.failing.test of failing.test has no A/AAAA record: " + waits + " (d1)",
		`      fix: noaddr.failing.test. IN A <address of the mail server>, or remove "failing.test. IN MX 30 noaddr.failing.test."`,
		"  error  domain nullmx.test accepts no mail: it publishes a null MX (RFC 7505), so mail to it bounces at once (556 5.1.10) (d1)",
		"      fix: nothing to fix on this side: ask the recipient for another address",
		"  error  domain nomail.test has no MX and no A/AAAA record: it cannot receive mail, so mail to it bounces (550 5.1.2) (d1)",
		"  error  cannot look up the MX records of broken.test: the DNS server answered SERVFAIL; mail to it waits in the queue until a lookup succeeds (d1)",
		"      fix: " + ns1("broken.test", "MX"),
		"",
		"doctor dns: FAIL on 1 of 1 deliverer: MX host slow.failing.test of failing.test cannot be resolved: the lookup timed out (no answer within 1s): " + waits + " (and 5 more)",
		"",
	}, "\n")
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}

	// Without a domain, the sending domains are checked.
	code, out, _ = diagRun("doctor", "dns", "-server", ns.ClientURL())
	if code != 0 || !strings.Contains(out, "  d1  good.test: MX 10 mail.good.test (192.0.2.10)\n") ||
		!strings.Contains(out, "doctor dns: OK on 1 deliverer: EHLO name, reverse DNS of 1 egress IP(s) and 1 sending domain(s) are right") {
		t.Errorf("exit %d:\n%s", code, out)
	}

	// A bad domain is refused by the deliverer.
	code, out, _ = diagRun("doctor", "dns", "-server", ns.ClientURL(), "good.test", "bad_domain!")
	if code != 1 || !strings.Contains(out, `error 400: domains: "bad_domain!" is not a domain name`) {
		t.Errorf("bad domain (exit %d):\n%s", code, out)
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
		{"doctor", "dnsbl", "extra"},
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
