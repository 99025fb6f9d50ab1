package main

import (
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/proto/admin"
)

// The table and details of `sluice doctor tls DOMAIN`.

var tlsColumns = []string{"DELIVERER", "MODE", "MX DNSSEC", "MTA-STS", "TLSA", "MX USABLE", "VERDICT"}

func tlsCells(r *admin.TLSReport) []string {
	sts := "none"
	if p := r.MTASTS.Policy; p != nil {
		sts = p.Mode + " (id " + p.ID + ")"
	}
	secure, present := 0, 0
	usable := 0
	for _, h := range r.Hosts {
		if len(h.TLSA) > 0 {
			present++
		}
		if h.TLSADNSSEC == "secure" {
			secure++
		}
		if h.Deliverable {
			usable++
		}
	}
	tlsa := "none"
	if present > 0 {
		tlsa = fmt.Sprintf("%d/%d hosts, %d signed", present, len(r.Hosts), secure)
	}
	mxSec := diagOr(r.MXDNSSEC, "-")
	if r.Static {
		mxSec = "static route"
	}
	if r.MXError != "" {
		return []string{diagOr(r.Mode, "-"), "MX lookup failed", diagCell(sts, 30), "-", "-"}
	}
	return []string{r.Mode, diagCell(mxSec, 24), diagCell(sts, 30), tlsa, fmt.Sprintf("%d/%d", usable, len(r.Hosts))}
}

func tlsDetails(r *admin.TLSReport) []string {
	var out []string
	if r.MXError != "" {
		out = append(out, "MX of "+r.Domain+": "+r.MXError)
	}
	out = append(out, fmt.Sprintf("%s: tls_policy %s; DNSSEC from %s: MX %s", r.Domain, diagOr(r.Mode, "-"), r.DNSSECServer, diagOr(r.MXDNSSEC, "-")))
	if p := r.MTASTS.Policy; p != nil {
		out = append(out, fmt.Sprintf("MTA-STS: mode %s, mx %s, max_age %d (%s)", p.Mode, strings.Join(p.MX, ", "), p.MaxAge, r.MTASTS.Note))
	} else {
		out = append(out, "MTA-STS: none ("+r.MTASTS.Note+")")
	}
	for _, h := range r.Hosts {
		tlsa := "no TLSA"
		if len(h.TLSA) > 0 {
			tlsa = "TLSA " + strings.Join(h.TLSA, ", ")
		}
		out = append(out, fmt.Sprintf("%s:%d: %s at %s (%s); policy %s: %s", h.Host, h.Port, tlsa, h.TLSAName, h.TLSADNSSEC, h.Policy, h.Check))
		if h.Note != "" {
			out = append(out, "    "+h.Note)
		}
		if p := h.Probe; p != nil && p.TLS != nil {
			out = append(out, fmt.Sprintf("    TLS %s %s; certificate %s, issuer %s, until %s", p.TLS.Version, p.TLS.Cipher, p.TLS.Subject, p.TLS.Issuer, diagDate(p.TLS.NotAfter)))
		} else if p != nil && len(p.EHLO) > 0 && !offersCap(p.EHLO, "STARTTLS") {
			out = append(out, "    no STARTTLS offered")
		}
	}
	if r.Budget.Exhausted {
		out = append(out, fmt.Sprintf("the check ran out of time after %dms; raise -wait", r.Budget.ElapsedMS))
	}
	return out
}
