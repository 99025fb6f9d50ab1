package doctor

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/admin"
)

// DNSBL checks every egress IP against every configured zone, in parallel,
// and updates the sluice_deliverer_dnsbl_listed gauge.
//
// The query is RFC 5782 §2.1: the address's octets reversed (IPv4) or its
// 32 nibbles reversed (IPv6, §2.4) under the zone; an A record in
// 127.0.0.0/8 means listed, NXDOMAIN means not listed, and the TXT record of
// the same name explains the listing. Answers outside 127.0.0.0/8 and the
// 127.255.255.0/24 codes by which Spamhaus refuses queries from public or
// unregistered resolvers are errors, not listings: the zone could not say.
func (d *Doctor) DNSBL(ctx context.Context, req admin.DoctorRequest) admin.DNSBLReport {
	ctx, cancel, _ := budget(ctx, req)
	defer cancel()
	rep := admin.DNSBLReport{Deliverer: d.identity(), Zones: append([]string{}, d.cfg.DNSBLZones...)}
	rep.Results = d.lookupAll(ctx, d.resolver())
	findings := d.egressFindings()
	listed, errs := 0, 0
	for _, r := range rep.Results {
		switch r.Status {
		case admin.DNSBLListed:
			listed++
			fix := "find the cause (compromised account, bulk sender, open proxy), stop it, then ask " + r.Zone + " for delisting"
			if r.Text != "" {
				fix += "; the zone says: " + r.Text
			}
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: r.IP,
				Problem: fmt.Sprintf("%s is listed in %s (%s)", r.IP, r.Zone, strings.Join(r.Codes, ", ")), Fix: fix})
		case admin.DNSBLError:
			errs++
			findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: r.Zone,
				Problem: fmt.Sprintf("%s could not be checked for %s: %s", r.Zone, r.IP, r.Error),
				Fix:     "use a resolver of your own for deliverer.dns_server (blocklists refuse large public resolvers), or remove the zone"})
		}
	}
	if len(d.cfg.DNSBLZones) == 0 {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: "deliverer.dnsbl_zones",
			Problem: "no DNSBL zones are configured", Fix: "list blocklists in deliverer.dnsbl_zones, e.g. zen.spamhaus.org"})
	}
	rep.Findings = nonNil(findings)
	rep.Verdict = verdict(findings, fmt.Sprintf("%d egress IP(s) listed in none of %d zone(s)", len(d.cfg.EgressIPs), len(d.cfg.DNSBLZones)))
	return rep
}

// lookupAll runs every (ip, zone) lookup concurrently, results in
// configuration order.
func (d *Doctor) lookupAll(ctx context.Context, res *mx.Resolver) []admin.DNSBLResult {
	out := make([]admin.DNSBLResult, 0, len(d.cfg.EgressIPs)*len(d.cfg.DNSBLZones))
	for _, ip := range d.cfg.EgressIPs {
		for _, z := range d.cfg.DNSBLZones {
			out = append(out, admin.DNSBLResult{IP: ip.String(), Zone: z})
		}
	}
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			ip := netip.MustParseAddr(out[i].IP)
			out[i] = d.lookup(ctx, res, ip, out[i].Zone)
		})
	}
	wg.Wait()
	for _, r := range out {
		attrs := metric.WithAttributes(attribute.String("zone", r.Zone), attribute.String("ip", r.IP))
		d.checks.Add(context.Background(), 1, metric.WithAttributes(attribute.String("zone", r.Zone), attribute.String("result", r.Status)))
		switch r.Status {
		case admin.DNSBLListed:
			d.listed.Record(context.Background(), 1, attrs)
		case admin.DNSBLNotListed:
			d.listed.Record(context.Background(), 0, attrs)
		}
	}
	return out
}

// DNSBLQuery is the name RFC 5782 looks up for ip in zone: reversed octets
// for IPv4 ("2.0.0.127.zen.spamhaus.org"), reversed nibbles for IPv6.
func DNSBLQuery(ip netip.Addr, zone string) string {
	arpa, _ := dns.ReverseAddr(ip.Unmap().String())
	arpa = strings.TrimSuffix(arpa, ".")
	arpa = strings.TrimSuffix(strings.TrimSuffix(arpa, ".in-addr.arpa"), ".ip6.arpa")
	return arpa + "." + strings.TrimSuffix(zone, ".")
}

func (d *Doctor) lookup(ctx context.Context, res *mx.Resolver, ip netip.Addr, zone string) admin.DNSBLResult {
	r := admin.DNSBLResult{IP: ip.String(), Zone: zone, Query: DNSBLQuery(ip, zone)}
	start := time.Now()
	defer func() { r.DurationMS = ms(time.Since(start)) }()
	rrs, err := res.Lookup(ctx, r.Query, dns.TypeA)
	if notFound(err) {
		r.Status = admin.DNSBLNotListed
		return r
	}
	if err != nil {
		r.Status, r.Error = admin.DNSBLError, errText(err)
		return r
	}
	if len(rrs) == 0 {
		// NODATA: the name exists (other records) but is not listed.
		r.Status = admin.DNSBLNotListed
		return r
	}
	loop := netip.MustParsePrefix("127.0.0.0/8")
	refused := netip.MustParsePrefix("127.255.255.0/24")
	for _, rr := range rrs {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		addr, _ := netip.AddrFromSlice(a.A.To4())
		switch {
		case refused.Contains(addr):
			r.Status = admin.DNSBLError
			r.Error = fmt.Sprintf("the zone refused the query (answer %s: the resolver is public, unregistered or over its quota)", addr)
			return r
		case !loop.Contains(addr):
			r.Status = admin.DNSBLError
			r.Error = fmt.Sprintf("answer %s is outside 127.0.0.0/8: the zone is not a working DNSBL (expired or wildcarded)", addr)
			return r
		}
		r.Codes = append(r.Codes, addr.String())
	}
	if len(r.Codes) == 0 {
		r.Status = admin.DNSBLNotListed
		return r
	}
	r.Status = admin.DNSBLListed
	if txts, err := lookupTXT(ctx, res, r.Query); err == nil {
		r.Text = strings.Join(txts, " ")
	}
	return r
}

// MonitorDNSBL checks the egress IPs every interval until ctx ends, so the
// sluice_deliverer_dnsbl_listed gauge stays current for alerts. The first
// check runs after one minute, not at once: a deliverer that restarts in a
// loop should not hammer the blocklists. Listings are logged as warnings.
func (d *Doctor) MonitorDNSBL(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if interval <= 0 || len(d.cfg.DNSBLZones) == 0 || len(d.cfg.EgressIPs) == 0 {
		return
	}
	t := time.NewTimer(min(time.Minute, interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, defaultBudget)
		for _, r := range d.lookupAll(cctx, d.resolver()) {
			if r.Status == admin.DNSBLListed {
				log.Warn("egress IP listed in a DNSBL", "ip", r.IP, "zone", r.Zone, "codes", r.Codes, "text", r.Text)
			}
		}
		cancel()
		t.Reset(interval)
	}
}
