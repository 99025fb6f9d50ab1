package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-msgauth/authres"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

const headersUsage = `usage: sluice headers [flags] [FILE]

Reads a message (FILE, or standard input) and prints every Received hop in
order with its delay, clock skew and the slowest hop, the
Authentication-Results, whether the DKIM signatures verify (through DNS),
any delivery status notification content, and for mail that passed through
Sluice the queue id and trace id.

flags:
  -offline       do not use the network: no DKIM key lookups, no trace id lookup
  -dns HOST:PORT DNS server for DKIM keys (default: the system resolver)
  -json          one JSON object instead of text
  -server URL    NATS server, to ask sluice-scheduler for the trace id
                 (default $SLUICE_NATS_URL or nats://127.0.0.1:4222)
  -creds FILE    NATS credentials
  -timeout D     bound on each network lookup (default 3s)
`

// maxMessage bounds what is read: a header analysis needs no more.
const maxMessage = 64 << 20

type headersOpts struct {
	offline       bool
	dns           string
	json          bool
	server, creds string
	timeout       time.Duration
}

// runHeaders implements "sluice headers".
//
// The trace id: our Received header names the queue id ("by <host>
// (Sluice) with ESMTP id <qid>") but not the trace, which lives in the
// NATS headers of the queued message. Unless -offline, the command asks
// the scheduler's queue API (sluice.admin.queue.show) for it; when that
// does not answer it prints the queue id and says that `sluice queue show
// <qid>` gives the trace id where NATS is reachable.
func runHeaders(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o := headersOpts{server: "nats://127.0.0.1:4222", timeout: 3 * time.Second}
	if u := os.Getenv("SLUICE_NATS_URL"); u != "" {
		o.server = u
	}
	fs := flag.NewFlagSet("sluice headers", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&o.offline, "offline", false, "")
	fs.StringVar(&o.dns, "dns", "", "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.StringVar(&o.server, "server", o.server, "")
	fs.StringVar(&o.creds, "creds", "", "")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "")
	rest, err := diagParse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, headersUsage)
		return 0
	}
	if err == nil && len(rest) > 1 {
		err = fmt.Errorf("at most one FILE, got %d", len(rest))
	}
	if err == nil && o.dns != "" {
		if _, _, e := net.SplitHostPort(o.dns); e != nil {
			err = fmt.Errorf("-dns %q: want host:port", o.dns)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice headers: %v\n\n%s", err, headersUsage)
		return 2
	}
	in, name := stdin, "standard input"
	if len(rest) == 1 && rest[0] != "-" {
		f, err := os.Open(rest[0])
		if err != nil {
			fmt.Fprintf(stderr, "sluice headers: %v\n", err)
			return 1
		}
		defer f.Close()
		in, name = f, rest[0]
	}
	raw, err := io.ReadAll(io.LimitReader(in, maxMessage+1))
	if err != nil {
		fmt.Fprintf(stderr, "sluice headers: reading %s: %v\n", name, err)
		return 1
	}
	if len(raw) > maxMessage {
		fmt.Fprintf(stderr, "sluice headers: %s is larger than %d MiB\n", name, maxMessage>>20)
		return 1
	}
	rep := analyse(raw)
	if !o.offline {
		verifyDKIM(&rep, raw, o)
		lookupTraces(&rep, o)
	}
	if o.json {
		b, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printHeaders(stdout, rep, diagPainter{on: diagIsTerminal(stdout)})
	}
	if len(rep.Hops) == 0 && len(rep.Fields) == 0 {
		return 1
	}
	return 0
}

// headerField is one unfolded field, in message order.
type headerField struct {
	Name  string
	Value string
	Line  int
}

