// Package dsn writes delivery status notifications: the RFC 3464 report that
// tells a sender what became of their message, packaged as an RFC 6522
// multipart/report. It is a pure function of a sluicev1.Bounce and a few
// parameters (host name, date, boundary, message id), so the same request
// always produces the same bytes and the output is checked against golden
// files.
//
// The report has three parts:
//
//  1. text/plain: an explanation for a human, listing each recipient with the
//     reply of the server that refused or accepted it;
//  2. message/delivery-status: the machine-readable per-message and
//     per-recipient fields of RFC 3464 §2.2 and §2.3;
//  3. text/rfc822-headers: the header section of the original message, so the
//     sender can tell which message this is about.
//
// RET=FULL (RFC 3461 §4.3) asks for the whole original message instead of its
// headers. A Bounce carries only the header section, so the body is not
// returned yet; that needs the bouncer to read the body from the queue and is
// left for a later change.
//
// Everything the package writes is 7bit: lines end in CRLF, stay under 998
// octets, and contain only printable US-ASCII. Text that came from elsewhere —
// a remote server's reply, an address, an envelope id — is escaped before it
// is embedded, so a reply containing CR LF cannot inject a header field or a
// MIME boundary.
package dsn

import (
	"bytes"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Params are the parts of a DSN that do not come from the Bounce. Callers fix
// them so that output is reproducible; the bouncer derives the boundary and
// message id from the DSN's own queue id.
type Params struct {
	// Hostname is this MTA's name: the Reporting-MTA and the domain of the
	// MAILER-DAEMON address.
	Hostname string
	// Postmaster, when not empty, is named in the human-readable part as the
	// address to ask for help.
	Postmaster string
	// Date is the DSN's Date header.
	Date time.Time
	// MessageID is the DSN's Message-ID without angle brackets.
	MessageID string
	// Boundary separates the parts. If any part happened to contain it, a
	// suffix is added until none does.
	Boundary string
	// MaxBytes bounds the size of the DSN: the quoted header section is
	// shortened, whole fields at a time, until the DSN fits. Zero means no
	// bound. The DSN can still exceed it when the other parts alone do.
	MaxBytes int
}

// Errors returned by Write for requests that cannot produce a DSN.
var (
	ErrNoJob        = errors.New("dsn: bounce has no job")
	ErrNullSender   = errors.New("dsn: the original sender is the null reverse-path; a DSN must never be sent to it (RFC 3464 §2, RFC 5321 §4.5.5)")
	ErrNoRecipients = errors.New("dsn: bounce has no recipients")
	ErrKind         = errors.New("dsn: bounce kind is unspecified")
)

// Write returns the DSN for b as an RFC 5322 message with CRLF line endings.
func Write(b *sluicev1.Bounce, p Params) ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	job := b.GetJob()
	switch {
	case job == nil:
		return nil, ErrNoJob
	case job.GetMailFrom() == "":
		return nil, ErrNullSender
	case len(b.GetRecipients()) == 0:
		return nil, ErrNoRecipients
	}
	if _, ok := kinds[b.GetKind()]; !ok {
		return nil, ErrKind
	}

	fields := headerFields(b.GetOriginalHeaders())
	out := build(b, p, fields, false)
	if p.MaxBytes <= 0 || len(out) <= p.MaxBytes {
		return out, nil
	}
	// Drop quoted header fields from the end until the DSN fits. Each round
	// removes at least as many raw octets as the DSN is over, so the loop
	// ends after a few rounds even when quoted-printable inflates the rest.
	for len(fields) > 0 && len(out) > p.MaxBytes {
		over := len(out) - p.MaxBytes
		for over > 0 && len(fields) > 0 {
			over -= len(fields[len(fields)-1]) + 2
			fields = fields[:len(fields)-1]
		}
		out = build(b, p, fields, true)
	}
	return out, nil
}

func (p Params) validate() error {
	if p.Hostname == "" || !isHostname(p.Hostname) {
		return fmt.Errorf("dsn: hostname %q is not a domain name", p.Hostname)
	}
	if p.Boundary == "" || !isBoundary(p.Boundary) {
		return fmt.Errorf("dsn: boundary %q: want 1..60 characters of letters, digits and '()+_,-./:=?", p.Boundary)
	}
	if p.MessageID == "" || !isPrintableWord(p.MessageID) || strings.ContainsAny(p.MessageID, "<>") {
		return fmt.Errorf("dsn: message id %q: want printable ASCII without spaces or angle brackets", p.MessageID)
	}
	if p.Date.IsZero() {
		return errors.New("dsn: date is zero")
	}
	return nil
}

