// Package tlsrpt writes and sends the daily TLS aggregate reports of RFC
// 8460 from the TLS session counts the deliverers keep in the key-value
// bucket wire.BucketTLSRPT: for each policy domain with sessions on a
// finished UTC day and a TLS-RPT record (_smtp._tls.<domain> TXT
// "v=TLSRPTv1; rua=mailto:...,https://..."), one report in JSON, gzipped,
// sent to every rua URI the record names (§3):
//
//   - mailto: by mail (§5.3), enqueued on SLUICE_MSGS like the bouncer's
//     DSNs so that it is scheduled, delivered and traced like any mail;
//   - https: by an HTTP POST of the gzipped JSON as
//     application/tlsrpt+gzip (§5.4, §6.4), over a verified TLS connection;
//     any 2xx answer is an acceptance. Plain http URIs, and any other
//     scheme, are ignored.
//
// One instance sends each report: the first to create the key
// sent.<day>.<domain> in the bucket, which it does once at least one
// destination took the report (see Reporter.SendDay).
package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Report is the JSON report of RFC 8460 §4.4.
type Report struct {
	OrganizationName string      `json:"organization-name"`
	DateRange        DateRange   `json:"date-range"`
	ContactInfo      string      `json:"contact-info"`
	ReportID         string      `json:"report-id"`
	Policies         []PolicyOut `json:"policies"`
}

// DateRange is the report's day, in RFC 3339 date-times.
type DateRange struct {
	Start string `json:"start-datetime"`
	End   string `json:"end-datetime"`
}

// PolicyOut is one applied policy and its sessions.
type PolicyOut struct {
	Policy         Policy          `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// Policy names the policy.
type Policy struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// Summary counts the sessions.
type Summary struct {
	Successful int64 `json:"total-successful-session-count"`
	Failed     int64 `json:"total-failure-session-count"`
}

// FailureDetail is one kind of failure.
type FailureDetail struct {
	ResultType     string `json:"result-type"`
	SendingMTAIP   string `json:"sending-mta-ip,omitempty"`
	ReceivingMX    string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP    string `json:"receiving-ip,omitempty"`
	FailedSessions int64  `json:"failed-session-count"`
	AdditionalInfo string `json:"additional-information,omitempty"`
}

// Params are the reporting organisation's details (configuration).
type Params struct {
	Organization string
	Contact      string
	// Submitter is the domain that submits the report (§5.3
	// TLS-Report-Submitter, and the From address's domain).
	Submitter string
}

// Build returns the report of one policy domain for day (YYYY-MM-DD) from
// its counts, one entry per policy type.
func Build(p Params, day, domain string, counts []wire.TLSRPTCounts) (Report, error) {
	start, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return Report{}, err
	}
	r := Report{
		OrganizationName: p.Organization,
		DateRange:        DateRange{Start: start.Format(time.RFC3339), End: start.Add(24*time.Hour - time.Second).Format(time.RFC3339)},
		ContactInfo:      p.Contact,
		ReportID:         fmt.Sprintf("%s_%s@%s", day, domain, p.Submitter),
	}
	sort.Slice(counts, func(i, j int) bool { return counts[i].PolicyType < counts[j].PolicyType })
	for _, c := range counts {
		po := PolicyOut{
			Policy:  Policy{Type: c.PolicyType, String: c.PolicyString, Domain: domain, MXHost: c.MXHosts},
			Summary: Summary{Successful: c.Succeeded, Failed: c.Failed},
		}
		for _, f := range c.Failures {
			po.FailureDetails = append(po.FailureDetails, FailureDetail{ResultType: f.ResultType, ReceivingMX: f.ReceivingMX,
				ReceivingIP: f.ReceivingIP, FailedSessions: f.Count, AdditionalInfo: f.Detail})
		}
		r.Policies = append(r.Policies, po)
	}
	return r, nil
}

// Message is the report mail of §5.3.
type Message struct {
	From, MessageID string
	To              []string
	Date            time.Time
	Boundary        string
}

// Encode returns report r as gzipped JSON: the application/tlsrpt+gzip
// body of both the mail's attachment and the https POST.
func Encode(r Report) ([]byte, error) {
	js, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(js); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return gz.Bytes(), nil
}

// Write returns the mail that carries report r for domain: a
// multipart/report (report-type="tlsrpt") with a short text and the
// gzipped JSON as application/tlsrpt+gzip, named as §5.1 asks:
// submitter!policy-domain!begin!end!unique-id.json.gz.
func Write(p Params, m Message, domain string, r Report) ([]byte, error) {
	gz, err := Encode(r)
	if err != nil {
		return nil, err
	}
	start, _ := time.Parse(time.RFC3339, r.DateRange.Start)
	end, _ := time.Parse(time.RFC3339, r.DateRange.End)
	name := fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", p.Submitter, domain, start.Unix(), end.Unix(), m.Boundary)
	var b strings.Builder
	h := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	h("From", m.From)
	h("To", strings.Join(m.To, ", "))
	h("Date", m.Date.Format(time.RFC1123Z))
	h("Message-ID", "<"+m.MessageID+">")
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", domain, p.Submitter, r.ReportID))
	h("TLS-Report-Domain", domain)
	h("TLS-Report-Submitter", p.Submitter)
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+m.Boundary+`"`)
	b.WriteString("\r\n--" + m.Boundary + "\r\n")
	h("Content-Type", "text/plain; charset=us-ascii")
	b.WriteString("\r\nThis is an aggregate TLS report (RFC 8460) from " + p.Organization + " for " + domain + ", " +
		r.DateRange.Start + " to " + r.DateRange.End + ".\r\n")
	b.WriteString("\r\n--" + m.Boundary + "\r\n")
	h("Content-Type", `application/tlsrpt+gzip; name="`+name+`"`)
	h("Content-Disposition", `attachment; filename="`+name+`"`)
	h("Content-Transfer-Encoding", "base64")
	b.WriteString("\r\n")
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	b.WriteString("--" + m.Boundary + "--\r\n")
	return []byte(b.String()), nil
}