// headersReport is everything the command found; it is the JSON output.
type headersReport struct {
	Subject   string `json:"subject,omitempty"`
	MessageID string `json:"message_id,omitempty"`
	// Date is the Date field, the origin of the first hop's delay.
	Date     time.Time    `json:"date,omitzero"`
	DateRaw  string       `json:"date_raw,omitempty"`
	Hops     []hopView    `json:"hops"`
	Total    string       `json:"total,omitempty"`
	Slowest  int          `json:"slowest_hop,omitempty"`
	Auth     []authView   `json:"authentication_results,omitempty"`
	DKIM     []dkimView   `json:"dkim,omitempty"`
	DSN      *dsnView     `json:"dsn,omitempty"`
	Sluice   []sluiceView `json:"sluice,omitempty"`
	Problems []string     `json:"problems,omitempty"`

	Fields []headerField `json:"-"`
}

// hopView is a hop in delivery order (1 = the first server).
type hopView struct {
	N int `json:"n"`
	receivedHop
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

type authView struct {
	Server  string   `json:"server"`
	Results []string `json:"results"`
	Error   string   `json:"error,omitempty"`
}

type dkimView struct {
	Domain    string `json:"d"`
	Selector  string `json:"s"`
	Algorithm string `json:"a"`
	Headers   string `json:"h"`
	// Result is "pass", "fail: ...", "temperror: ...", or "not verified".
	Result string `json:"result"`
}

type dsnView struct {
	Type       string     `json:"type"`
	Message    []string   `json:"per_message"`
	Recipients [][]string `json:"per_recipient"`
	Original   []string   `json:"original,omitempty"`
	Problems   []string   `json:"problems,omitempty"`
}

type sluiceView struct {
	QueueID string `json:"queue_id"`
	Hop     int    `json:"hop"`
	By      string `json:"by"`
	TraceID string `json:"trace_id,omitempty"`
	Note    string `json:"note"`
}

// splitHeader returns the unfolded fields of the header section, the body,
// and the problems met: lines that are not fields are reported and skipped.
func splitHeader(raw []byte) ([]headerField, []byte, []string) {
	var fields []headerField
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
			problems = append(problems, fmt.Sprintf("line %d: not a header field: %q", line, diagCell(string(l), 60)))
			continue
		}
		fields = append(fields, headerField{Name: string(name), Value: strings.TrimSpace(string(value)), Line: line})
	}
	return fields, nil, problems
}

