package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	api "github.com/sluice-mta/sluice/proto/admin"
)

const shapingUsage = `usage: sluice shaping <command> [flags] [SITE|DOMAIN]

commands:
  show [SITE|DOMAIN]     every site with connections, a lowered concurrency, a suspension or queued
                         jobs, or one
  suspend SITE|DOMAIN    stop every deliverer connecting to the site (-for 1h, -reason TEXT)
  resume SITE|DOMAIN     end the site's suspension

A site is named as show prints it (its MX host names), or by a destination domain, which a
deliverer resolves to its site through DNS.
Output: aligned columns; -json for JSON Lines.
Global flags: -server URL (default $SLUICE_NATS_URL or nats://127.0.0.1:4222), -creds FILE, -timeout 5s.
`

// runShaping implements "sluice shaping": the deliverers' traffic shaping
// API (proto/admin ShapingPrefix), answered by any one deliverer.
func runShaping(args []string, stdout, stderr io.Writer) int {
	args = globalFlagsLast(args)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, shapingUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, rest := args[0], args[1:]
	var o queueOpts
	fs := flag.NewFlagSet("sluice shaping "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.global(fs)
	var dur time.Duration
	var reason string
	if cmd == api.ShapingSuspend {
		fs.DurationVar(&dur, "for", time.Hour, "how long the suspension lasts")
		fs.StringVar(&reason, "reason", "", "why, for the log and `sluice shaping show`")
	}
	pos, err := parseInterleaved(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	switch {
	case cmd != api.ShapingShow && cmd != api.ShapingSuspend && cmd != api.ShapingResume:
		fmt.Fprintf(stderr, "sluice shaping: unknown command %q\n\n%s", cmd, shapingUsage)
		return 2
	case len(pos) > 1 || cmd != api.ShapingShow && len(pos) != 1:
		fmt.Fprintf(stderr, "sluice shaping %s: want one site or domain\n", cmd)
		return 2
	}
	req := api.ShapingRequest{Reason: reason, Actor: actor()}
	if len(pos) == 1 {
		req.Site = pos[0]
	}
	if cmd == api.ShapingSuspend {
		req.For = dur.String()
	}
	var resp api.ShapingResponse
	if err := shapingCall(&o, cmd, req, &resp); err != nil {
		fmt.Fprintf(stderr, "sluice shaping %s: %v\n", cmd, err)
		return 1
	}
	if o.json {
		if err := writeJSONLines(stdout, resp.Sites); err != nil {
			return 1
		}
		return 0
	}
	printShaping(stdout, resp, time.Now())
	return 0
}

func shapingCall(o *queueOpts, endpoint string, req any, resp *api.ShapingResponse) error {
	c, err := dialQueue(o)
	if err != nil {
		return err
	}
	defer c.close()
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	msg, err := c.nc.Request(api.ShapingPrefix+"."+endpoint, data, o.timeout)
	if err != nil {
		hint := ""
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) {
			hint = "is one running? "
		}
		return fmt.Errorf("no answer from a deliverer within %s (%s%v)", o.timeout, hint, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return fmt.Errorf("%s", msg.Header.Get(micro.ErrorHeader))
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("unreadable answer from a deliverer: %v", err)
	}
	return nil
}

func printShaping(w io.Writer, resp api.ShapingResponse, now time.Time) {
	if len(resp.Sites) == 0 {
		fmt.Fprintln(w, "no site has connections, a lowered concurrency, a suspension or queued jobs")
	} else {
		tw := newTable(w)
		fmt.Fprintln(tw, "SITE\tCONNECTIONS\tLIMIT\tQUEUED\tRATE (SENT OF LIMIT)\tSUSPENDED\tHOLDERS")
		for _, s := range resp.Sites {
			susp := "-"
			if !s.SuspendedUntil.IsZero() {
				susp = fmt.Sprintf("until %s (%s): %s", s.SuspendedUntil.Local().Format(time.DateTime),
					s.SuspendedUntil.Sub(now).Round(time.Second), s.Reason)
			}
			var holders []string
			for h, n := range s.Holders {
				holders = append(holders, fmt.Sprintf("%s=%d", h, n))
			}
			sort.Strings(holders)
			queued := fmt.Sprint(s.Queued)
			if resp.QueuedUnknown != "" {
				queued = "?"
			}
			rate := "-"
			if s.Rate != "" {
				rate = fmt.Sprintf("%d of %s", s.Sent, s.Rate)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%s\t%s\t%s\t%s\n", s.Site, s.Connections, s.Limit, s.MaxConnections,
				queued, rate, cell(susp, 120), orDash(strings.Join(holders, ",")))
		}
		tw.Flush()
	}
	if resp.QueuedUnknown != "" {
		fmt.Fprintf(w, "queued jobs unknown: %s\n", resp.QueuedUnknown)
	}
	if resp.QueuedElsewhere > 0 {
		fmt.Fprintf(w, "%d queued jobs of destination domains not resolved to a site (beyond the most queued domains, or without MX now)\n", resp.QueuedElsewhere)
	}
}
