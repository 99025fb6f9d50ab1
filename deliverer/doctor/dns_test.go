package doctor

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
)

func TestDNSGood(t *testing.T) {
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"mail.good.test. 60 IN A 192.0.2.10",
		"10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.",
		"good.test. 60 IN MX 10 mail.good.test.",
		"good.test. 60 IN A 192.0.2.80",
	)
	d := newDoctor(t, dns, func(c *Config) { c.SendingDomains = []string{"good.test"} })
	rep := d.DNS(bg(), admin.DoctorRequest{})
	if rep.Verdict.Severity != admin.SeverityOK || len(rep.Findings) != 0 {
		t.Fatalf("verdict %+v\n%s", rep.Verdict, findingsText(rep.Findings))
	}
	if !rep.HELO.MatchesEgress || !rep.Reverse[0].ForwardConfirmed || !rep.Reverse[0].MatchesHELO ||
		rep.Domains[0].MX[0] != "10 mail.good.test" || rep.Domains[0].Addrs[0] != "192.0.2.80" {
		t.Fatalf("report %+v", rep)
	}
	if rep.Deliverer.Instance != "d1" || rep.Deliverer.EgressIPs[0] != "192.0.2.10" {
		t.Fatalf("identity %+v", rep.Deliverer)
	}
}

func TestDNSBroken(t *testing.T) {
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		// The EHLO name points at only one of three egress IPs.
		"mail.good.test. 60 IN A 192.0.2.10",
		"10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.",
		// 192.0.2.20 has no PTR; 192.0.2.30's PTR names a host that does
		// not resolve back to it; 2001:db8::5's PTR is confirmed but is
		// not the EHLO name.
		"30.2.0.192.in-addr.arpa. 60 IN PTR other.good.test.",
		"other.good.test. 60 IN A 192.0.2.99",
		"5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 60 IN PTR v6.good.test.",
		"v6.good.test. 60 IN AAAA 2001:db8::5",
		// A domain without MX (its A record is its implicit MX: no
		// finding), one without an address.
		"nomx.test. 60 IN A 192.0.2.81",
		"noaddr.test. 60 IN MX 10 mail.good.test.",
	)
	d := newDoctor(t, dns, func(c *Config) {
		c.EgressIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.20"),
			netip.MustParseAddr("192.0.2.30"), netip.MustParseAddr("2001:db8::5")}
		c.SendingDomains = []string{"nomx.test", "noaddr.test", "missing.test"}
	})
	rep := d.DNS(bg(), admin.DoctorRequest{})
	fs := rep.Findings
	checks := []struct {
		sev   admin.Severity
		parts []string
	}{
		{admin.SeverityError, []string{"resolves to 192.0.2.10, not to the egress IP 192.0.2.20", "mail.good.test. IN A 192.0.2.20"}},
		{admin.SeverityError, []string{"not to the egress IP 192.0.2.30", "mail.good.test. IN A 192.0.2.30"}},
		{admin.SeverityError, []string{"not to the egress IP 2001:db8::5", "mail.good.test. IN AAAA 2001:db8::5"}},
		{admin.SeverityError, []string{"192.0.2.20 has no PTR record", "20.2.0.192.in-addr.arpa. IN PTR mail.good.test."}},
		{admin.SeverityError, []string{"PTR of 192.0.2.30 is other.good.test, which resolves to 192.0.2.99", "other.good.test. IN A 192.0.2.30"}},
		{admin.SeverityWarning, []string{"PTR of 2001:db8::5 (v6.good.test) is not the EHLO name"}},
		{admin.SeverityWarning, []string{"noaddr.test has no A/AAAA record", "noaddr.test. IN A 192.0.2.10"}},
		{admin.SeverityError, []string{"missing.test does not exist in DNS (NXDOMAIN)"}},
	}
	for _, c := range checks {
		if !hasFinding(fs, c.sev, c.parts...) {
			t.Errorf("no %s finding with %q", c.sev, c.parts)
		}
	}
	if len(fs) != len(checks) {
		t.Errorf("%d findings, want %d:\n%s", len(fs), len(checks), findingsText(fs))
	}
	if rep.Verdict.Severity != admin.SeverityError || !strings.Contains(rep.Verdict.Summary, "and 5 more") {
		t.Errorf("verdict %+v", rep.Verdict)
	}
	if nomx := rep.Domains[0]; nomx.Domain != "nomx.test" || !nomx.ImplicitMX || nomx.Severity != admin.SeverityOK ||
		len(nomx.MX) != 0 || strings.Join(nomx.Addrs, ",") != "192.0.2.81" {
		t.Errorf("nomx.test %+v", nomx)
	}
	if rep.Reverse[2].ForwardConfirmed || !rep.Reverse[3].ForwardConfirmed || rep.Reverse[3].MatchesHELO {
		t.Errorf("reverse %+v", rep.Reverse)
	}
}