// analyse reads everything that needs no network.
func analyse(raw []byte) headersReport {
	fields, _, problems := splitHeader(raw)
	rep := headersReport{Fields: fields, Problems: problems, Hops: []hopView{}}
	if len(fields) == 0 {
		rep.Problems = append(rep.Problems, "no header fields found: is this a message?")
		return rep
	}
	var received []headerField
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
		h := hopView{N: len(received) - i, receivedHop: parseReceived(received[i].Value), Received: received[i].Value}
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
				h.Problems = append(h.Problems, fmt.Sprintf("clock skew: %s before %s", diagDuration(-d), from))
			}
			if d > slowest {
				slowest, rep.Slowest = d, h.N
			}
		}
		if !h.Date.IsZero() {
			prev, prevN = h.Date, h.N
		}
		if h.Sluice && h.ID != "" {
			rep.Sluice = append(rep.Sluice, sluiceView{QueueID: h.ID, Hop: h.N, By: h.By,
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
		rep.Total = diagDuration(prev.Sub(first))
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
func authResults(v string) authView {
	id, results, err := authres.Parse(v)
	a := authView{Server: id}
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
func dkimTags(v string) dkimView {
	tags := map[string]string{}
	for _, part := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(part, "=")
		if ok {
			tags[strings.TrimSpace(k)] = strings.Join(strings.Fields(val), "")
		}
	}
	return dkimView{Domain: tags["d"], Selector: tags["s"], Algorithm: tags["a"], Headers: tags["h"], Result: "not verified (-offline)"}
}

// verifyDKIM checks the signatures through DNS (-dns, or the system
// resolver).
func verifyDKIM(rep *headersReport, raw []byte, o headersOpts) {
	if len(rep.DKIM) == 0 {
		return
	}
	r := net.DefaultResolver
	if o.dns != "" {
		d := net.Dialer{Timeout: o.timeout}
		r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, o.dns)
		}}
	}
	lookup := func(name string) ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
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
func findDSN(raw []byte) *dsnView {
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return nil
	}
	mt, params, _ := e.Header.ContentType()
	if !strings.EqualFold(mt, "multipart/report") {
		return nil
	}
	dsn := &dsnView{Type: params["report-type"]}
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

// lookupTraces asks the scheduler's queue API for the trace id of each
// Sluice queue id found.
func lookupTraces(rep *headersReport, o headersOpts) {
	if len(rep.Sluice) == 0 {
		return
	}
	opts := []nats.Option{nats.Name("sluice-cli headers"), nats.Timeout(o.timeout), nats.NoReconnect()}
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
	}
	nc, err := nats.Connect(o.server, opts...)
	if err != nil {
		for i := range rep.Sluice {
			rep.Sluice[i].Note += fmt.Sprintf(" (cannot reach NATS at %s: %v)", o.server, err)
		}
		return
	}
	defer nc.Close()
	for i := range rep.Sluice {
		s := &rep.Sluice[i]
		data, _ := json.Marshal(admin.QueueIDRequest{ID: s.QueueID})
		msg, err := nc.Request(wire.AdminQueueSubject(wire.AdminShow), data, o.timeout)
		if err != nil {
			s.Note += fmt.Sprintf(" (no answer from %s within %s: %v)", wire.SchedulerService, o.timeout, err)
			continue
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			s.Note = fmt.Sprintf("%s does not know queue id %s any more (%s %s): its history may have expired",
				wire.SchedulerService, s.QueueID, code, msg.Header.Get(micro.ErrorHeader))
			continue
		}
		var resp admin.QueueShowResponse
		if err := json.Unmarshal(msg.Data, &resp); err != nil {
			s.Note += " (unreadable answer: " + err.Error() + ")"
			continue
		}
		for _, j := range resp.Jobs {
			if j.TraceID != "" {
				s.TraceID, s.Note = j.TraceID, "from "+wire.SchedulerService
				break
			}
		}
	}
}

