package doctor

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// identityZone serves a correct EHLO name and PTR for the default test
// deliverer, so that a dns check's findings are about the domains only.
func identityZone(t *testing.T) *dnstest.Server {
	t.Helper()
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"mail.good.test. 60 IN A 192.0.2.10",
		"10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.",
	)
	return dns
}

// wantFindings compares findings exactly, in order.
func wantFindings(t *testing.T, got, want []admin.Finding) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d findings, want %d:\n%s", len(got), len(want), findingsText(got))
		return
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("finding %d:\n got  %s\n want %s", i, findingsText(got[i:i+1]), findingsText(want[i:i+1]))
		}
	}
}

func domainsByName(rep admin.DNSReport) map[string]admin.SendingDomain {
	m := map[string]admin.SendingDomain{}
	for _, d := range rep.Domains {
		m[d.Domain] = d
	}
	return m
}

func nsFix(dns *dnstest.Server, name, qtype string) string {
	return fmt.Sprintf("check the name servers of %s (dig +trace %s %s) and the DNS server %s (deliverer.dns_server)", name, name, qtype, dns.Addr)
}

// TestDNSDomainsOfTheRequest: the dns check looks at the domains the
// request names, each once, instead of the sending domains, and says
// which of them are sending domains.
func TestDNSDomainsOfTheRequest(t *testing.T) {
	dns := identityZone(t)
	dns.MustAdd(t,
		"good.test. 60 IN MX 10 mail.good.test.",
		"good.test. 60 IN A 192.0.2.80",
		"other.test. 60 IN MX 10 mx.other.test.",
		"mx.other.test. 60 IN A 192.0.2.90",
		"mx.other.test. 60 IN AAAA 2001:db8::90",
	)
	d := newDoctor(t, dns, func(c *Config) { c.SendingDomains = []string{"good.test", "unrelated.test"} })
	rep := d.DNS(bg(), admin.DoctorRequest{Domains: []string{"Other.Test.", "good.test", "other.test"}})
	wantFindings(t, rep.Findings, nil)
	if len(rep.Domains) != 2 {
		t.Fatalf("domains %+v", rep.Domains)
	}
	other, good := rep.Domains[0], rep.Domains[1]
	if other.Domain != "other.test" || other.Sending || other.Severity != admin.SeverityOK || strings.Join(other.MX, ",") != "10 mx.other.test" ||
		len(other.Hosts) != 1 || other.Hosts[0].Lookup != admin.LookupOK || strings.Join(other.Hosts[0].Addrs, ",") != "192.0.2.90,2001:db8::90" {
		t.Errorf("other.test %+v", other)
	}
	if good.Domain != "good.test" || !good.Sending || strings.Join(good.Addrs, ",") != "192.0.2.80" {
		t.Errorf("good.test %+v", good)
	}
	if rep.Verdict != (admin.Verdict{Severity: admin.SeverityOK, Summary: "EHLO name, reverse DNS of 1 egress IP(s) and 2 domain(s) are right"}) {
		t.Errorf("verdict %+v", rep.Verdict)
	}
	// Without domains in the request, the sending domains are checked.
	rep = d.DNS(bg(), admin.DoctorRequest{})
	if len(rep.Domains) != 2 || rep.Domains[0].Domain != "good.test" || rep.Domains[1].Domain != "unrelated.test" || !rep.Domains[1].Sending {
		t.Errorf("sending domains %+v", rep.Domains)
	}
}

