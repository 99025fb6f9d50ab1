package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sluice-mta/sluice/cli/doctor"
	"github.com/sluice-mta/sluice/proto/admin"
)

// printDoctor prints the answers of one check: a table with one row per
// deliverer, the details, the findings with their fixes, and a verdict
// line. It reports whether the check failed (an error verdict, or a
// deliverer that did not answer properly).
func printDoctor(w io.Writer, check string, answers []doctor.Answer, asJSON bool, paint diagPainter) (bool, error) {
	failed := false
	rows := make([]doctor.Report, 0, len(answers))
	for _, a := range answers {
		r := doctor.Decode(check, a)
		if r.Verdict.Severity == admin.SeverityError {
			failed = true
		}
		rows = append(rows, r)
	}
	if asJSON {
		for _, r := range rows {
			if r.Err != "" {
				line := map[string]any{"deliverer": admin.DelivererIdentity{ServiceID: r.ID, Instance: r.Instance, Hostname: r.Hostname}, "error": r.Err}
				if err := diagJSONLine(w, line); err != nil {
					return failed, err
				}
				continue
			}
			if err := diagJSONLine(w, r.Typed); err != nil {
				return failed, err
			}
		}
		return failed, nil
	}

	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(doctorColumns[check], "\t"))
	for _, r := range rows {
		cells := []string{r.Name()}
		if r.Err != "" {
			cells = append(cells, r.Err)
			for len(cells) < len(doctorColumns[check])-1 {
				cells = append(cells, "")
			}
		} else {
			cells = append(cells, doctorCells(r.Typed)...)
		}
		cells = append(cells, paint.severity(r.Verdict.Severity))
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return failed, err
	}

	// Details that do not fit in a row.
	var details []string
	for _, r := range rows {
		if r.Err == "" {
			for _, l := range doctorDetails(r.Typed) {
				details = append(details, r.Name()+"  "+l)
			}
		}
	}
	if len(details) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Details:")
		for _, d := range details {
			fmt.Fprintln(w, "  "+d)
		}
	}

	// Findings, each once with the deliverers that reported it: DNS facts
	// are usually the same from every host.
	type group struct {
		f     admin.Finding
		names []string
	}
	var groups []*group
	index := map[admin.Finding]*group{}
	for _, r := range rows {
		for _, f := range r.Findings {
			g, ok := index[f]
			if !ok {
				g = &group{f: f}
				index[f] = g
				groups = append(groups, g)
			}
			g.names = append(g.names, r.Name())
		}
	}
	if len(groups) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Findings:")
		for _, g := range groups {
			who := strings.Join(g.names, ", ")
			if len(g.names) == len(rows) && len(rows) > 1 {
				who = "all deliverers"
			}
			fmt.Fprintf(w, "  %s  %s (%s)\n", paint.severity(g.f.Severity), g.f.Problem, who)
			if g.f.Fix != "" {
				fmt.Fprintf(w, "      fix: %s\n", g.f.Fix)
			}
		}
	}

	// The verdict line.
	worst, bad := admin.SeverityOK, 0
	summary := ""
	for _, r := range rows {
		if r.Verdict.Severity.Rank() > worst.Rank() {
			worst, summary = r.Verdict.Severity, r.Verdict.Summary
		}
		if r.Verdict.Severity != admin.SeverityOK {
			bad++
		}
	}
	fmt.Fprintln(w)
	label := "doctor " + check
	if len(rows) > 0 {
		if d := rows[0].Domain(); d != "" {
			label += " " + d
		}
	}
	switch worst {
	case admin.SeverityOK:
		fmt.Fprintf(w, "%s: %s on %s: %s\n", label, paint.word("OK", admin.SeverityOK), plural(len(rows), "deliverer"), rows[0].Verdict.Summary)
	case admin.SeverityWarning:
		fmt.Fprintf(w, "%s: %s on %d of %s: %s\n", label, paint.word("WARNING", worst), bad, plural(len(rows), "deliverer"), summary)
	default:
		fmt.Fprintf(w, "%s: %s on %d of %s: %s\n", label, paint.word("FAIL", worst), bad, plural(len(rows), "deliverer"), summary)
	}
	return failed, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

