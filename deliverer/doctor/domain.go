package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/admin"
)

// checkDomain looks at a domain's mail records the way a delivery to it
// would (package mx), and for a sending domain also the way a receiver
// judges its mail:
//
//   - a domain that does not exist: mail to it bounces;
//   - MX records that cannot be looked up (timeout, SERVFAIL): mail to it
//     waits in the queue;
//   - a null MX, a single "0 ." (RFC 7505): the domain accepts no mail;
//     receivers may also refuse mail from it (§4.2);
//   - no MX but A/AAAA records: mail goes to those addresses (implicit MX,
//     RFC 5321 §5.1), which is not a finding; neither MX nor addresses:
//     the domain cannot receive mail;
//   - each MX host is looked up like a delivery looks it up, and one
//     without an address is named with the reason (NXDOMAIN, no A/AAAA
//     record, SERVFAIL, timeout): deliveries skip it, and when no MX host
//     has an address they wait until one has, until the mail expires;
//   - a sending domain without A/AAAA records looks like a throwaway
//     domain to some receivers.
func (d *Doctor) checkDomain(ctx context.Context, res *mx.Resolver, dom string, sending bool) (admin.SendingDomain, []admin.Finding) {
	sd := admin.SendingDomain{Domain: dom, Sending: sending, MX: []string{}, Addrs: []string{}}
	fs := d.domainFindings(ctx, res, &sd)
	sd.Severity = admin.SeverityOK
	for _, f := range fs {
		if f.Severity.Rank() > sd.Severity.Rank() {
			sd.Severity = f.Severity
		}
	}
	return sd, fs
}

func (d *Doctor) domainFindings(ctx context.Context, res *mx.Resolver, sd *admin.SendingDomain) []admin.Finding {
	dom := sd.Domain
	what := "domain " + dom
	if sd.Sending {
		what = "sending domain " + dom
	}
	mxFix := fmt.Sprintf("%s. IN MX 10 <your inbound mail host>. (or \"%s. IN MX 0 .\" if it never receives mail, RFC 7505)", dom, dom)
	rrs, err := res.Lookup(ctx, dom, dns.TypeMX)
	switch {
	case notFound(err):
		sd.Error = "the domain does not exist (NXDOMAIN)"
		if sd.Sending {
			return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
				Problem: fmt.Sprintf("sending domain %s does not exist in DNS (NXDOMAIN): receivers reject its mail", dom),
				Fix:     fmt.Sprintf("create the zone %s, or remove it from deliverer.sending_domains", dom)}}
		}
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("domain %s does not exist in DNS (NXDOMAIN): mail to it bounces (550 5.1.2)", dom)}}
	case err != nil:
		sd.Error = errText(err)
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("cannot look up the MX records of %s: %s; mail to it waits in the queue until a lookup succeeds", dom, lookupDetail(err)),
			Fix:     d.nameServerFix(dom, dns.TypeMX)}}
	}

	var hosts []*dns.MX
	nulls := 0
	for _, rr := range rrs {
		m, ok := rr.(*dns.MX)
		if !ok {
			continue
		}
		if m.Mx == "." {
			nulls++
			sd.MX = append(sd.MX, fmt.Sprintf("%d .", m.Preference))
			continue
		}
		sd.MX = append(sd.MX, fmt.Sprintf("%d %s", m.Preference, strings.ToLower(strings.TrimSuffix(m.Mx, "."))))
		hosts = append(hosts, m)
	}
	var fs []admin.Finding
	switch {
	case nulls > 0 && len(hosts) == 0 && (nulls > 1 || sd.MX[0] != "0 ."):
		// Deliveries take only a single "0 ." for a null MX (RFC 7505
		// §3); other "." records name no host, so there is none to try.
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("the MX records of %s (%s) name no host and are not a null MX, which is a single \"0 .\" (RFC 7505 §3): mail to it waits in the queue until it expires", dom, strings.Join(sd.MX, ", ")),
			Fix:     mxFix}}
	case nulls > 0 && len(hosts) == 0:
		sd.NullMX = true
		if sd.Sending {
			fs = append(fs, admin.Finding{Severity: admin.SeverityError, Subject: dom,
				Problem: fmt.Sprintf("sending domain %s publishes a null MX (RFC 7505): it accepts no mail, so bounces to its senders cannot be delivered and receivers may refuse its mail (550 5.7.27)", dom),
				Fix:     fmt.Sprintf("%s. IN MX 10 <your inbound mail host>. in place of \"%s. IN MX 0 .\"", dom, dom)})
			return append(fs, d.sendingAddrFindings(ctx, res, sd)...)
		}
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("domain %s accepts no mail: it publishes a null MX (RFC 7505), so mail to it bounces at once (556 5.1.10)", dom),
			Fix:     "nothing to fix on this side: ask the recipient for another address"}}
	case nulls > 0:
		fs = append(fs, admin.Finding{Severity: admin.SeverityWarning, Subject: dom,
			Problem: fmt.Sprintf("the MX records of %s mix a null MX (\"0 .\") with real ones; a null MX must stand alone (RFC 7505 §3), so deliveries ignore it", dom),
			Fix:     fmt.Sprintf("remove \"%s. IN MX 0 .\"", dom)})
	case len(hosts) == 0:
		return d.implicitMX(ctx, res, sd, what, mxFix)
	}

	sd.Hosts = lookupHosts(ctx, res, hosts)
	working := 0
	for _, h := range sd.Hosts {
		if len(h.Addrs) > 0 {
			working++
		}
	}
	for _, h := range sd.Hosts {
		if len(h.Addrs) > 0 {
			continue
		}
		sev, then := admin.SeverityWarning, fmt.Sprintf("deliveries to %s skip it for its other MX hosts", dom)
		if working == 0 {
			sev, then = admin.SeverityError, fmt.Sprintf("no MX host of %s has an address, so mail to it waits in the queue until one has, and bounces when it expires", dom)
		}
		f := admin.Finding{Severity: sev, Subject: h.Name,
			Problem: fmt.Sprintf("MX host %s of %s %s: %s", h.Name, dom, hostProblem(h), then),
			Fix:     fmt.Sprintf("%s. IN A <address of the mail server>, or remove \"%s. IN MX %d %s.\"", h.Name, dom, h.Preference, h.Name)}
		if h.Lookup != admin.LookupNXDomain && h.Lookup != admin.LookupNoData {
			f.Fix = d.nameServerFix(h.Name, dns.TypeA)
		}
		fs = append(fs, f)
	}
	if sd.Sending {
		fs = append(fs, d.sendingAddrFindings(ctx, res, sd)...)
	}
	return fs
}