func TestDNSServerFailureAndGuessedEgress(t *testing.T) {
	dns := dnstest.Start(t)
	dns.ServFail("mail.good.test", true)
	dns.Drop("10.2.0.192.in-addr.arpa", true)
	d := newDoctor(t, dns, func(c *Config) { c.EgressGuessed = true })
	rep := d.DNS(bg(), admin.DoctorRequest{})
	if !hasFinding(rep.Findings, admin.SeverityError, "cannot resolve the EHLO name mail.good.test: SERVFAIL") ||
		!hasFinding(rep.Findings, admin.SeverityError, "cannot look up the PTR record of 192.0.2.10: no answer within") ||
		!hasFinding(rep.Findings, admin.SeverityWarning, "192.0.2.10 is a guess", "deliverer.egress_ips") {
		t.Fatalf("findings:\n%s", findingsText(rep.Findings))
	}
}

func TestDNSBL(t *testing.T) {
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		"20.2.0.192.bl.test. 60 IN A 127.0.0.2",
		"20.2.0.192.bl.test. 60 IN A 127.0.0.4",
		`20.2.0.192.bl.test. 60 IN TXT "Listed for spam, see https://bl.test/q?ip=192.0.2.20"`,
		"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test. 60 IN A 127.0.0.2",
		"10.2.0.192.refusing.test. 60 IN A 127.255.255.254",
		"10.2.0.192.wild.test. 60 IN A 203.0.113.7",
	)
	dns.ServFail("20.2.0.192.broken.test", true)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	d := newDoctor(t, dns, func(c *Config) {
		c.EgressIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.20"), netip.MustParseAddr("2001:db8::1")}
		c.DNSBLZones = []string{"bl.test", "broken.test", "refusing.test", "wild.test"}
		c.Meter = mp.Meter("test")
	})
	rep := d.DNSBL(bg(), admin.DoctorRequest{})
	got := map[string]admin.DNSBLResult{}
	for _, r := range rep.Results {
		got[r.IP+" "+r.Zone] = r
	}
	if len(rep.Results) != 12 {
		t.Fatalf("%d results, want 3 IPs x 4 zones", len(rep.Results))
	}
	want := map[string]string{
		"192.0.2.10 bl.test":        admin.DNSBLNotListed,
		"192.0.2.20 bl.test":        admin.DNSBLListed,
		"2001:db8::1 bl.test":       admin.DNSBLListed,
		"192.0.2.20 broken.test":    admin.DNSBLError,
		"192.0.2.10 broken.test":    admin.DNSBLNotListed,
		"192.0.2.10 refusing.test":  admin.DNSBLError,
		"192.0.2.10 wild.test":      admin.DNSBLError,
		"2001:db8::1 refusing.test": admin.DNSBLNotListed,
	}
	for k, st := range want {
		if got[k].Status != st {
			t.Errorf("%s: %s (%s), want %s", k, got[k].Status, got[k].Error, st)
		}
	}
	l := got["192.0.2.20 bl.test"]
	if l.Query != "20.2.0.192.bl.test" || strings.Join(l.Codes, ",") != "127.0.0.2,127.0.0.4" || !strings.Contains(l.Text, "Listed for spam") {
		t.Errorf("listing %+v", l)
	}
	if q := got["2001:db8::1 bl.test"].Query; q != "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test" {
		t.Errorf("IPv6 query %s", q)
	}
	if !strings.Contains(got["192.0.2.10 refusing.test"].Error, "refused the query") || !strings.Contains(got["192.0.2.10 wild.test"].Error, "outside 127.0.0.0/8") {
		t.Errorf("errors: %q / %q", got["192.0.2.10 refusing.test"].Error, got["192.0.2.10 wild.test"].Error)
	}
	if rep.Verdict.Severity != admin.SeverityError || !hasFinding(rep.Findings, admin.SeverityError, "192.0.2.20 is listed in bl.test (127.0.0.2, 127.0.0.4)", "the zone says: Listed for spam") {
		t.Errorf("verdict %+v\n%s", rep.Verdict, findingsText(rep.Findings))
	}

	// The gauge: 1 for listed pairs, 0 for clean ones, nothing for errors.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	gauge := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "sluice_deliverer_dnsbl_listed" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
				ip, _ := dp.Attributes.Value(attribute.Key("ip"))
				zone, _ := dp.Attributes.Value(attribute.Key("zone"))
				gauge[ip.AsString()+" "+zone.AsString()] = dp.Value
			}
		}
	}
	if gauge["192.0.2.20 bl.test"] != 1 || gauge["2001:db8::1 bl.test"] != 1 || gauge["192.0.2.10 bl.test"] != 0 {
		t.Errorf("gauge %v", gauge)
	}
	if _, ok := gauge["192.0.2.20 broken.test"]; ok {
		t.Errorf("an error set the gauge: %v", gauge)
	}
	if len(gauge) != 9 {
		t.Errorf("%d gauge series, want 9 (12 pairs, 3 errors): %v", len(gauge), gauge)
	}
}

func TestDetectEgressSendsNothing(t *testing.T) {
	// A UDP "connection" to a loopback port nobody listens on: the kernel
	// picks the source address and no packet is needed to learn it.
	ips, err := DetectEgress([]string{"127.0.0.1:9"})
	if err != nil || len(ips) != 1 || ips[0] != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("%v %v", ips, err)
	}
	if _, err := DetectEgress([]string{"not an address"}); err == nil {
		t.Fatal("no error for a bad target")
	}
}