var doctorColumns = map[string][]string{
	admin.DoctorDNS:     {"DELIVERER", "EHLO NAME", "EGRESS IP", "EHLO->IP", "PTR", "FCRDNS", "DOMAINS", "VERDICT"},
	admin.DoctorDNSBL:   {"DELIVERER", "EGRESS IP", "ZONES", "LISTED", "CLEAN", "ERRORS", "VERDICT"},
	admin.DoctorConnect: {"DELIVERER", "MX", "CONNECT", "BANNER", "STARTTLS", "CERTIFICATE", "VERDICT"},
	admin.DoctorAuth:    {"DELIVERER", "EGRESS IP", "SPF", "DKIM", "DMARC", "VERDICT"},
	admin.DoctorTLS:     tlsColumns,
}

func egress(d admin.DelivererIdentity) string {
	s := diagOr(strings.Join(d.EgressIPs, ","), "none")
	if d.EgressGuessed {
		s += " (guessed)"
	}
	return s
}

func okWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "NO"
}

// doctorCells are the middle cells of a row.
func doctorCells(report any) []string {
	switch r := report.(type) {
	case *admin.DNSReport:
		var ptrs []string
		fc := len(r.Reverse) > 0
		for _, rv := range r.Reverse {
			if len(rv.PTR) == 0 {
				ptrs = append(ptrs, "none")
			} else {
				ptrs = append(ptrs, rv.PTR[0].Name)
			}
			fc = fc && rv.ForwardConfirmed
		}
		domains := "-"
		if n := len(r.Domains); n > 0 {
			good := 0
			for _, d := range r.Domains {
				switch d.Severity {
				case admin.SeverityOK:
					good++
				case "":
					// A deliverer that does not grade domains yet.
					if len(d.MX) > 0 && len(d.Addrs) > 0 {
						good++
					}
				}
			}
			domains = fmt.Sprintf("%d/%d ok", good, n)
		}
		return []string{r.HELO.Name, egress(r.Deliverer), okWord(r.HELO.MatchesEgress), diagOr(strings.Join(ptrs, ","), "-"), okWord(fc), domains}
	case *admin.DNSBLReport:
		listed, clean, errs := 0, 0, 0
		for _, x := range r.Results {
			switch x.Status {
			case admin.DNSBLListed:
				listed++
			case admin.DNSBLNotListed:
				clean++
			default:
				errs++
			}
		}
		return []string{egress(r.Deliverer), fmt.Sprint(len(r.Zones)), fmt.Sprint(listed), fmt.Sprint(clean), fmt.Sprint(errs)}
	case *admin.TLSReport:
		return tlsCells(r)
	case *admin.ConnectReport:
		var best *admin.MXProbe
		for i := range r.Probes {
			if r.Probes[i].Reached {
				best = &r.Probes[i]
				break
			}
		}
		if best == nil {
			what := "none reached"
			if r.MXError != "" {
				what = "MX lookup failed"
			} else if r.Port25 != nil && r.Port25.Blocked {
				what = fmt.Sprintf("none: port %d blocked", r.Port)
			}
			return []string{what, "-", "-", "-", "-"}
		}
		tlsCell, cert := "not offered", "-"
		if best.TLS != nil {
			tlsCell = "TLS " + best.TLS.Version + " " + best.TLS.Cipher
			cert = diagCell(commonName(best.TLS.Subject), 30) + " until " + diagDate(best.TLS.NotAfter)
			if !best.TLS.Verified {
				cert += " (unverified)"
			}
		} else if offersCap(best.EHLO, "STARTTLS") {
			tlsCell = "FAILED"
		}
		return []string{fmt.Sprintf("%s [%s]", best.Host, best.Addr), fmt.Sprintf("%dms", best.ConnectMS), diagCell(best.Banner, 32), tlsCell, cert}
	case *admin.AuthReport:
		var spfs []string
		for _, s := range r.SPF.Results {
			spfs = append(spfs, s.Result)
		}
		spf := diagOr(strings.Join(spfs, ","), "-")
		var dk []string
		for _, k := range r.DKIM {
			c := k.Selector + ":" + k.Status
			if k.SignatureValid {
				c += "+verified"
			}
			dk = append(dk, c)
		}
		dmarc := "none"
		if r.DMARC.Found {
			dmarc = "p=" + r.DMARC.Policy
			if r.DMARC.DKIMAlignment == "strict" {
				dmarc += " adkim=s"
			}
			if r.DMARC.SPFAlignment == "strict" {
				dmarc += " aspf=s"
			}
		} else if r.DMARC.Error != "" {
			dmarc = "invalid"
		}
		return []string{egress(r.Deliverer), spf, diagOr(strings.Join(dk, " "), "no key"), dmarc}
	}
	return nil
}

