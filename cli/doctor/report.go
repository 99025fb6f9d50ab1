package doctor

import (
	"encoding/json"

	"github.com/sluice-mta/sluice/proto/admin"
)

// Report is one deliverer's answer to a check, decoded and judged.
type Report struct {
	// Answer is who answered; its Err is set when there is no report to
	// judge (an error reply, no reply, or a report that cannot be read).
	Answer
	// Typed is the decoded report: *admin.DNSReport, *admin.DNSBLReport,
	// *admin.ConnectReport, *admin.AuthReport or *admin.TLSReport; nil
	// when the answer carried an error instead, and what could be read of
	// it when the report could not be read whole.
	Typed any
	// Findings are the report's findings, each with its fix.
	Findings []admin.Finding
	// Verdict is the report's verdict, or an error verdict whose summary
	// is Err.
	Verdict admin.Verdict
}

// Decode reads an answer as the report of check. An answer that carries
// an error, or whose report cannot be read ("unreadable answer: ..."),
// gets an error verdict that says so.
func Decode(check string, a Answer) Report {
	r := Report{Answer: a}
	if a.Err == "" {
		var err error
		r.Typed, r.Findings, r.Verdict, err = decodeReport(check, a.Raw)
		if err != nil {
			r.Err = "unreadable answer: " + err.Error()
		}
	}
	if r.Err != "" {
		r.Verdict = admin.Verdict{Severity: admin.SeverityError, Summary: r.Err}
	}
	return r
}

// Domain is the domain the check looked at (connect, auth and tls take
// one), or "".
func (r Report) Domain() string {
	switch t := r.Typed.(type) {
	case *admin.ConnectReport:
		return t.Domain
	case *admin.AuthReport:
		return t.Domain
	case *admin.TLSReport:
		return t.Domain
	}
	return ""
}

// decodeReport decodes raw as the report type of check.
func decodeReport(check string, raw json.RawMessage) (any, []admin.Finding, admin.Verdict, error) {
	switch check {
	case admin.DoctorDNS:
		return decodeAs(raw, func(r *admin.DNSReport) ([]admin.Finding, admin.Verdict) { return r.Findings, r.Verdict })
	case admin.DoctorDNSBL:
		return decodeAs(raw, func(r *admin.DNSBLReport) ([]admin.Finding, admin.Verdict) { return r.Findings, r.Verdict })
	case admin.DoctorConnect:
		return decodeAs(raw, func(r *admin.ConnectReport) ([]admin.Finding, admin.Verdict) { return r.Findings, r.Verdict })
	case admin.DoctorTLS:
		return decodeAs(raw, func(r *admin.TLSReport) ([]admin.Finding, admin.Verdict) { return r.Findings, r.Verdict })
	default:
		return decodeAs(raw, func(r *admin.AuthReport) ([]admin.Finding, admin.Verdict) { return r.Findings, r.Verdict })
	}
}

// decodeAs decodes raw as a report of type R, which judged reads the
// findings and the verdict of; what could be decoded is returned with the
// error.
func decodeAs[R any](raw json.RawMessage, judged func(*R) ([]admin.Finding, admin.Verdict)) (any, []admin.Finding, admin.Verdict, error) {
	r := new(R)
	err := json.Unmarshal(raw, r)
	findings, verdict := judged(r)
	return r, findings, verdict, err
}
