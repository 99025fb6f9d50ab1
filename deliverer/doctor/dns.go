package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/proto/admin"
)

// DNS checks the sending identity in DNS:
//
//   - the EHLO name has A/AAAA records, and they include every egress IP
//     (receivers compare the EHLO name with the connecting address);
//   - every egress IP has a PTR record, one of whose names resolves back to
//     it: forward-confirmed reverse DNS ("iprev", RFC 8601 §3), which large
//     receivers require and which should be the EHLO name;
//   - every sending domain has MX records (RFC 7505 null MX counts as a
//     decision, not an absence) and address records.
func (d *Doctor) DNS(ctx context.Context, req admin.DoctorRequest) admin.DNSReport {
	ctx, cancel, _ := budget(ctx, req)
	defer cancel()
	rep := admin.DNSReport{Deliverer: d.identity(), Reverse: []admin.ReverseDNS{}, Domains: []admin.SendingDomain{}}
	findings := d.egressFindings()

	helo := strings.ToLower(strings.TrimSuffix(d.cfg.Hostname, "."))
	rep.HELO.Name = helo
	heloAddrs, err := d.dns.addrs(ctx, helo)
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
		rev, fs := d.reverse(ctx, ip, helo)
		rep.Reverse = append(rep.Reverse, rev)
		findings = append(findings, fs...)
	}

	for _, dom := range d.cfg.SendingDomains {
		sd, fs := d.sendingDomain(ctx, dom)
		rep.Domains = append(rep.Domains, sd)
		findings = append(findings, fs...)
	}
	if len(d.cfg.SendingDomains) == 0 {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: "deliverer.sending_domains",
			Problem: "no sending domains are configured, so their MX and A records were not checked",
			Fix:     "list the domains you send mail for in deliverer.sending_domains"})
	}
	rep.Findings = nonNil(findings)
	rep.Verdict = verdict(findings, fmt.Sprintf("EHLO name, reverse DNS of %d egress IP(s) and %d sending domain(s) are right",
		len(d.cfg.EgressIPs), len(d.cfg.SendingDomains)))
	return rep
}

// reverse checks the PTR records of one egress IP and that they resolve
// back to it.
func (d *Doctor) reverse(ctx context.Context, ip netip.Addr, helo string) (admin.ReverseDNS, []admin.Finding) {
	rev := admin.ReverseDNS{IP: ip.String(), PTR: []admin.DNSName{}}
	arpa, _ := dns.ReverseAddr(ip.String())
	arpa = strings.TrimSuffix(arpa, ".")
	fixPTR := fmt.Sprintf("%s. IN PTR %s. (ask whoever owns %s: the ISP or hosting provider)", arpa, helo, ip)
	names, err := d.dns.LookupAddr(ctx, ip.String())
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
		as, err := d.dns.addrs(ctx, name)
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

// sendingDomain checks that a sending domain has MX and address records.
func (d *Doctor) sendingDomain(ctx context.Context, dom string) (admin.SendingDomain, []admin.Finding) {
	dom = strings.ToLower(strings.TrimSuffix(dom, "."))
	sd := admin.SendingDomain{Domain: dom, MX: []string{}, Addrs: []string{}}
	mxs, err := d.dns.LookupMX(ctx, dom)
	if notFound(err) {
		sd.Error = "the domain does not exist (NXDOMAIN)"
		return sd, []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("sending domain %s does not exist in DNS (NXDOMAIN): receivers reject its mail", dom),
			Fix:     fmt.Sprintf("create the zone %s, or remove it from deliverer.sending_domains", dom)}}
	}
	if err != nil {
		sd.Error = errText(err)
		return sd, []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("cannot look up the MX records of %s: %s", dom, errText(err))}}
	}
	var fs []admin.Finding
	for _, m := range mxs {
		sd.MX = append(sd.MX, fmt.Sprintf("%d %s", m.Pref, strings.TrimSuffix(m.Host, ".")))
	}
	if len(mxs) == 0 {
		fs = append(fs, admin.Finding{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("sending domain %s has no MX record: bounces to its senders cannot be delivered, and receivers check that", dom),
			Fix:     fmt.Sprintf("%s. IN MX 10 <your inbound mail host>. (or \"%s. IN MX 0 .\" if it never receives mail, RFC 7505)", dom, dom)})
	}
	as, err := d.dns.addrs(ctx, dom)
	sd.Addrs = addrStrings(as)
	if err != nil {
		sd.Error = errText(err)
		fs = append(fs, admin.Finding{Severity: admin.SeverityWarning, Subject: dom,
			Problem: fmt.Sprintf("cannot look up the address records of %s: %s", dom, errText(err))})
	} else if len(as) == 0 {
		fix := fmt.Sprintf("%s. IN A <address of its web site or mail host>", dom)
		if len(d.cfg.EgressIPs) > 0 {
			fix = addrRecord(dom, d.cfg.EgressIPs[0]) + " (or any address that belongs to the domain)"
		}
		fs = append(fs, admin.Finding{Severity: admin.SeverityWarning, Subject: dom,
			Problem: fmt.Sprintf("sending domain %s has no A/AAAA record; some receivers score that as a throwaway domain", dom),
			Fix:     fix})
	}
	return sd, fs
}

func nonNil(f []admin.Finding) []admin.Finding {
	if f == nil {
		return []admin.Finding{}
	}
	return f
}