// doctorDetails are lines printed under the table for one deliverer.
func doctorDetails(report any) []string {
	var out []string
	switch r := report.(type) {
	case *admin.DNSReport:
		for _, d := range r.Domains {
			out = append(out, d.Domain+": "+domainDetail(d))
		}
	case *admin.TLSReport:
		out = tlsDetails(r)
	case *admin.ConnectReport:
		route := "MX"
		switch {
		case r.Static:
			route = "static route"
		case r.Implicit:
			route = "implicit MX (A/AAAA)"
		}
		if r.MXError != "" {
			out = append(out, "MX of "+r.Domain+": "+r.MXError)
		}
		for _, p := range r.Probes {
			var steps []string
			for _, s := range p.Steps {
				st := s.Name + " " + s.Status
				if s.Status == admin.StepOK || s.Status == admin.StepTimeout || s.Status == admin.StepFailed {
					if s.DurationMS > 0 || s.Status == admin.StepOK {
						st += fmt.Sprintf(" %dms", s.DurationMS)
					}
				}
				if s.Detail != "" && s.Status != admin.StepOK || s.Name == "starttls" && s.Status == admin.StepOK {
					st += " (" + s.Detail + ")"
				}
				steps = append(steps, st)
			}
			addr := p.Addr
			if addr == "" {
				addr = "-"
			}
			out = append(out, fmt.Sprintf("%s %d %s %s: %s", route, p.Preference, p.Host, addr, strings.Join(steps, ", ")))
			if len(p.EHLO) > 0 {
				out = append(out, "    EHLO: "+strings.Join(p.EHLO, ", "))
			}
			if p.TLS != nil {
				v := "verified"
				if !p.TLS.Verified {
					v = "not verified: " + p.TLS.VerifyError
				}
				out = append(out, fmt.Sprintf("    certificate: %s, issuer %s, %s .. %s, %s", p.TLS.Subject, p.TLS.Issuer,
					diagDate(p.TLS.NotBefore), diagDate(p.TLS.NotAfter), v))
			}
		}
		if r.Port25 != nil {
			for _, p := range r.Port25.Probes {
				state := "no"
				if p.Reached {
					state = "yes"
				}
				out = append(out, fmt.Sprintf("port %d probe %s: reached %s (%s)", r.Port, p.Domain, state, p.Detail))
			}
		}
		if r.Budget.Exhausted {
			out = append(out, fmt.Sprintf("the check ran out of time after %dms; raise -wait", r.Budget.ElapsedMS))
		}
	case *admin.AuthReport:
		if r.SPF.Record != "" {
			out = append(out, "SPF "+r.SPF.Record)
		}
		for _, s := range r.SPF.Results {
			out = append(out, fmt.Sprintf("    %s: %s, %s", s.IP, s.Result, s.Explanation))
		}
		for _, k := range r.DKIM {
			line := fmt.Sprintf("DKIM %s (%s): %s", k.RecordName, k.Algorithm, k.Status)
			if k.Detail != "" {
				line += ", " + k.Detail
			}
			if k.SignatureValid {
				line += "; a test signature verifies through DNS"
			} else if k.SignatureError != "" {
				line += "; a test signature fails: " + k.SignatureError
			}
			out = append(out, line)
		}
		if r.DMARC.Record != "" {
			out = append(out, fmt.Sprintf("DMARC %s: %s", r.DMARC.At, r.DMARC.Record))
		}
		if r.DMARC.Found {
			out = append(out, fmt.Sprintf("    policy %s, subdomains %s, DKIM alignment %s, SPF alignment %s, pct %d, reports to %s",
				r.DMARC.Policy, diagOr(r.DMARC.SubdomainPolicy, "same"), r.DMARC.DKIMAlignment, r.DMARC.SPFAlignment, r.DMARC.Percent,
				diagOr(strings.Join(append(append([]string{}, r.DMARC.AggregateTo...), r.DMARC.FailureTo...), ", "), "nobody")))
		}
	case *admin.DNSBLReport:
		for _, x := range r.Results {
			if x.Status == admin.DNSBLListed {
				out = append(out, fmt.Sprintf("%s LISTED in %s (%s) %s", x.IP, x.Zone, strings.Join(x.Codes, ","), x.Text))
			}
		}
	}
	return out
}

