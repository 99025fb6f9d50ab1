// Package headers analyses a message's header section the way a
// postmaster reads it: every Received hop in delivery order with its
// delay, clock skew and the slowest hop (RFC 5322 §3.6.7, RFC 5321 §4.4),
// the Authentication-Results (RFC 8601), the DKIM signatures and whether
// they verify (RFC 6376), delivery status notification content (RFC 3464),
// and the hops that passed through Sluice with their queue ids. It does
// no printing: `sluice headers` prints a Report as text or JSON, and a
// web view can do the same from the JSON.
package headers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// Field is one unfolded field, in message order.
type Field struct {
	Name  string
	Value string
	Line  int
}

// Report is everything the command found; it is the JSON output.
type Report struct {
	Subject   string `json:"subject,omitempty"`
	MessageID string `json:"message_id,omitempty"`
	// Date is the Date field, the origin of the first hop's delay.
	Date     time.Time     `json:"date,omitzero"`
	DateRaw  string        `json:"date_raw,omitempty"`
	Hops     []Hop         `json:"hops"`
	Total    string        `json:"total,omitempty"`
	Slowest  int           `json:"slowest_hop,omitempty"`
	Auth     []AuthResults `json:"authentication_results,omitempty"`
	DKIM     []Signature   `json:"dkim,omitempty"`
	DSN      *DSN          `json:"dsn,omitempty"`
	Sluice   []SluiceHop   `json:"sluice,omitempty"`
	Problems []string      `json:"problems,omitempty"`

	Fields []Field `json:"-"`
}

// Hop is a hop in delivery order (1 = the first server).
type Hop struct {
	N int `json:"n"`
	HopFields
	// Delay is the time since the previous dated hop (or the Date field),
	// unset when either time is unknown.
	Delay *time.Duration `json:"delay_ns,omitempty"`
	// DelayFrom is the hop the delay is measured from when it is not the
	// previous one (which has no date); 0 is the Date field.
	DelayFrom int    `json:"delay_from,omitempty"`
	Skew      bool   `json:"clock_skew,omitempty"`
	Slowest   bool   `json:"slowest,omitempty"`
	Received  string `json:"raw"`
}

type AuthResults struct {
	Server  string   `json:"server"`
	Results []string `json:"results"`
	Error   string   `json:"error,omitempty"`
}

type Signature struct {
	Domain    string `json:"d"`
	Selector  string `json:"s"`
	Algorithm string `json:"a"`
	Headers   string `json:"h"`
	// Result is "pass", "fail: ...", "temperror: ...", or "not verified".
	Result string `json:"result"`
}

type DSN struct {
	Type       string     `json:"type"`
	Message    []string   `json:"per_message"`
	Recipients [][]string `json:"per_recipient"`
	Original   []string   `json:"original,omitempty"`
	Problems   []string   `json:"problems,omitempty"`
}

type SluiceHop struct {
	QueueID string `json:"queue_id"`
	Hop     int    `json:"hop"`
	By      string `json:"by"`
	TraceID string `json:"trace_id,omitempty"`
	Note    string `json:"note"`
}

// splitHeader returns the unfolded fields of the header section, the body,
// and the problems met: lines that are not fields are reported and skipped.
func splitHeader(raw []byte) ([]Field, []byte, []string) {
	var fields []Field
	var problems []string
	rest := raw
	line := 0
	// An mbox "From " line is not part of the message.
	if bytes.HasPrefix(rest, []byte("From ")) {
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i+1:]
			line++
		}
	}
	for len(rest) > 0 {
		var l []byte
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			l, rest = rest[:i], rest[i+1:]
		} else {
			l, rest = rest, nil
		}
		line++
		l = bytes.TrimSuffix(l, []byte("\r"))
		if len(l) == 0 {
			return fields, rest, problems
		}
		if l[0] == ' ' || l[0] == '\t' {
			if len(fields) == 0 {
				problems = append(problems, fmt.Sprintf("line %d: continuation line before any field", line))
				continue
			}
			fields[len(fields)-1].Value += " " + strings.TrimSpace(string(l))
			continue
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			problems = append(problems, fmt.Sprintf("line %d: not a header field: %q", line, cell(string(l), 60)))
			continue
		}
		fields = append(fields, Field{Name: string(name), Value: strings.TrimSpace(string(value)), Line: line})
	}
	return fields, nil, problems
}