// kind holds what differs between the three kinds of report.
type kind struct {
	subject string
	action  string // RFC 3464 §2.3.3
	status  string // default RFC 3463 status
	intro   string
}

var kinds = map[sluicev1.BounceKind]kind{
	sluicev1.BounceKind_BOUNCE_KIND_FAILED: {
		subject: "Undelivered Mail Returned to Sender",
		action:  "failed",
		status:  "5.0.0",
		intro: "Your message could not be delivered to the recipients listed below. " +
			"The mail system has given up on them and will not try again.",
	},
	sluicev1.BounceKind_BOUNCE_KIND_DELAYED: {
		subject: "Delayed Mail (still being retried)",
		action:  "delayed",
		status:  "4.0.0",
		intro: "Your message has not yet been delivered to the recipients listed below. " +
			"The mail system is still trying; you do not need to send it again.",
	},
	sluicev1.BounceKind_BOUNCE_KIND_DELIVERED: {
		subject: "Successful Mail Delivery Report",
		action:  "delivered",
		status:  "2.0.0",
		intro: "Your message was delivered to the recipients listed below, " +
			"as you asked with a delivery status notification request.",
	},
}

// dateLayout is RFC 5322 §3.3 date-time.
const dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

func build(b *sluicev1.Bounce, p Params, fields []string, shortened bool) []byte {
	k := kinds[b.GetKind()]
	human := humanPart(b, p, k, shortened, len(fields) == 0 && len(b.GetOriginalHeaders()) > 0)
	status := statusPart(b, p, k)
	var quoted []byte
	var quotedCTE string
	if len(fields) > 0 {
		quoted, quotedCTE = quotedHeaders(fields)
	}
	quotedType := "text/rfc822-headers; charset=us-ascii"
	if quotedCTE == "quoted-printable" {
		// 8-bit header fields are most likely RFC 6532 UTF-8.
		quotedType = "text/rfc822-headers; charset=utf-8"
	}

	boundary := p.Boundary
	for n := 1; collides(boundary, human, status, quoted); n++ {
		boundary = fmt.Sprintf("%s-%d", p.Boundary, n)
	}

	var w bytes.Buffer
	header(&w, "Date", p.Date.Format(dateLayout))
	header(&w, "From", "Mail Delivery System <MAILER-DAEMON@"+p.Hostname+">")
	header(&w, "To", "<"+headerAddress(b.GetJob().GetMailFrom())+">")
	header(&w, "Subject", k.subject)
	header(&w, "Message-ID", "<"+p.MessageID+">")
	// RFC 3834 §5: a DSN is an automatic response; well-behaved responders
	// (vacation programs, list servers) do not answer it.
	header(&w, "Auto-Submitted", "auto-replied")
	header(&w, "MIME-Version", "1.0")
	// RFC 6522 §3: multipart/report with report-type delivery-status.
	header(&w, "Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`)
	header(&w, "Content-Transfer-Encoding", "7bit")
	w.WriteString("\r\n")
	w.WriteString("This is a MIME-encapsulated message.\r\n")

	part := func(contentType, cte string, body []byte) {
		w.WriteString("\r\n--" + boundary + "\r\n")
		header(&w, "Content-Type", contentType)
		if cte != "" {
			header(&w, "Content-Transfer-Encoding", cte)
		}
		w.WriteString("\r\n")
		w.Write(body)
	}
	part("text/plain; charset=us-ascii", "7bit", human)
	part("message/delivery-status", "7bit", status)
	if quoted != nil {
		part(quotedType, quotedCTE, quoted)
	}
	w.WriteString("\r\n--" + boundary + "--\r\n")
	return w.Bytes()
}

func collides(boundary string, parts ...[]byte) bool {
	delim := []byte("--" + boundary)
	for _, p := range parts {
		if bytes.Contains(p, delim) {
			return true
		}
	}
	return false
}

// humanPart is the text/plain explanation.
func humanPart(b *sluicev1.Bounce, p Params, k kind, shortened, dropped bool) []byte {
	var w bytes.Buffer
	paragraph(&w, "This is the mail system at host "+p.Hostname+".")
	paragraph(&w, k.intro)
	if b.GetKind() == sluicev1.BounceKind_BOUNCE_KIND_DELAYED {
		if until := b.GetJob().GetExpiresUnixNano(); until > 0 {
			paragraph(&w, "It will keep trying until "+time.Unix(0, until).In(p.Date.Location()).Format(dateLayout)+
				" and tell you if it gives up.")
		}
	}
	if p.Postmaster != "" {
		paragraph(&w, "If you need help, write to "+sanitizeText(headerAddress(p.Postmaster))+
			" and include this report.")
	}
	for _, r := range b.GetRecipients() {
		line := "<" + sanitizeText(headerAddress(r.GetAddress())) + ">: "
		switch {
		case r.GetCode() != 0 && r.GetRemoteHost() != "":
			line += "host " + sanitizeText(r.GetRemoteHost()) + " said: " + reply(r)
		case r.GetCode() != 0:
			line += reply(r)
		case r.GetText() != "":
			line += sanitizeText(r.GetText())
		default:
			line += statusCode(b, r)
		}
		wrapped(&w, line, "    ")
	}
	w.WriteString("\r\n")
	switch {
	case dropped:
		paragraph(&w, "The header section of your message was too large to include in this report.")
	case shortened:
		paragraph(&w, "The header section of your message is attached, shortened to fit this report.")
	case len(b.GetOriginalHeaders()) > 0:
		paragraph(&w, "The header section of your message is attached.")
	}
	// The CRLF before the next boundary belongs to the delimiter (RFC 2046
	// §5.1.1), so the part ends with the last line, not a blank one.
	return bytes.TrimSuffix(w.Bytes(), []byte("\r\n"))
}

func paragraph(w *bytes.Buffer, s string) {
	wrapped(w, s, "")
	w.WriteString("\r\n")
}

// wrapped writes s folded at spaces to lines of at most 76 columns, with
// continuation lines starting with indent.
func wrapped(w *bytes.Buffer, s, indent string) {
	const width = 76
	col := 0
	for i, word := range strings.Fields(s) {
		switch {
		case i == 0:
		case col+1+len(word) > width:
			w.WriteString("\r\n" + indent)
			col = len(indent)
		default:
			w.WriteByte(' ')
			col++
		}
		for len(word) > 900 { // keep lines under RFC 5322's 998 octets
			w.WriteString(word[:900])
			w.WriteString("\r\n" + indent)
			word = word[900:]
			col = len(indent)
		}
		w.WriteString(word)
		col += len(word)
	}
	w.WriteString("\r\n")
}

// reply renders an SMTP reply as "550 5.1.1 text".
func reply(r *sluicev1.RecipientResult) string {
	s := fmt.Sprintf("%d", r.GetCode())
	if validStatus(r.GetEnhancedCode()) {
		s += " " + r.GetEnhancedCode()
	}
	if t := sanitizeText(r.GetText()); t != "" {
		s += " " + t
	}
	return s
}

// statusPart is the message/delivery-status body (RFC 3464 §2.1): one block
// of per-message fields, then one block per recipient, separated by empty
// lines.
func statusPart(b *sluicev1.Bounce, p Params, k kind) []byte {
	job := b.GetJob()
	var w bytes.Buffer
	// §2.2.2: Reporting-MTA names the MTA that attempted the delivery.
	header(&w, "Reporting-MTA", "dns; "+p.Hostname)
	if q := job.GetQueueId(); q != "" {
		// An extension field (§2.4) that lets the postmaster find the
		// message in the queue and in the trace.
		header(&w, "X-Sluice-Queue-ID", sanitizeText(q))
	}
	if id := job.GetEnvid(); id != "" {
		// §2.2.1: the envelope id is reported in xtext form (§2.1.2,
		// RFC 3461 §4.4), as the client gave it.
		header(&w, "Original-Envelope-Id", xtext(id))
	}
	if t := job.GetReceivedUnixNano(); t > 0 {
		header(&w, "Arrival-Date", time.Unix(0, t).In(p.Date.Location()).Format(dateLayout))
	}
	for _, r := range b.GetRecipients() {
		w.WriteString("\r\n")
		if o := r.GetOrcpt(); o != "" {
			// §2.3.1: the ORCPT parameter as address-type;xtext.
			header(&w, "Original-Recipient", orcpt(o))
		}
		header(&w, "Final-Recipient", finalRecipient(r.GetAddress()))
		header(&w, "Action", k.action)
		header(&w, "Status", statusCode(b, r))
		if h := r.GetRemoteHost(); h != "" {
			header(&w, "Remote-MTA", "dns; "+sanitizeText(h))
		}
		if d := diagnostic(r); d != "" {
			header(&w, "Diagnostic-Code", d)
		}
		if t := b.GetCreatedUnixNano(); t > 0 {
			header(&w, "Last-Attempt-Date", time.Unix(0, t).In(p.Date.Location()).Format(dateLayout))
		}
		if b.GetKind() == sluicev1.BounceKind_BOUNCE_KIND_DELAYED {
			if t := job.GetExpiresUnixNano(); t > 0 {
				header(&w, "Will-Retry-Until", time.Unix(0, t).In(p.Date.Location()).Format(dateLayout))
			}
		}
	}
	return w.Bytes()
}

// statusCode is the recipient's RFC 3463 status (§2.3.4). The recipient's own
// enhanced code is used when it is well formed and agrees with the kind of
// report: a failure may carry a 4.x.x code (mail that expired after
// temporary failures, 4.4.7), but a failure never reports success and a
// delay or a delivery only its own class.
func statusCode(b *sluicev1.Bounce, r *sluicev1.RecipientResult) string {
	k := kinds[b.GetKind()]
	code := r.GetEnhancedCode()
	if validStatus(code) {
		switch b.GetKind() {
		case sluicev1.BounceKind_BOUNCE_KIND_FAILED:
			if code[0] == '5' || code[0] == '4' {
				return code
			}
		default:
			if code[0] == k.status[0] {
				return code
			}
		}
	}
	if b.GetKind() == sluicev1.BounceKind_BOUNCE_KIND_FAILED && r.GetReason() == sluicev1.Reason_REASON_EXPIRED {
		// RFC 3463 §3.5: delivery time expired.
		return "4.4.7"
	}
	return k.status
}

// diagnostic is the Diagnostic-Code field (§2.3.6): the SMTP reply when a
// server gave one, else our own reason in an extension diagnostic type.
func diagnostic(r *sluicev1.RecipientResult) string {
	if r.GetCode() != 0 {
		return "smtp; " + reply(r)
	}
	text := sanitizeText(r.GetText())
	if text == "" && r.GetReason() == sluicev1.Reason_REASON_UNSPECIFIED {
		return ""
	}
	s := "X-Sluice; " + reasonName(r.GetReason())
	if text != "" {
		s += ": " + text
	}
	return s
}

// reasonName is the lower-case name of a Reason ("dns", "expired").
func reasonName(r sluicev1.Reason) string {
	name := strings.TrimPrefix(r.String(), "REASON_")
	return strings.ToLower(name)
}

// quotedHeaders returns the quoted header section and its transfer encoding:
// 7bit when every line is already 7bit-clean, else quoted-printable, which
// keeps 8-bit (SMTPUTF8) headers and overlong lines intact without making the
// DSN itself need 8BITMIME.
func quotedHeaders(fields []string) ([]byte, string) {
	var raw bytes.Buffer
	clean := true
	for _, f := range fields {
		for _, line := range strings.Split(f, "\r\n") {
			if len(line) > 998 || !isSevenBit(line) {
				clean = false
			}
		}
		raw.WriteString(f)
		raw.WriteString("\r\n")
	}
	if clean {
		return raw.Bytes(), "7bit"
	}
	var enc bytes.Buffer
	qp := quotedprintable.NewWriter(&enc)
	_, _ = qp.Write(raw.Bytes()) // writes to a bytes.Buffer do not fail
	_ = qp.Close()
	if !bytes.HasSuffix(enc.Bytes(), []byte("\r\n")) {
		enc.WriteString("\r\n")
	}
	return enc.Bytes(), "quoted-printable"
}

// headerFields splits a header section into its fields, each with its
// continuation lines joined by CRLF. It stops at the first empty line, in
// case the caller passed more than the header section; line endings are
// normalised to CRLF and a stray CR inside a line becomes a space.
func headerFields(h []byte) []string {
	var fields []string
	for _, line := range strings.Split(string(h), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break
		}
		line = strings.ReplaceAll(line, "\r", " ")
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] += "\r\n" + line
			continue
		}
		fields = append(fields, line)
	}
	return fields
}