// domainDetail says where mail for a domain goes: its MX hosts with their
// addresses or why they have none, or why there are none.
func domainDetail(d admin.SendingDomain) string {
	switch {
	case d.Error != "":
		return "MX lookup failed: " + d.Error
	case d.NullMX:
		return "null MX (RFC 7505): accepts no mail"
	case d.ImplicitMX:
		return "no MX; implicit MX (RFC 5321 §5.1): " + strings.Join(d.Addrs, ", ")
	case len(d.MX) == 0:
		return "no MX and no A/AAAA record"
	case len(d.Hosts) == 0:
		return "MX " + strings.Join(d.MX, ", ")
	}
	var hs []string
	for _, h := range d.Hosts {
		var state string
		switch h.Lookup {
		case admin.LookupOK:
			state = strings.Join(h.Addrs, ", ")
		case admin.LookupNoData:
			state = "no A/AAAA record"
		case admin.LookupNXDomain:
			state = "NXDOMAIN"
		case admin.LookupTimeout:
			state = "timeout: " + h.Error
		default:
			state = h.Error
		}
		hs = append(hs, fmt.Sprintf("%d %s (%s)", h.Preference, h.Name, state))
	}
	return "MX " + strings.Join(hs, ", ")
}

func commonName(subject string) string {
	for _, part := range strings.Split(subject, ",") {
		if v, ok := strings.CutPrefix(part, "CN="); ok {
			return v
		}
	}
	return subject
}

func diagDate(rfc3339 string) string {
	if len(rfc3339) >= 10 {
		return rfc3339[:10]
	}
	return rfc3339
}

func offersCap(caps []string, ext string) bool {
	for _, c := range caps {
		k, _, _ := strings.Cut(c, " ")
		if strings.EqualFold(k, ext) {
			return true
		}
	}
	return false
}

// diagPainter colours words when the output is a terminal.
type diagPainter struct{ on bool }

func (p diagPainter) word(s string, sev admin.Severity) string {
	if !p.on {
		return s
	}
	switch sev {
	case admin.SeverityOK:
		return "\x1b[32m" + s + "\x1b[0m"
	case admin.SeverityWarning:
		return "\x1b[33m" + s + "\x1b[0m"
	default:
		return "\x1b[31;1m" + s + "\x1b[0m"
	}
}

func (p diagPainter) severity(s admin.Severity) string { return p.word(string(s), s) }

// diagIsTerminal reports whether w is a terminal: colour only then.
func diagIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func diagOr(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// diagCell shortens s to max runes for a table cell.
func diagCell(s string, max int) string {
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	return string(r[:max-1]) + "…"
}

func diagJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