// implicitMX handles a domain without MX records: its own addresses take
// their place (RFC 5321 §5.1).
func (d *Doctor) implicitMX(ctx context.Context, res *mx.Resolver, sd *admin.SendingDomain, what, mxFix string) []admin.Finding {
	dom := sd.Domain
	as, err := res.LookupHost(ctx, dom)
	sd.Addrs = addrStrings(as)
	switch {
	case len(as) > 0:
		sd.ImplicitMX = true
		return nil
	case err != nil && !notFound(err):
		sd.Error = errText(err)
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("%s has no MX record, and its A/AAAA records, where mail goes instead (RFC 5321 §5.1), cannot be looked up: %s; mail to it waits in the queue until a lookup succeeds", what, lookupDetail(err)),
			Fix:     d.nameServerFix(dom, dns.TypeA)}}
	case sd.Sending:
		return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
			Problem: fmt.Sprintf("sending domain %s has no MX and no A/AAAA record: bounces to its senders cannot be delivered, and receivers check that", dom),
			Fix:     mxFix}}
	}
	return []admin.Finding{{Severity: admin.SeverityError, Subject: dom,
		Problem: fmt.Sprintf("domain %s has no MX and no A/AAAA record: it cannot receive mail, so mail to it bounces (550 5.1.2)", dom)}}
}

// sendingAddrFindings checks that a sending domain has addresses of its
// own: some receivers score a domain without them as a throwaway.
func (d *Doctor) sendingAddrFindings(ctx context.Context, res *mx.Resolver, sd *admin.SendingDomain) []admin.Finding {
	dom := sd.Domain
	as, err := addrs(ctx, res, dom)
	sd.Addrs = addrStrings(as)
	if err != nil {
		return []admin.Finding{{Severity: admin.SeverityWarning, Subject: dom,
			Problem: fmt.Sprintf("cannot look up the address records of %s: %s", dom, errText(err))}}
	}
	if len(as) > 0 {
		return nil
	}
	fix := fmt.Sprintf("%s. IN A <address of its web site or mail host>", dom)
	if len(d.cfg.EgressIPs) > 0 {
		fix = addrRecord(dom, d.cfg.EgressIPs[0]) + " (or any address that belongs to the domain)"
	}
	return []admin.Finding{{Severity: admin.SeverityWarning, Subject: dom,
		Problem: fmt.Sprintf("sending domain %s has no A/AAAA record; some receivers score that as a throwaway domain", dom),
		Fix:     fix}}
}

// lookupHosts looks up the addresses of MX hosts concurrently, as a
// delivery would (mx.Resolver.LookupHost asks what Addrs asks), and
// returns them by preference.
func lookupHosts(ctx context.Context, res *mx.Resolver, mxs []*dns.MX) []admin.MXHost {
	out := make([]admin.MXHost, len(mxs))
	var wg sync.WaitGroup
	for i, m := range mxs {
		wg.Go(func() {
			h := admin.MXHost{Name: strings.ToLower(strings.TrimSuffix(m.Mx, ".")), Preference: m.Preference}
			as, err := res.LookupHost(ctx, h.Name)
			h.Addrs = addrStrings(as)
			h.Lookup = lookupStatus(err, len(as) > 0)
			if err != nil {
				h.Error = errText(err)
			}
			out[i] = h
		})
	}
	wg.Wait()
	slices.SortStableFunc(out, func(a, b admin.MXHost) int { return int(a.Preference) - int(b.Preference) })
	return out
}

// hostProblem says why an MX host has no address.
func hostProblem(h admin.MXHost) string {
	switch h.Lookup {
	case admin.LookupNoData:
		return "has no A/AAAA record"
	case admin.LookupNXDomain:
		return "does not exist (NXDOMAIN)"
	case admin.LookupServFail:
		return fmt.Sprintf("cannot be resolved: the DNS server answered %s", h.Error)
	case admin.LookupTimeout:
		return fmt.Sprintf("cannot be resolved: the lookup timed out (%s)", h.Error)
	}
	return "cannot be resolved: " + h.Error
}

// lookupDetail says why a lookup failed: "the DNS server answered
// SERVFAIL", "the lookup timed out (no answer within 5s)".
func lookupDetail(err error) string {
	switch lookupStatus(err, false) {
	case admin.LookupServFail:
		return "the DNS server answered " + errText(err)
	case admin.LookupTimeout:
		return "the lookup timed out (" + errText(err) + ")"
	case admin.LookupNXDomain:
		return "it does not exist (NXDOMAIN)"
	}
	return errText(err)
}

// nameServerFix is the advice for a lookup that failed or timed out.
func (d *Doctor) nameServerFix(name string, qtype uint16) string {
	return fmt.Sprintf("check the name servers of %s (dig +trace %s %s) and the DNS server %s (deliverer.dns_server)",
		name, name, dns.TypeToString[qtype], d.cfg.DNSServer)
}
