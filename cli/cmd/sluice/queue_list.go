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

// firstPage is the size of the first page of a listing: small, so the
// first rows print at once; later pages are larger.
const (
	firstPage = 200
	nextPages = 1000
)

func queueList(args []string, stdout, stderr io.Writer) error {
	var o queueOpts
	fs := newFlagSet("list", stderr)
	o.global(fs)
	o.filters(fs)
	limit := fs.Int("limit", 0, "print at most this many jobs (0: all)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagErr(err)
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (list takes filters; use show ID for one message)", pos[0])
	}
	o.finish()
	c, err := dialQueue(&o)
	if err != nil {
		return err
	}
	defer c.close()

	paint := painter(isTerminal(stdout) && !o.json)
	req := api.QueueListRequest{Filter: o.filter, Limit: firstPage}
	printed, total := 0, 0
	now := time.Now()
	for {
		if *limit > 0 {
			req.Limit = min(req.Limit, *limit-printed)
		}
		var resp api.QueueListResponse
		if err := c.call(wire.AdminList, req, &resp, o.timeout); err != nil {
			return err
		}
		total = resp.Total
		// No header over nothing: an empty answer is said on stderr.
		if err := printRows(stdout, resp.Rows, o.json, printed == 0 && len(resp.Rows) > 0, paint, now); err != nil {
			return err
		}
		printed += len(resp.Rows)
		if resp.Next == "" || (*limit > 0 && printed >= *limit) || len(resp.Rows) == 0 {
			break
		}
		req.Cursor, req.Limit = resp.Next, nextPages
	}
	if o.json {
		return nil
	}
	switch {
	case total == 0 && o.filter.Empty():
		fmt.Fprintln(stderr, "the queue is empty")
	case total == 0:
		fmt.Fprintf(stderr, "no job matches the filter (%s)\n", describeFilter(o.filter))
		return errSilent
	case printed < total:
		fmt.Fprintf(stderr, "-- %d of %d jobs shown\n", printed, total)
	default:
		fmt.Fprintf(stderr, "-- %d jobs\n", total)
	}
	return nil
}

// printRows prints one page. Columns are aligned within a page, which is
// flushed at once so that the first rows of a long listing appear while the
// rest is fetched.
func printRows(w io.Writer, rows []api.QueueRow, asJSON, header bool, paint painter, now time.Time) error {
	if asJSON {
		for i := range rows {
			if err := writeJSONLine(w, &rows[i]); err != nil {
				return err
			}
		}
		return nil
	}
	tw := newTable(w)
	if header {
		fmt.Fprintln(tw, "JOB ID\tSTATE\tAGE\tSIZE\tPRIO\tTRIES\tNEXT\tSENDER\tRECIPIENTS\tLAST ERROR")
	}
	for _, r := range rows {
		rcpts := ""
		if len(r.Recipients) > 0 {
			rcpts = r.Recipients[0].Address
		}
		if more := len(r.Recipients) - 1 + r.MoreRecipients; more > 0 {
			rcpts += fmt.Sprintf(" (+%d)", more)
		}
		next := time.Time{}
		if r.NextAttempt != 0 {
			next = time.Unix(r.NextAttempt, 0)
		}
		lastErr := r.LastError
		if r.Reason != "" && lastErr != "" {
			lastErr = r.Reason + ": " + lastErr
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n",
			r.JobID, paint.state(r.QueueName), human.Age(now.Sub(time.Unix(r.ArrivalTime, 0))), size(r.MessageSize),
			r.Priority, r.Attempts, until(next, now), cell(sender(r.Sender), 40), cell(rcpts, 48), cell(lastErr, 80))
	}
	return tw.Flush()
}

func describeFilter(f api.QueueFilter) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("state", strings.Join(f.States, ","))
	add("domain", f.Domain)
	add("sender", f.Sender)
	add("recipient", f.Recipient)
	add("priority", strings.Join(f.Priorities, ","))
	add("reason", strings.Join(f.Reasons, ","))
	add("min-age", f.MinAge)
	add("max-age", f.MaxAge)
	return strings.Join(parts, " ")
}
