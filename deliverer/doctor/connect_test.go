package doctor

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// stepTimeout keeps the timeouts of the never-answering servers short.
const stepTimeout = 400

func TestConnectWithAndWithoutSTARTTLS(t *testing.T) {
	port := freePort(t)
	hp := func(ip string) string { return net.JoinHostPort(ip, itoa(port)) }
	smtpServer(t, hp("127.0.0.2"), "mx1.good.test", true)
	smtpServer(t, hp("127.0.0.3"), "mx2.good.test", false)
	silent(t, hp("127.0.0.4"))
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"good.test. 60 IN MX 10 mx1.good.test.",
		"good.test. 60 IN MX 20 mx2.good.test.",
		"good.test. 60 IN MX 30 mx3.good.test.",
		"good.test. 60 IN MX 40 mx4.good.test.",
		"mx1.good.test. 60 IN A 127.0.0.2",
		"mx2.good.test. 60 IN A 127.0.0.3",
		"mx3.good.test. 60 IN A 127.0.0.4",
		// mx4 does not exist; mx5 exists without an address.
		"good.test. 60 IN MX 50 mx5.good.test.",
		`mx5.good.test. 60 IN TXT "no address here"`,
	)
	d := newDoctor(t, dns, func(c *Config) { c.SMTPPort = port })
	rep := d.Connect(bg(), admin.DoctorRequest{Domain: "Good.Test.", StepTimeoutMS: stepTimeout})
	if rep.Domain != "good.test" || len(rep.Probes) != 5 {
		t.Fatalf("%d probes: %+v", len(rep.Probes), rep)
	}
	p1, p2, p3, p4, p5 := rep.Probes[0], rep.Probes[1], rep.Probes[2], rep.Probes[3], rep.Probes[4]
	if !p1.Reached || p1.TLS == nil || p1.TLS.Version != "1.3" || !strings.Contains(p1.TLS.Subject, "CN=mx1.good.test") ||
		p1.TLS.Verified || p1.TLS.VerifyError == "" || p1.TLS.NotAfter != "2035-01-01T00:00:00Z" || !offers(p1.EHLO, "STARTTLS") ||
		len(p1.TLS.PostTLSEHLO) == 0 || offers(p1.TLS.PostTLSEHLO, "STARTTLS") || !strings.HasPrefix(p1.Banner, "mx1.good.test") {
		t.Errorf("mx1: %+v tls %+v", p1, p1.TLS)
	}
	if steps(p1) != "connect:ok banner:ok ehlo:ok starttls:ok" {
		t.Errorf("mx1 steps %s", steps(p1))
	}
	if !p2.Reached || p2.TLS != nil || steps(p2) != "connect:ok banner:ok ehlo:ok starttls:skipped" {
		t.Errorf("mx2: %s %+v", steps(p2), p2)
	}
	if p3.Reached || steps(p3) != "connect:ok banner:timeout ehlo:skipped starttls:skipped" {
		t.Errorf("mx3 (never writes): %s", steps(p3))
	}
	if p4.Host != "mx4.good.test" || p4.Reached || steps(p4) != "dns:failed" || p4.Steps[0].Detail != "the MX host does not exist (NXDOMAIN)" {
		t.Errorf("mx4 (NXDOMAIN): %s %+v", steps(p4), p4)
	}
	if p5.Host != "mx5.good.test" || p5.Reached || steps(p5) != "dns:failed" || p5.Steps[0].Detail != "the MX host has no A/AAAA record" {
		t.Errorf("mx5 (no address): %s %+v", steps(p5), p5)
	}
	fs := rep.Findings
	if rep.Verdict.Severity != admin.SeverityWarning ||
		!hasFinding(fs, admin.SeverityWarning, "mx2.good.test", "does not offer STARTTLS") ||
		!hasFinding(fs, admin.SeverityWarning, "certificate of MX mx1.good.test does not verify") ||
		!hasFinding(fs, admin.SeverityWarning, "MX mx3.good.test", "banner timeout") ||
		!hasFinding(fs, admin.SeverityWarning, "MX mx4.good.test does not work: dns failed: the MX host does not exist (NXDOMAIN)") ||
		!hasFinding(fs, admin.SeverityWarning, "MX mx5.good.test does not work: dns failed: the MX host has no A/AAAA record") {
		t.Errorf("verdict %+v\n%s", rep.Verdict, findingsText(fs))
	}
}

func TestConnectPort25Blocked(t *testing.T) {
	port := blackhole(t)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"dead.test. 60 IN MX 10 mx.dead.test.",
		"mx.dead.test. 60 IN A 127.0.0.1",
		"gmail.test. 60 IN MX 5 mx.gmail.test.",
		"mx.gmail.test. 60 IN A 127.0.0.1",
		"outlook.test. 60 IN MX 5 mx.outlook.test.",
		"mx.outlook.test. 60 IN A 127.0.0.1",
	)
	d := newDoctor(t, dns, func(c *Config) { c.SMTPPort = port; c.ProbeDomains = []string{"gmail.test", "outlook.test"} })
	start := time.Now()
	rep := d.Connect(bg(), admin.DoctorRequest{Domain: "dead.test", StepTimeoutMS: stepTimeout})
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s with %dms steps", el, stepTimeout)
	}
	if steps(rep.Probes[0]) != "connect:timeout banner:skipped ehlo:skipped starttls:skipped" {
		t.Fatalf("probe %s", steps(rep.Probes[0]))
	}
	if rep.Port25 == nil || !rep.Port25.Blocked || len(rep.Port25.Probes) != 2 || rep.Port25.Probes[1].Reached {
		t.Fatalf("port25 %+v", rep.Port25)
	}
	if rep.Verdict.Severity != admin.SeverityError ||
		!strings.Contains(rep.Verdict.Summary, "outbound port "+itoa(port)+" is blocked from this host: connections to every MX of dead.test and of gmail.test, outlook.test time out") {
		t.Fatalf("verdict %+v", rep.Verdict)
	}
}

