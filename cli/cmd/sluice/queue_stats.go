package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

func queueStats(args []string, stdout, stderr io.Writer) error {
	var o queueOpts
	fs := newFlagSet("stats", stderr)
	o.global(fs)
	o.filters(fs)
	top := fs.Int("top", 0, "show only the N largest domains (0: all)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagErr(err)
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	o.finish()
	c, err := dialQueue(&o)
	if err != nil {
		return err
	}
	defer c.close()
	var resp api.QueueStatsResponse
	if err := c.call(wire.AdminStats, api.QueueStatsRequest{Filter: o.filter, Top: *top}, &resp, o.timeout); err != nil {
		return err
	}
	if o.json {
		return writeJSONLine(stdout, &resp)
	}
	if resp.Jobs == 0 && !o.filter.Empty() {
		fmt.Fprintf(stderr, "no job matches the filter (%s)\n", describeFilter(o.filter))
		return errSilent
	}
	// The qshape table: one row per destination, largest first; columns are
	// age buckets in minutes, each counting jobs younger than its bound.
	tw := newTable(stdout)
	head := []string{"", "T"}
	for _, b := range resp.Buckets {
		head = append(head, fmt.Sprint(b))
	}
	if n := len(resp.Buckets); n > 0 {
		head = append(head, fmt.Sprintf("%d+", resp.Buckets[n-1]))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	line := func(r api.QueueShapeRow) {
		cells := []string{r.Domain, fmt.Sprint(r.Total)}
		for _, n := range r.Counts {
			cells = append(cells, fmt.Sprint(n))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	line(resp.Total)
	for _, r := range resp.Domains {
		line(r)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "jobs: %d\n", resp.Jobs)
	fmt.Fprintf(stdout, "by state: %s\n", counts(resp.ByState))
	fmt.Fprintf(stdout, "by priority: %s\n", counts(resp.ByClass))
	fmt.Fprintf(stdout, "by deferral reason: %s\n", counts(resp.ByReason))
	d := resp.Delay
	if d.Count == 0 {
		fmt.Fprintf(stdout, "delivery delay (last %s): no deliveries\n", d.Window)
	} else {
		fmt.Fprintf(stdout, "delivery delay (last %s, %d delivered): p50 %s  p90 %s  p99 %s  max %s\n", d.Window, d.Count,
			secs(d.P50), secs(d.P90), secs(d.P99), secs(d.Max))
	}
	return nil
}

// counts renders a map largest first: "deferred 950  held 50".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, "  ")
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
