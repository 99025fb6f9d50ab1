package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/admin"
)

// DNS checks the sending identity in DNS, and the mail records of domains:
//
//   - the EHLO name has A/AAAA records, and they include every egress IP
//     (receivers compare the EHLO name with the connecting address);
//   - every egress IP has a PTR record, one of whose names resolves back to
//     it: forward-confirmed reverse DNS ("iprev", RFC 8601 §3), which large
//     receivers require and which should be the EHLO name;
//   - every domain of the request, or every sending domain when it names
//     none, can receive mail the way a delivery would reach it (see
//     checkDomain).
func (d *Doctor) DNS(ctx context.Context, req admin.DoctorRequest) admin.DNSReport {
	ctx, cancel, _ := budget(ctx, req)
	defer cancel()
	res := d.resolver()
	rep := admin.DNSReport{Deliverer: d.identity(), Reverse: []admin.ReverseDNS{}, Domains: []admin.SendingDomain{}}
	findings := d.egressFindings()

	helo := strings.ToLower(strings.TrimSuffix(d.cfg.Hostname, "."))
	rep.HELO.Name = helo
	heloAddrs, err := addrs(ctx, res, helo)
	rep.HELO.Addrs = addrStrings(heloAddrs)
	switch {
	case err != nil:
		rep.HELO.Error = errText(err)
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: helo,
			Problem: fmt.Sprintf("cannot resolve the EHLO name %s: %s", helo, errText(err)),
			Fix:     "check the DNS server " + d.cfg.DNSServer + " and the zone of " + helo})
	case len(heloAddrs) == 0:
		for _, ip := range d.cfg.EgressIPs {
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: helo,
				Problem: fmt.Sprintf("the EHLO name %s has no A/AAAA record", helo),
				Fix:     addrRecord(helo, ip)})
		}
	default:
		rep.HELO.MatchesEgress = true
		for _, ip := range d.cfg.EgressIPs {
			if !containsAddr(heloAddrs, ip) {
				rep.HELO.MatchesEgress = false
				findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: helo,
					Problem: fmt.Sprintf("the EHLO name %s resolves to %s, not to the egress IP %s", helo, strings.Join(rep.HELO.Addrs, ", "), ip),
					Fix:     addrRecord(helo, ip)})
			}
		}
	}

	for _, ip := range d.cfg.EgressIPs {
		rev, fs := d.reverse(ctx, res, ip, helo)
		rep.Reverse = append(rep.Reverse, rev)
		findings = append(findings, fs...)
	}

	domains := d.dnsDomains(req)
	checked := make([]domainResult, len(domains))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelDomains)
	for i, dom := range domains {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			checked[i].sd, checked[i].findings = d.checkDomain(ctx, res, dom.name, dom.sending)
		})
	}
	wg.Wait()
	for _, c := range checked {
		rep.Domains = append(rep.Domains, c.sd)
		findings = append(findings, c.findings...)
	}
	if len(domains) == 0 {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: "deliverer.sending_domains",
			Problem: "no sending domains are configured, so their MX and A records were not checked",
			Fix:     "list the domains you send mail for in deliverer.sending_domains"})
	}
	rep.Findings = nonNil(findings)
	what := "sending domain(s)"
	if len(req.Domains) > 0 {
		what = "domain(s)"
	}
	rep.Verdict = verdict(findings, fmt.Sprintf("EHLO name, reverse DNS of %d egress IP(s) and %d %s are right",
		len(d.cfg.EgressIPs), len(domains), what))
	return rep
}

// maxParallelDomains bounds the domains checked at once.
const maxParallelDomains = 8

type domainResult struct {
	sd       admin.SendingDomain
	findings []admin.Finding
}

type dnsDomain struct {
	name    string
	sending bool
}

// dnsDomains are the domains a dns check looks at: those of the request
// (the server has checked that they are domain names), else the sending
// domains, each once.
func (d *Doctor) dnsDomains(req admin.DoctorRequest) []dnsDomain {
	sending := map[string]bool{}
	for _, s := range d.cfg.SendingDomains {
		sending[strings.ToLower(strings.TrimSuffix(s, "."))] = true
	}
	names := req.Domains
	if len(names) == 0 {
		names = d.cfg.SendingDomains
	}
	var out []dnsDomain
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, dnsDomain{name: n, sending: sending[n]})
	}
	return out
}

// reverse checks the PTR records of one egress IP and that they resolve
// back to it.
func (d *Doctor) reverse(ctx context.Context, res *mx.Resolver, ip netip.Addr, helo string) (admin.ReverseDNS, []admin.Finding) {
	rev := admin.ReverseDNS{IP: ip.String(), PTR: []admin.DNSName{}}
	arpa, _ := dns.ReverseAddr(ip.String())
	arpa = strings.TrimSuffix(arpa, ".")
	fixPTR := fmt.Sprintf("%s. IN PTR %s. (ask whoever owns %s: the ISP or hosting provider)", arpa, helo, ip)
	names, err := lookupPTR(ctx, res, ip.String())
	if err != nil && !notFound(err) {
		rev.Error = errText(err)
		return rev, []admin.Finding{{Severity: admin.SeverityError, Subject: ip.String(),
			Problem: fmt.Sprintf("cannot look up the PTR record of %s: %s", ip, errText(err)), Fix: fixPTR}}
	}
	if len(names) == 0 {
		return rev, []admin.Finding{{Severity: admin.SeverityError, Subject: ip.String(),
			Problem: fmt.Sprintf("egress IP %s has no PTR record; many receivers refuse mail from such addresses", ip), Fix: fixPTR}}
	}
	var fs []admin.Finding
	for _, n := range names {
		name := strings.ToLower(strings.TrimSuffix(n, "."))
		as, err := addrs(ctx, res, name)
		dn := admin.DNSName{Name: name, Addrs: addrStrings(as)}
		if err != nil {
			dn.Error = errText(err)
		}
		if containsAddr(as, ip) {
			dn.MatchesEgress = true
			rev.ForwardConfirmed = true
			if name == helo {
				rev.MatchesHELO = true
			}
		}
		rev.PTR = append(rev.PTR, dn)
	}
	if !rev.ForwardConfirmed {
		p := rev.PTR[0]
		got := "has no A/AAAA record"
		if p.Error != "" {
			got = "cannot be resolved: " + p.Error
		} else if len(p.Addrs) > 0 {
			got = "resolves to " + strings.Join(p.Addrs, ", ")
		}
		fs = append(fs, admin.Finding{Severity: admin.SeverityError, Subject: ip.String(),
			Problem: fmt.Sprintf("PTR of %s is %s, which %s: reverse DNS is not forward-confirmed", ip, p.Name, got),
			Fix:     addrRecord(p.Name, ip)})
	} else if !rev.MatchesHELO {
		fs = append(fs, admin.Finding{Severity: admin.SeverityWarning, Subject: ip.String(),
			Problem: fmt.Sprintf("PTR of %s (%s) is not the EHLO name %s", ip, rev.PTR[0].Name, helo),
			Fix:     fmt.Sprintf("set deliverer.hostname to a confirmed PTR name, or %s", fixPTR)})
	}
	return rev, fs
}

func nonNil(f []admin.Finding) []admin.Finding {
	if f == nil {
		return []admin.Finding{}
	}
	return f
}