// printHeaders writes the text report.
func printHeaders(w io.Writer, rep headersReport, paint diagPainter) {
	if rep.Subject != "" {
		fmt.Fprintf(w, "Subject:    %s\n", rep.Subject)
	}
	if rep.MessageID != "" {
		fmt.Fprintf(w, "Message-ID: %s\n", rep.MessageID)
	}
	switch {
	case !rep.Date.IsZero():
		fmt.Fprintf(w, "Date:       %s (%s)\n", rep.DateRaw, diagTime(rep.Date))
	case rep.DateRaw != "":
		fmt.Fprintf(w, "Date:       %s (unreadable)\n", rep.DateRaw)
	default:
		fmt.Fprintln(w, "Date:       (none)")
	}
	fmt.Fprintln(w)

	if len(rep.Hops) == 0 {
		fmt.Fprintln(w, "No Received fields: the message has not passed through any mail server.")
	} else {
		fmt.Fprintf(w, "Received hops, first to last (%d):\n", len(rep.Hops))
		var table bytes.Buffer
		tw := tabwriter.NewWriter(&table, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "HOP\tFROM\tBY\tWITH\tID\tTIME (UTC)\tDELAY\tTLS\tNOTE")
		for _, h := range rep.Hops {
			from := h.From
			if h.FromAddr != "" {
				from = strings.TrimSpace(from + " [" + h.FromAddr + "]")
			}
			by := h.By
			if h.Sluice {
				by += " (Sluice)"
			}
			ts, delay := "?", "?"
			if !h.Date.IsZero() {
				ts = diagTime(h.Date)
			}
			if h.Delay != nil {
				delay = diagDuration(*h.Delay)
			}
			tls := "no"
			if h.TLS {
				tls = "yes"
			}
			var notes []string
			if h.Slowest {
				notes = append(notes, paint.word("slowest", admin.SeverityWarning))
			}
			if h.Skew {
				notes = append(notes, paint.word("clock skew", admin.SeverityError))
			}
			if h.Date.IsZero() {
				notes = append(notes, paint.word("no date", admin.SeverityWarning))
			}
			if h.DelayFrom > 0 {
				notes = append(notes, fmt.Sprintf("delay since hop %d", h.DelayFrom))
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.N, diagOr(diagCell(from, 44), "-"), diagOr(diagCell(by, 36), "-"),
				diagOr(diagCell(h.With, 22), "-"), diagOr(diagCell(h.ID, 26), "-"), ts, delay, tls, strings.Join(notes, ", "))
		}
		tw.Flush()
		// An empty last column leaves padding behind.
		for _, l := range strings.SplitAfter(table.String(), "\n") {
			io.WriteString(w, strings.TrimRight(l, " \n")+strings.Repeat("\n", strings.Count(l, "\n")))
		}
		if rep.Total != "" {
			fmt.Fprintf(w, "Total: %s", rep.Total)
			if rep.Slowest > 0 {
				fmt.Fprintf(w, "; slowest hop %d (%s)", rep.Slowest, diagDuration(*rep.Hops[rep.Slowest-1].Delay))
			}
			fmt.Fprintln(w)
		}
		for _, h := range rep.Hops {
			for _, p := range h.Problems {
				fmt.Fprintf(w, "  hop %d: %s\n", h.N, p)
			}
		}
	}

	if len(rep.Sluice) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Sluice:")
		for _, s := range rep.Sluice {
			fmt.Fprintf(w, "  queue id %s (hop %d, by %s)\n", s.QueueID, s.Hop, s.By)
			if s.TraceID != "" {
				fmt.Fprintf(w, "  trace id %s (%s)\n", s.TraceID, s.Note)
			} else {
				fmt.Fprintf(w, "  trace id: %s\n", s.Note)
			}
		}
	}

	if len(rep.Auth) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Authentication-Results:")
		for _, a := range rep.Auth {
			fmt.Fprintf(w, "  by %s\n", diagOr(a.Server, "?"))
			for _, r := range a.Results {
				fmt.Fprintf(w, "    %s\n", r)
			}
			if a.Error != "" {
				fmt.Fprintf(w, "    (malformed: %s)\n", a.Error)
			}
		}
	}

	if len(rep.DKIM) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "DKIM signatures:")
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  DOMAIN\tSELECTOR\tALGORITHM\tRESULT")
		for _, d := range rep.DKIM {
			res := d.Result
			switch {
			case res == "pass":
				res = paint.word(res, admin.SeverityOK)
			case strings.HasPrefix(res, "fail") || strings.HasPrefix(res, "permerror"):
				res = paint.word(res, admin.SeverityError)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", diagOr(d.Domain, "?"), diagOr(d.Selector, "?"), diagOr(d.Algorithm, "?"), res)
		}
		tw.Flush()
	}

	if rep.DSN != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Delivery status notification (report-type=%s):\n", diagOr(rep.DSN.Type, "?"))
		for _, l := range rep.DSN.Message {
			fmt.Fprintf(w, "  %s\n", l)
		}
		for i, b := range rep.DSN.Recipients {
			fmt.Fprintf(w, "  recipient %d:\n", i+1)
			for _, l := range b {
				fmt.Fprintf(w, "    %s\n", l)
			}
		}
		if len(rep.DSN.Original) > 0 {
			fmt.Fprintln(w, "  original message:")
			for _, l := range rep.DSN.Original {
				fmt.Fprintf(w, "    %s\n", l)
			}
		}
		for _, p := range rep.DSN.Problems {
			fmt.Fprintf(w, "  problem: %s\n", p)
		}
	}

	if len(rep.Problems) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Malformed header:")
		for _, p := range rep.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
}

func diagTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

// diagDuration prints a delay the way a postmaster reads it: "0s", "3s",
// "4m10s", "2h3m", "3d4h".
func diagDuration(d time.Duration) string {
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