// Analyse reads everything that needs no network.
func Analyse(raw []byte) Report {
	fields, _, problems := splitHeader(raw)
	rep := Report{Fields: fields, Problems: problems, Hops: []Hop{}}
	if len(fields) == 0 {
		rep.Problems = append(rep.Problems, "no header fields found: is this a message?")
		return rep
	}
	var received []Field
	for _, f := range fields {
		switch strings.ToLower(f.Name) {
		case "received":
			received = append(received, f)
		case "subject":
			rep.Subject = f.Value
		case "message-id":
			rep.MessageID = f.Value
		case "date":
			rep.DateRaw = f.Value
			if d, ok := parseHopDate(stripComments(f.Value)); ok {
				rep.Date = d
			} else {
				rep.Problems = append(rep.Problems, fmt.Sprintf("unreadable Date field %q", f.Value))
			}
		case "authentication-results":
			rep.Auth = append(rep.Auth, authResults(f.Value))
		case "dkim-signature":
			rep.DKIM = append(rep.DKIM, dkimTags(f.Value))
		}
	}
	// Received fields are prepended by each hop: the last one is the first
	// hop.
	prev, prevN := rep.Date, 0
	var slowest time.Duration = -1
	for i := len(received) - 1; i >= 0; i-- {
		h := Hop{N: len(received) - i, HopFields: parseReceived(received[i].Value), Received: received[i].Value}
		if !h.Date.IsZero() && !prev.IsZero() {
			d := h.Date.Sub(prev)
			h.Delay = &d
			if prevN != h.N-1 && prevN > 0 {
				h.DelayFrom = prevN
			}
			if d < 0 {
				h.Skew = true
				from := "the Date field"
				if prevN > 0 {
					from = fmt.Sprintf("hop %d", prevN)
				}
				h.Problems = append(h.Problems, fmt.Sprintf("clock skew: %s before %s", Duration(-d), from))
			}
			if d > slowest {
				slowest, rep.Slowest = d, h.N
			}
		}
		if !h.Date.IsZero() {
			prev, prevN = h.Date, h.N
		}
		if h.Sluice && h.ID != "" {
			rep.Sluice = append(rep.Sluice, SluiceHop{QueueID: h.ID, Hop: h.N, By: h.By,
				Note: fmt.Sprintf("not in the message; `sluice queue show %s` prints it", h.ID)})
		}
		rep.Hops = append(rep.Hops, h)
	}
	if rep.Slowest > 0 && slowest > 0 {
		rep.Hops[rep.Slowest-1].Slowest = true
	} else {
		rep.Slowest = 0
	}
	first := rep.Date
	if first.IsZero() {
		for _, h := range rep.Hops {
			if !h.Date.IsZero() {
				first = h.Date
				break
			}
		}
	}
	if !first.IsZero() && !prev.IsZero() && prev.After(first) {
		rep.Total = Duration(prev.Sub(first))
	}
	// The newest Sluice hop first: it is the one this copy went through.
	sort.SliceStable(rep.Sluice, func(i, j int) bool { return rep.Sluice[i].Hop > rep.Sluice[j].Hop })
	rep.DSN = findDSN(raw)
	return rep
}

func stripComments(s string) string {
	toks, _ := lexReceived(s)
	var words []string
	for _, t := range toks {
		if t.kind == 'w' {
			words = append(words, t.text)
		}
	}
	return strings.Join(words, " ")
}

// authResults formats one Authentication-Results field (RFC 8601).
func authResults(v string) AuthResults {
	id, results, err := authres.Parse(v)
	a := AuthResults{Server: id}
	if err != nil {
		// Some servers (Exchange Online among them) omit the authserv-id
		// that RFC 8601 §2.2 requires; read the results anyway.
		if _, rs, err2 := authres.Parse("unnamed; " + v); err2 == nil {
			a.Server, results = "", rs
			a.Error = "no authserv-id (RFC 8601 §2.2 requires the name of the server first)"
		} else {
			a.Error = strings.TrimPrefix(err.Error(), "msgauth: ")
			a.Results = []string{v}
			return a
		}
	}
	for _, r := range results {
		a.Results = append(a.Results, formatAuthResult(r))
	}
	return a
}

func formatAuthResult(r authres.Result) string {
	kv := func(method string, value authres.ResultValue, reason string, props ...string) string {
		s := method + "=" + string(value)
		for i := 0; i+1 < len(props); i += 2 {
			if props[i+1] != "" {
				s += " " + props[i] + "=" + props[i+1]
			}
		}
		if reason != "" {
			s += " (" + reason + ")"
		}
		return s
	}
	switch r := r.(type) {
	case *authres.SPFResult:
		return kv("spf", r.Value, r.Reason, "smtp.mailfrom", r.From, "smtp.helo", r.Helo)
	case *authres.DKIMResult:
		return kv("dkim", r.Value, r.Reason, "header.d", r.Domain, "header.i", r.Identifier)
	case *authres.DMARCResult:
		return kv("dmarc", r.Value, r.Reason, "header.from", r.From)
	case *authres.IPRevResult:
		return kv("iprev", r.Value, r.Reason, "policy.iprev", r.IP)
	case *authres.AuthResult:
		return kv("auth", r.Value, r.Reason, "smtp.auth", r.Auth)
	case *authres.ARCResult:
		return kv("arc", r.Value, "", "smtp.remote-ip", r.RemoteIP)
	case *authres.DomainKeysResult:
		return kv("domainkeys", r.Value, r.Reason, "header.d", r.Domain)
	case *authres.GenericResult:
		keys := make([]string, 0, len(r.Params))
		for k := range r.Params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var props []string
		for _, k := range keys {
			props = append(props, k, r.Params[k])
		}
		return kv(r.Method, r.Value, "", props...)
	}
	return fmt.Sprintf("%T", r)
}