// TestDNSNullMX: "MX 0 ." (RFC 7505) says the domain accepts no mail.
func TestDNSNullMX(t *testing.T) {
	dns := identityZone(t)
	dns.MustAdd(t,
		"nullmx.test. 60 IN MX 0 .",
		"nullmx.test. 60 IN A 192.0.2.50",
		"send.test. 60 IN MX 0 .",
		"send.test. 60 IN A 192.0.2.51",
		"mixed.test. 60 IN MX 0 .",
		"mixed.test. 60 IN MX 10 mx.mixed.test.",
		"mx.mixed.test. 60 IN A 192.0.2.52",
		"badnull.test. 60 IN MX 10 .",
	)
	d := newDoctor(t, dns, func(c *Config) { c.SendingDomains = []string{"send.test"} })
	rep := d.DNS(bg(), admin.DoctorRequest{Domains: []string{"nullmx.test", "send.test", "mixed.test", "badnull.test"}})
	wantFindings(t, rep.Findings, []admin.Finding{
		{Severity: admin.SeverityError, Subject: "nullmx.test",
			Problem: "domain nullmx.test accepts no mail: it publishes a null MX (RFC 7505), so mail to it bounces at once (556 5.1.10)",
			Fix:     "nothing to fix on this side: ask the recipient for another address"},
		{Severity: admin.SeverityError, Subject: "send.test",
			Problem: "sending domain send.test publishes a null MX (RFC 7505): it accepts no mail, so bounces to its senders cannot be delivered and receivers may refuse its mail (550 5.7.27)",
			Fix:     `send.test. IN MX 10 <your inbound mail host>. in place of "send.test. IN MX 0 ."`},
		{Severity: admin.SeverityWarning, Subject: "mixed.test",
			Problem: `the MX records of mixed.test mix a null MX ("0 .") with real ones; a null MX must stand alone (RFC 7505 §3), so deliveries ignore it`,
			Fix:     `remove "mixed.test. IN MX 0 ."`},
		{Severity: admin.SeverityError, Subject: "badnull.test",
			Problem: `the MX records of badnull.test (10 .) name no host and are not a null MX, which is a single "0 ." (RFC 7505 §3): mail to it waits in the queue until it expires`,
			Fix:     `badnull.test. IN MX 10 <your inbound mail host>. (or "badnull.test. IN MX 0 ." if it never receives mail, RFC 7505)`},
	})
	doms := domainsByName(rep)
	if n := doms["nullmx.test"]; !n.NullMX || strings.Join(n.MX, ",") != "0 ." || len(n.Hosts) != 0 || n.Severity != admin.SeverityError {
		t.Errorf("nullmx.test %+v", n)
	}
	if m := doms["mixed.test"]; m.NullMX || strings.Join(m.MX, ",") != "0 .,10 mx.mixed.test" || len(m.Hosts) != 1 || m.Severity != admin.SeverityWarning {
		t.Errorf("mixed.test %+v", m)
	}
}

// TestDNSImplicitMX: a domain without MX records receives mail at its own
// addresses (RFC 5321 §5.1); only a domain with neither is a finding.
func TestDNSImplicitMX(t *testing.T) {
	dns := identityZone(t)
	dns.MustAdd(t,
		"aonly.test. 60 IN A 192.0.2.60",
		"v6only.test. 60 IN AAAA 2001:db8::60",
		`nomail.test. 60 IN TXT "v=spf1 -all"`,
		`sendnomail.test. 60 IN TXT "v=spf1 -all"`,
	)
	d := newDoctor(t, dns, func(c *Config) { c.SendingDomains = []string{"aonly.test", "sendnomail.test"} })
	rep := d.DNS(bg(), admin.DoctorRequest{Domains: []string{"aonly.test", "v6only.test", "nomail.test", "sendnomail.test"}})
	wantFindings(t, rep.Findings, []admin.Finding{
		{Severity: admin.SeverityError, Subject: "nomail.test",
			Problem: "domain nomail.test has no MX and no A/AAAA record: it cannot receive mail, so mail to it bounces (550 5.1.2)"},
		{Severity: admin.SeverityError, Subject: "sendnomail.test",
			Problem: "sending domain sendnomail.test has no MX and no A/AAAA record: bounces to its senders cannot be delivered, and receivers check that",
			Fix:     `sendnomail.test. IN MX 10 <your inbound mail host>. (or "sendnomail.test. IN MX 0 ." if it never receives mail, RFC 7505)`},
	})
	doms := domainsByName(rep)
	for name, addr := range map[string]string{"aonly.test": "192.0.2.60", "v6only.test": "2001:db8::60"} {
		if x := doms[name]; !x.ImplicitMX || strings.Join(x.Addrs, ",") != addr || len(x.MX) != 0 || x.Severity != admin.SeverityOK {
			t.Errorf("%s %+v", name, x)
		}
	}
	if x := doms["nomail.test"]; x.ImplicitMX || x.Severity != admin.SeverityError {
		t.Errorf("nomail.test %+v", x)
	}
}

