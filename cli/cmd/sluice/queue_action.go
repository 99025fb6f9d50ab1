package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// pastTense names what an action did, for its summary line.
var pastTense = map[string]string{
	"hold": "held", "release": "released", "retry": "made due", "delete": "deleted", "prioritize": "moved",
}

func queueAction(name string, args []string, stdout, stderr io.Writer) error {
	var o queueOpts
	fs := newFlagSet(name, stderr)
	o.global(fs)
	o.filters(fs)
	all := fs.Bool("all", false, "every job in the queue (with no other filter)")
	dry := fs.Bool("dry-run", false, "count what would change, change nothing")
	fs.DurationVar(&o.wait, "wait", 10*time.Minute, "how long a change of many jobs may take")
	bounce, keep := false, false
	if name == "delete" {
		fs.BoolVar(&bounce, "bounce", false, "send the sender a failure DSN (5.0.0 deleted by the postmaster)")
	}
	if name == "release" {
		fs.BoolVar(&keep, "keep-schedule", false, "leave a deferred job waiting for its retry time (default: try it now)")
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagErr(err)
	}
	o.finish()
	req := api.QueueActionRequest{DryRun: *dry, Bounce: bounce, KeepSchedule: keep, Actor: actor()}
	if name == "prioritize" {
		if len(pos) == 0 {
			return usagef("want a class first: prioritize high|normal|bulk ID... or filters")
		}
		if _, err := wire.ParseClass(pos[0]); err != nil {
			return usagef("%v", err)
		}
		req.Priority, pos = pos[0], pos[1:]
	}
	switch {
	case len(pos) > 0 && (!o.filter.Empty() || *all):
		return usagef("give ids or filters, not both")
	case len(pos) > 0:
		req.IDs = pos
	case *all && !o.filter.Empty():
		return usagef("-all selects every job; drop it to use filters")
	case *all || !o.filter.Empty():
		f := o.filter
		req.Filter = &f
	default:
		return usagef("give job or queue ids, filters, or -all")
	}
	c, err := dialQueue(&o)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.ping(); err != nil {
		return err
	}
	var resp api.QueueActionResponse
	if err := c.call(name, req, &resp, o.wait); err != nil {
		var se *serviceError
		if errors.As(err, &se) && se.code == "404" && req.Filter != nil {
			return fmt.Errorf("no job matches the filter (%s)", describeFilter(*req.Filter))
		}
		return err
	}
	if o.json {
		return writeJSONLine(stdout, &resp)
	}
	verb := pastTense[name]
	if name == "prioritize" {
		verb += " to " + req.Priority
	}
	if resp.DryRun {
		fmt.Fprintf(stdout, "dry run: %d of %d matching jobs would be %s\n", resp.Changed, resp.Matched, verb)
	} else {
		fmt.Fprintf(stdout, "%s %d of %d matching jobs\n", verb, resp.Changed, resp.Matched)
	}
	if len(resp.Skipped) > 0 {
		tw := newTable(stdout)
		for _, s := range resp.Skipped {
			fmt.Fprintf(tw, "  %s\t%s\n", s.JobID, s.Reason)
		}
		tw.Flush()
		if resp.SkippedTotal > len(resp.Skipped) {
			fmt.Fprintf(stdout, "  ... and %d more skipped\n", resp.SkippedTotal-len(resp.Skipped))
		}
	}
	if resp.Changed == 0 && !resp.DryRun {
		return errSilent
	}
	return nil
}