// dkimTags reads the tags of a DKIM-Signature field (RFC 6376 §3.5).
func dkimTags(v string) Signature {
	tags := map[string]string{}
	for _, part := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(part, "=")
		if ok {
			tags[strings.TrimSpace(k)] = strings.Join(strings.Fields(val), "")
		}
	}
	return Signature{Domain: tags["d"], Selector: tags["s"], Algorithm: tags["a"], Headers: tags["h"], Result: "not verified (-offline)"}
}

// VerifyDKIM checks the signatures of raw, the message rep was made
// from, through DNS: the server at dnsServer (host:port), or the system
// resolver when it is empty, each lookup bounded by timeout. It sets each
// signature's Result.
func VerifyDKIM(rep *Report, raw []byte, dnsServer string, timeout time.Duration) {
	if len(rep.DKIM) == 0 {
		return
	}
	r := net.DefaultResolver
	if dnsServer != "" {
		d := net.Dialer{Timeout: timeout}
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, dnsServer)
		}}
	}
	lookup := func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return r.LookupTXT(ctx, name)
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(raw), &msgdkim.VerifyOptions{LookupTXT: lookup, MaxVerifications: 10})
	if err != nil && len(vs) == 0 {
		for i := range rep.DKIM {
			rep.DKIM[i].Result = "not verified: " + strings.TrimPrefix(err.Error(), "dkim: ")
		}
		return
	}
	// Verify returns one verification per signature, in field order.
	for i := range rep.DKIM {
		if i >= len(vs) {
			rep.DKIM[i].Result = "not verified: too many signatures"
			continue
		}
		switch v := vs[i]; {
		case v.Err == nil:
			rep.DKIM[i].Result = "pass"
		case msgdkim.IsTempFail(v.Err):
			rep.DKIM[i].Result = "temperror: " + strings.TrimPrefix(v.Err.Error(), "dkim: ")
		case msgdkim.IsPermFail(v.Err):
			rep.DKIM[i].Result = "permerror: " + strings.TrimPrefix(v.Err.Error(), "dkim: ")
		default:
			rep.DKIM[i].Result = "fail: " + strings.TrimPrefix(v.Err.Error(), "dkim: ")
		}
	}
}

// findDSN reads the delivery-status part of a multipart/report (RFC 3462,
// RFC 3464; RFC 6533 message/global-delivery-status).
func findDSN(raw []byte) *DSN {
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return nil
	}
	mt, params, _ := e.Header.ContentType()
	if !strings.EqualFold(mt, "multipart/report") {
		return nil
	}
	dsn := &DSN{Type: params["report-type"]}
	mr := e.MultipartReader()
	if mr == nil {
		dsn.Problems = append(dsn.Problems, "multipart/report without parts")
		return dsn
	}
	found := false
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			dsn.Problems = append(dsn.Problems, "malformed part: "+err.Error())
			break
		}
		pt, _, _ := p.Header.ContentType()
		switch strings.ToLower(pt) {
		case "message/delivery-status", "message/global-delivery-status":
			found = true
			body, _ := io.ReadAll(io.LimitReader(p.Body, 1<<20))
			blocks := statusBlocks(body)
			if len(blocks) > 0 {
				dsn.Message = blocks[0]
				dsn.Recipients = blocks[1:]
			}
		case "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers":
			body, _ := io.ReadAll(io.LimitReader(p.Body, 1<<20))
			fields, _, _ := splitHeader(body)
			for _, f := range fields {
				switch strings.ToLower(f.Name) {
				case "from", "to", "subject", "message-id", "date":
					dsn.Original = append(dsn.Original, f.Name+": "+f.Value)
				}
			}
		}
	}
	if !found {
		dsn.Problems = append(dsn.Problems, "no message/delivery-status part")
	}
	return dsn
}

// statusBlocks splits delivery-status content into its field groups: the
// per-message fields, then one group per recipient (RFC 3464 §2.1).
func statusBlocks(body []byte) [][]string {
	var out [][]string
	rest := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
	for len(bytes.TrimSpace(rest)) > 0 {
		rest = bytes.TrimLeft(rest, "\n")
		fields, more, _ := splitHeader(rest)
		var block []string
		for _, f := range fields {
			block = append(block, f.Name+": "+f.Value)
		}
		if len(block) > 0 {
			out = append(out, block)
		}
		if more == nil || len(more) == len(rest) {
			break
		}
		rest = more
	}
	return out
}

// Duration prints a delay the way a postmaster reads it: "0s", "3s",
// "4m10s", "2h3m", "3d4h".
func Duration(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	d = d.Round(time.Second)
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%s%dd%dh", neg, d/(24*time.Hour), (d%(24*time.Hour))/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%s%dh%dm", neg, d/time.Hour, (d%time.Hour)/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%s%dm%ds", neg, d/time.Minute, (d%time.Minute)/time.Second)
	}
	return fmt.Sprintf("%s%ds", neg, d/time.Second)
}

// cell shortens s to max runes for a problem report.
func cell(s string, max int) string {
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	return string(r[:max-1]) + "…"
}
