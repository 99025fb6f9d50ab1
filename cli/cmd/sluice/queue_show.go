package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/cli/internal/human"
	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// callByID runs a command that takes exactly one queue id or job id: it
// parses the flags, asks endpoint and decodes the answer into resp.
func callByID(name, endpoint string, args []string, stderr io.Writer, resp any) (queueOpts, error) {
	var o queueOpts
	fs := newFlagSet(name, stderr)
	o.global(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return o, flagErr(err)
	}
	if len(pos) != 1 {
		return o, usagef("want exactly one queue id or job id")
	}
	c, err := dialQueue(&o)
	if err != nil {
		return o, err
	}
	defer c.close()
	return o, c.call(endpoint, api.QueueIDRequest{ID: pos[0]}, resp, o.timeout)
}

// writeJSONLines prints each element of v as one JSON line.
func writeJSONLines[T any](w io.Writer, v []T) error {
	for i := range v {
		if err := writeJSONLine(w, &v[i]); err != nil {
			return err
		}
	}
	return nil
}

func queueShow(args []string, stdout, stderr io.Writer) error {
	var resp api.QueueShowResponse
	o, err := callByID("show", wire.AdminShow, args, stderr, &resp)
	if err != nil {
		return err
	}
	if o.json {
		return writeJSONLines(stdout, resp.Jobs)
	}
	paint := painter(isTerminal(stdout))
	now := time.Now()
	for i, j := range resp.Jobs {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		printJob(stdout, &j, paint, now)
	}
	return nil
}

func printJob(w io.Writer, j *api.QueueJob, paint painter, now time.Time) {
	state := paint.state(j.State)
	if j.Outcome != "" {
		state = paint.state(j.Outcome)
	}
	fmt.Fprintf(w, "job %s (queue id %s): %s\n", j.JobID, j.QueueID, state)
	tw := newTable(w)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	if e := j.Envelope; e != nil {
		row("sender:", sender(e.Sender))
		row("destination:", e.Domain)
		row("received:", fmt.Sprintf("%s (%s ago)", e.Received.Local().Format(time.DateTime), human.Age(now.Sub(e.Received))))
		if !e.Expires.IsZero() {
			row("expires:", fmt.Sprintf("%s (%s)", e.Expires.Local().Format(time.DateTime), until(e.Expires, now)))
		}
		row("size:", fmt.Sprintf("%d bytes", e.Size))
		var flags []string
		if e.ENVID != "" {
			flags = append(flags, "ENVID="+e.ENVID)
		}
		if e.RET != "" {
			flags = append(flags, "RET="+e.RET)
		}
		if e.RequireTLS {
			flags = append(flags, "REQUIRETLS")
		}
		if e.SMTPUTF8 {
			flags = append(flags, "SMTPUTF8")
		}
		if e.IsDSN {
			flags = append(flags, "DSN")
		}
		if len(flags) > 0 {
			row("parameters:", strings.Join(flags, " "))
		}
	}
	row("priority:", orDash(j.Priority))
	if !j.NextAttempt.IsZero() {
		row("next attempt:", fmt.Sprintf("%s (%s)", j.NextAttempt.Local().Format(time.DateTime), until(j.NextAttempt, now)))
	}
	if j.Throttled != "" && j.Outcome == "" {
		row("waiting:", j.Throttled)
	}
	row("trace id:", orDash(j.TraceID))
	tw.Flush()

	fmt.Fprintln(w, "  recipients:")
	tw = newTable(w)
	for _, r := range j.Recipients {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", r.Address, paint.state(r.Status), orDash(r.Reason), cell(r.Reply, 100))
	}
	tw.Flush()
	fmt.Fprintln(w, "  attempts:")
	if len(j.Attempts) == 0 {
		fmt.Fprintln(w, "    none yet")
		return
	}
	tw = newTable(w)
	fmt.Fprintln(tw, "    #\tSTARTED\tDURATION\tDELIVERER\tREMOTE HOST\tTLS\tRESULT\tREASON\tREPLY")
	for _, a := range j.Attempts {
		started, took := "-", "-"
		if !a.Started.IsZero() {
			started = a.Started.Local().Format(time.DateTime)
			if !a.Finished.IsZero() {
				took = a.Finished.Sub(a.Started).Round(time.Millisecond).String()
			}
		}
		result := a.Result
		if result == "" {
			result = "running"
		}
		fmt.Fprintf(tw, "    %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Attempt, started, took, orDash(a.Deliverer),
			orDash(a.RemoteHost), orDash(tlsSummary(a.TLS)), paint.state(result), orDash(a.Reason), cell(a.Reply, 100))
	}
	tw.Flush()
}

// tlsSummary is an attempt's TLS in a few words: "TLSv1.3 verified by
// dane-ee (policy dane)", "clear text (policy may)".
func tlsSummary(t api.QueueTLS) string {
	if t == (api.QueueTLS{}) {
		return ""
	}
	s := "clear text"
	if t.Version != "" {
		s = "TLSv" + t.Version
		if t.VerifiedBy != "" {
			s += " verified by " + t.VerifiedBy
		} else {
			s += " unverified"
		}
	}
	if t.Policy != "" {
		s += " (policy " + t.Policy + ")"
	}
	if t.Reported != "" {
		s += "; reported: " + t.Reported
	}
	return s
}

func queueLog(args []string, stdout, stderr io.Writer) error {
	var resp api.QueueLogResponse
	o, err := callByID("log", wire.AdminLog, args, stderr, &resp)
	if err != nil {
		return err
	}
	if o.json {
		return writeJSONLines(stdout, resp.Events)
	}
	paint := painter(isTerminal(stdout))
	tw := newTable(stdout)
	fmt.Fprintln(tw, "TIME\tJOB ID\tEVENT\tATTEMPT\tDETAILS")
	for _, ev := range resp.Events {
		att := "-"
		if ev.Attempt > 0 {
			att = fmt.Sprint(ev.Attempt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ev.Time.Local().Format("2006-01-02 15:04:05.000"), ev.JobID,
			paint.state(ev.Type), att, cell(eventDetails(&ev), 300))
	}
	return tw.Flush()
}

// eventDetails is the one-line summary of an event.
func eventDetails(ev *api.QueueEvent) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+v)
		}
	}
	if e := ev.Envelope; e != nil {
		add("from=", sender(e.Sender))
		add("to=", strings.Join(e.Recipients, ","))
		add("size=", fmt.Sprint(e.Size))
	}
	add("priority=", ev.Priority)
	add("deliverer=", ev.Instance)
	add("host=", ev.RemoteHost)
	add("reason=", ev.Reason)
	if ev.Error != "" {
		add("reply=", `"`+ev.Error+`"`)
	}
	if !ev.NextAttempt.IsZero() {
		add("next=", ev.NextAttempt.Local().Format(time.DateTime))
	}
	add("by=", ev.Actor)
	add("", ev.Note)
	add("trace=", ev.TraceID)
	return strings.Join(parts, " ")
}