// ParseRecord reads a TLS-RPT record (§3): "v=TLSRPTv1; rua=..." with its
// comma-separated rua URIs, and returns the mailto addresses and the https
// URLs, each in the record's order (a repeated https URL once). URIs of
// any other scheme, plain http included, are left out: reports go only
// over TLS. ok is false when the text is not a TLSRPTv1 record; a record
// with neither kind of URI is ok with both lists empty.
func ParseRecord(txt string) (mailto, https []string, ok bool) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=TLSRPTv1" {
		return nil, nil, false
	}
	for _, f := range fields[1:] {
		k, v, found := strings.Cut(strings.TrimSpace(f), "=")
		if !found || !strings.EqualFold(k, "rua") {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			u = strings.TrimSpace(u)
			switch {
			case len(u) > 7 && strings.EqualFold(u[:7], "mailto:"):
				addr := u[7:]
				if i := strings.IndexByte(addr, '?'); i >= 0 {
					addr = addr[:i]
				}
				if strings.Count(addr, "@") == 1 && !strings.ContainsAny(addr, " <>\r\n") {
					mailto = append(mailto, addr)
				}
			case len(u) > 8 && strings.EqualFold(u[:8], "https://"):
				if h, ok := httpsURL(u); ok && !slices.Contains(https, h) {
					https = append(https, h)
				}
			}
		}
	}
	return mailto, https, true
}

// httpsURL returns u, an https URL with a host, in its canonical form.
func httpsURL(u string) (string, bool) {
	if strings.ContainsAny(u, " \t\r\n") {
		return "", false
	}
	pu, err := url.Parse(u)
	if err != nil || pu.Scheme != "https" || pu.Host == "" || pu.Hostname() == "" {
		return "", false
	}
	return pu.String(), true
}