func TestConnectDestinationDownButPortOpen(t *testing.T) {
	port := blackhole(t)
	smtpServer(t, net.JoinHostPort("127.0.0.2", itoa(port)), "mx.gmail.test", false)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"dead.test. 60 IN MX 10 mx.dead.test.",
		"mx.dead.test. 60 IN A 127.0.0.1",
		"gmail.test. 60 IN MX 5 mx.gmail.test.",
		"mx.gmail.test. 60 IN A 127.0.0.2",
	)
	d := newDoctor(t, dns, func(c *Config) { c.SMTPPort = port; c.ProbeDomains = []string{"gmail.test"} })
	rep := d.Connect(bg(), admin.DoctorRequest{Domain: "dead.test", StepTimeoutMS: stepTimeout})
	if rep.Port25 == nil || rep.Port25.Blocked || !rep.Port25.Probes[0].Reached {
		t.Fatalf("port25 %+v", rep.Port25)
	}
	if !strings.Contains(rep.Verdict.Summary, "every MX of dead.test timed out on port") || !strings.Contains(rep.Verdict.Summary, "other domains' servers answer") {
		t.Fatalf("verdict %+v", rep.Verdict)
	}
}

func TestConnectRefusedAndNoDomain(t *testing.T) {
	port := freePort(t) // nobody listens: refused, which is not a block
	dns := dnstest.Start(t)
	dns.MustAdd(t, "closed.test. 60 IN MX 10 mx.closed.test.", "mx.closed.test. 60 IN A 127.0.0.1",
		"nullmx.test. 60 IN MX 0 .")
	d := newDoctor(t, dns, func(c *Config) { c.SMTPPort = port; c.ProbeDomains = []string{"gmail.test"} })
	rep := d.Connect(bg(), admin.DoctorRequest{Domain: "closed.test", StepTimeoutMS: stepTimeout})
	if rep.Port25 != nil || !strings.Contains(rep.Verdict.Summary, "connect failed: connection refused") {
		t.Fatalf("refused: %+v", rep.Verdict)
	}
	rep = d.Connect(bg(), admin.DoctorRequest{Domain: "nope.test"})
	if rep.Verdict.Severity != admin.SeverityError || !strings.Contains(rep.MXError, "does not exist") {
		t.Fatalf("nxdomain: %+v", rep)
	}
	rep = d.Connect(bg(), admin.DoctorRequest{Domain: "nullmx.test"})
	if !strings.Contains(rep.MXError, "null MX") {
		t.Fatalf("null MX: %+v", rep)
	}
}

// TestConnectMXHostLookupFailures: an MX host whose address lookup times
// out or is answered SERVFAIL is reported as such, not as a host without
// an address record.
func TestConnectMXHostLookupFailures(t *testing.T) {
	port := freePort(t)
	smtpServer(t, net.JoinHostPort("127.0.0.2", itoa(port)), "mx3.good.test", false)
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"good.test. 60 IN MX 10 slow.good.test.",
		"good.test. 60 IN MX 20 broken.good.test.",
		"good.test. 60 IN MX 30 mx3.good.test.",
		"mx3.good.test. 60 IN A 127.0.0.2",
	)
	dns.Drop("slow.good.test", true)
	dns.ServFail("broken.good.test", true)
	d := newDoctor(t, dns, func(c *Config) { c.SMTPPort = port })
	rep := d.Connect(bg(), admin.DoctorRequest{Domain: "good.test", StepTimeoutMS: stepTimeout})
	if len(rep.Probes) != 3 {
		t.Fatalf("%d probes: %+v", len(rep.Probes), rep.Probes)
	}
	want := []admin.Step{
		{Name: "dns", Status: admin.StepTimeout, Detail: "the MX host cannot be resolved: the lookup timed out (no answer within 500ms)"},
		{Name: "dns", Status: admin.StepFailed, Detail: "the MX host cannot be resolved: the DNS server answered SERVFAIL"},
	}
	for i, w := range want {
		if p := rep.Probes[i]; len(p.Steps) != 1 || p.Steps[0] != w || p.Reached {
			t.Errorf("probe %d: %+v, want %+v", i, p.Steps, w)
		}
	}
	if !rep.Probes[2].Reached {
		t.Errorf("mx3 not reached: %+v", rep.Probes[2])
	}
	if !hasFinding(rep.Findings, admin.SeverityWarning, "MX slow.good.test does not work: dns timeout: the MX host cannot be resolved: the lookup timed out (no answer within 500ms)") ||
		!hasFinding(rep.Findings, admin.SeverityWarning, "MX broken.good.test does not work: dns failed: the MX host cannot be resolved: the DNS server answered SERVFAIL") {
		t.Errorf("findings:\n%s", findingsText(rep.Findings))
	}
}

func steps(p admin.MXProbe) string {
	var s []string
	for _, st := range p.Steps {
		s = append(s, st.Name+":"+st.Status)
	}
	return strings.Join(s, " ")
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
