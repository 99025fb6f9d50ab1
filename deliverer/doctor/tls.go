package doctor

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/proto/admin"
)

// TLS checks a destination's TLS as a delivery from this host would meet
// it: the mode deliverer.tls_policy gives the domain, the DNSSEC status of
// its MX answer, its MTA-STS policy (fetched now; deliveries may still use
// a cached one), and for each of the first MX hosts its TLSA records, the
// requirement the policy makes of it, and a probe (connect, banner, EHLO,
// STARTTLS) whose certificate is judged by that requirement.
func (d *Doctor) TLS(ctx context.Context, req admin.DoctorRequest) admin.TLSReport {
	start := time.Now()
	ctx, cancel, step := budget(ctx, req)
	defer cancel()
	domain := normDomain(req.Domain)
	rep := admin.TLSReport{Deliverer: d.identity(), Domain: domain, Hosts: []admin.TLSHost{}}
	var findings []admin.Finding
	finish := func() admin.TLSReport {
		rep.Findings = nonNil(findings)
		rep.Budget = admin.BudgetInfo{ElapsedMS: ms(time.Since(start)), Exhausted: ctx.Err() != nil}
		return rep
	}
	cfg := d.cfg.TLSPolicy
	if cfg.Default == "" {
		cfg = tlspolicy.DefaultConfig()
	}
	// Nothing is remembered from one check to the next.
	cfg.Recheck = 0
	opts := d.cfg.TLSOptions
	opts.DNSServer, opts.DNSTimeout = d.cfg.DNSServer, min(d.cfg.DNSTimeout, step)
	eng, err := tlspolicy.New(cfg, opts)
	if err != nil {
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: "deliverer.tls_policy", Problem: err.Error()})
		rep.Verdict = verdict(findings, "")
		return finish()
	}
	defer eng.Close()
	rep.DNSSECServer = eng.DNSSECServer()

	route, lookups, err := d.route(ctx, d.resolver(), domain)
	if err != nil {
		rep.MXError = routeError(err)
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
			Problem: fmt.Sprintf("cannot find the mail servers of %s: %s", domain, rep.MXError)})
		rep.Verdict = verdict(findings, "")
		return finish()
	}
	rep.Static = route.Static
	dec := eng.Decide(ctx, domain, route.Static)
	rep.Mode = string(dec.Mode)
	if !route.Static {
		rep.MXDNSSEC = eng.MXDNSSEC(ctx, domain)
	}
	if p, note := dec.STS(ctx); p != nil {
		rep.MTASTS.Policy = &admin.MTASTSPolicy{ID: dec.STSID(ctx), Mode: string(p.Mode), MX: p.MX, MaxAge: p.MaxAge}
		rep.MTASTS.Note = note
	} else {
		rep.MTASTS.Note = note
	}

	rep.Hosts = make([]admin.TLSHost, len(route.Hosts))
	var wg sync.WaitGroup
	for i, h := range route.Hosts {
		wg.Go(func() {
			th := admin.TLSHost{Host: h.Name, Port: h.Port}
			var recs []string
			name, tlsa, st := eng.TLSA(ctx, h.Name, h.Port)
			for _, r := range tlsa {
				recs = append(recs, r.String())
			}
			th.TLSAName, th.TLSA, th.TLSADNSSEC = name, recs, st
			r := dec.Host(ctx, h.Name, h.Port)
			th.Policy, th.Required, th.Refused, th.Note = r.Name(), r.Required, r.Refused, r.Note
			if r.Refused != "" {
				th.Check = "FAILED: " + r.Refused
				rep.Hosts[i] = th
				return
			}
			if len(h.Addrs) == 0 {
				th.Check = "FAILED: the MX host " + hostProblem(lookups[i])
				rep.Hosts[i] = th
				return
			}
			var verdictText string
			var failed bool
			p := d.probeTLS(ctx, h, netip.AddrPortFrom(h.Addrs[0], uint16(h.Port)), step, func(cs tls.ConnectionState) {
				by, err := r.Check(cs)
				switch {
				case err != nil && r.Required:
					verdictText, failed = "FAILED: "+err.Error(), true
				case err != nil:
					verdictText = "encrypted; reported: " + err.Error()
				case by != "":
					verdictText = "verified (" + by + ")"
				default:
					verdictText = "encrypted, not verified"
				}
			})
			th.Probe = &p
			switch {
			case !p.Reached:
				th.Check = "FAILED: not reached: " + failedStep(p)
			case p.TLS == nil && offers(p.EHLO, "STARTTLS"):
				th.Check = "FAILED: STARTTLS offered but the handshake failed: " + failedStep(p)
			case p.TLS == nil && r.Required:
				th.Check = fmt.Sprintf("FAILED: %s: %s does not offer STARTTLS; TLS is required", r.Name(), h.Name)
			case p.TLS == nil:
				th.Check = "clear text"
				th.Deliverable = true
			default:
				th.Check, th.Deliverable = verdictText, !failed
			}
			rep.Hosts[i] = th
		})
	}
	wg.Wait()
	findings = append(findings, tlsPolicyFindings(&rep)...)
	ok := 0
	for _, h := range rep.Hosts {
		if h.Deliverable {
			ok++
		}
	}
	rep.Verdict = verdict(findings, fmt.Sprintf("%d of %d MX host(s) of %s usable under policy %s", ok, len(rep.Hosts), domain, rep.Mode))
	return finish()
}

// tlsPolicyFindings grades a tls report.
func tlsPolicyFindings(rep *admin.TLSReport) []admin.Finding {
	var out []admin.Finding
	usable := 0
	for _, h := range rep.Hosts {
		if h.Deliverable {
			usable++
		}
	}
	for _, h := range rep.Hosts {
		if !h.Deliverable && strings.HasPrefix(h.Check, "FAILED: ") {
			sev := admin.SeverityWarning
			if usable == 0 {
				sev = admin.SeverityError
			}
			out = append(out, admin.Finding{Severity: sev, Subject: h.Host,
				Problem: fmt.Sprintf("MX %s cannot receive mail from us under policy %s: %s", h.Host, h.Policy, strings.TrimPrefix(h.Check, "FAILED: "))})
		}
		if h.TLSADNSSEC == "insecure" {
			out = append(out, admin.Finding{Severity: admin.SeverityWarning, Subject: h.TLSAName,
				Problem: fmt.Sprintf("TLSA records at %s are not DNSSEC-validated (no AD bit from %s), so DANE ignores them", h.TLSAName, rep.DNSSECServer),
				Fix:     "sign the zone with DNSSEC, or set deliverer.tls_policy.dnssec_server to a validating resolver"})
		}
		if strings.HasPrefix(h.Check, "encrypted; reported: ") {
			out = append(out, admin.Finding{Severity: admin.SeverityWarning, Subject: h.Host,
				Problem: fmt.Sprintf("MX %s would fail the domain's MTA-STS policy if it were enforced: %s", h.Host, strings.TrimPrefix(h.Check, "encrypted; reported: "))})
		}
	}
	if p := rep.MTASTS.Policy; p != nil && p.Mode == "enforce" && rep.Mode != string(tlspolicy.ModeMTASTS) && rep.Mode != string(tlspolicy.ModeDANE) {
		out = append(out, admin.Finding{Severity: admin.SeverityWarning, Subject: rep.Domain,
			Problem: fmt.Sprintf("%s publishes an enforced MTA-STS policy, which tls_policy mode %s does not apply", rep.Domain, rep.Mode),
			Fix:     "set deliverer.tls_policy.default (or domains." + rep.Domain + ") to mta-sts or dane"})
	}
	return out
}