// TestDNSMXHosts: an MX host without an address is named with the reason
// (NXDOMAIN, no A/AAAA record, SERVFAIL, timeout); a warning while another
// MX host of the domain has an address, an error when none has.
func TestDNSMXHosts(t *testing.T) {
	dns := identityZone(t)
	dns.MustAdd(t,
		"partial.test. 60 IN MX 10 gone.partial.test.",
		"partial.test. 60 IN MX 20 mx.partial.test.",
		"mx.partial.test. 60 IN A 192.0.2.70",
		"dead.test. 60 IN MX 10 gone.dead.test.",
		"failing.test. 60 IN MX 30 noaddr.failing.test.",
		"failing.test. 60 IN MX 10 slow.failing.test.",
		"failing.test. 60 IN MX 20 broken.failing.test.",
		`noaddr.failing.test. 60 IN TXT "nothing"`,
		"slow.failing.test. 60 IN A 192.0.2.71",
		"broken.failing.test. 60 IN A 192.0.2.72",
	)
	dns.Drop("slow.failing.test", true)
	dns.ServFail("broken.failing.test", true)
	d := newDoctor(t, dns, nil)
	rep := d.DNS(bg(), admin.DoctorRequest{Domains: []string{"partial.test", "dead.test", "failing.test"}})
	waits := "no MX host of %s has an address, so mail to it waits in the queue until one has, and bounces when it expires"
	wantFindings(t, rep.Findings, []admin.Finding{
		{Severity: admin.SeverityWarning, Subject: "gone.partial.test",
			Problem: "MX host gone.partial.test of partial.test does not exist (NXDOMAIN): deliveries to partial.test skip it for its other MX hosts",
			Fix:     `gone.partial.test. IN A <address of the mail server>, or remove "partial.test. IN MX 10 gone.partial.test."`},
		{Severity: admin.SeverityError, Subject: "gone.dead.test",
			Problem: "MX host gone.dead.test of dead.test does not exist (NXDOMAIN): " + fmt.Sprintf(waits, "dead.test"),
			Fix:     `gone.dead.test. IN A <address of the mail server>, or remove "dead.test. IN MX 10 gone.dead.test."`},
		{Severity: admin.SeverityError, Subject: "slow.failing.test",
			Problem: "MX host slow.failing.test of failing.test cannot be resolved: the lookup timed out (no answer within 500ms): " + fmt.Sprintf(waits, "failing.test"),
			Fix:     nsFix(dns, "slow.failing.test", "A")},
		{Severity: admin.SeverityError, Subject: "broken.failing.test",
			Problem: "MX host broken.failing.test of failing.test cannot be resolved: the DNS server answered SERVFAIL: " + fmt.Sprintf(waits, "failing.test"),
			Fix:     nsFix(dns, "broken.failing.test", "A")},
		{Severity: admin.SeverityError, Subject: "noaddr.failing.test",
			Problem: "MX host noaddr.failing.test of failing.test has no A/AAAA record: " + fmt.Sprintf(waits, "failing.test"),
			Fix:     `noaddr.failing.test. IN A <address of the mail server>, or remove "failing.test. IN MX 30 noaddr.failing.test."`},
	})
	hosts := domainsByName(rep)["failing.test"].Hosts
	var got []string
	for _, h := range hosts {
		got = append(got, fmt.Sprintf("%d %s %s %q", h.Preference, h.Name, h.Lookup, h.Error))
	}
	want := `10 slow.failing.test timeout "no answer within 500ms"|20 broken.failing.test servfail "SERVFAIL"|30 noaddr.failing.test nodata ""`
	if strings.Join(got, "|") != want {
		t.Errorf("hosts\n got  %s\n want %s", strings.Join(got, "|"), want)
	}
	if p := domainsByName(rep)["partial.test"]; p.Severity != admin.SeverityWarning || p.Hosts[1].Lookup != admin.LookupOK {
		t.Errorf("partial.test %+v", p)
	}
}

// TestDNSMXLookupFailures: the MX lookup of a domain itself timing out or
// answered SERVFAIL is named as such.
func TestDNSMXLookupFailures(t *testing.T) {
	dns := identityZone(t)
	dns.Drop("slow.test", true)
	dns.ServFail("broken.test", true)
	d := newDoctor(t, dns, nil)
	rep := d.DNS(bg(), admin.DoctorRequest{Domains: []string{"slow.test", "broken.test", "nxdomain.test"}})
	wantFindings(t, rep.Findings, []admin.Finding{
		{Severity: admin.SeverityError, Subject: "slow.test",
			Problem: "cannot look up the MX records of slow.test: the lookup timed out (no answer within 500ms); mail to it waits in the queue until a lookup succeeds",
			Fix:     nsFix(dns, "slow.test", "MX")},
		{Severity: admin.SeverityError, Subject: "broken.test",
			Problem: "cannot look up the MX records of broken.test: the DNS server answered SERVFAIL; mail to it waits in the queue until a lookup succeeds",
			Fix:     nsFix(dns, "broken.test", "MX")},
		{Severity: admin.SeverityError, Subject: "nxdomain.test",
			Problem: "domain nxdomain.test does not exist in DNS (NXDOMAIN): mail to it bounces (550 5.1.2)"},
	})
	doms := domainsByName(rep)
	if doms["slow.test"].Error != "no answer within 500ms" || doms["broken.test"].Error != "SERVFAIL" || doms["nxdomain.test"].Error != "the domain does not exist (NXDOMAIN)" {
		t.Errorf("errors %+v", rep.Domains)
	}
}
