package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/cli/headers"
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
	rep := headers.Analyse(raw)
	if !o.offline {
		headers.VerifyDKIM(&rep, raw, o.dns, o.timeout)
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

// lookupTraces asks the scheduler's queue API for the trace id of each
// Sluice queue id found.
func lookupTraces(rep *headers.Report, o headersOpts) {
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
func printHeaders(w io.Writer, rep headers.Report, paint diagPainter) {
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
				delay = headers.Duration(*h.Delay)
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
				fmt.Fprintf(w, "; slowest hop %d (%s)", rep.Slowest, headers.Duration(*rep.Hops[rep.Slowest-1].Delay))
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
