package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/cli/cluster"
)

// printCluster prints the report as two tables, streams then durable
// consumers, with one row per replica (the leader first), the problems of
// everything that is not ok, and a verdict line.
func printCluster(w io.Writer, rep *cluster.Report, paint painter) error {
	switch {
	case rep.Cluster != "":
		fmt.Fprintf(w, "JetStream cluster %s, servers seen: %s\n\n", rep.Cluster, strings.Join(rep.Servers, ", "))
	case len(rep.Servers) > 0:
		fmt.Fprintf(w, "JetStream on a single server (no cluster): %s\n\n", strings.Join(rep.Servers, ", "))
	default:
		fmt.Fprintf(w, "JetStream: no Sluice stream said where it is kept\n\n")
	}
	replicaHead := "REPLICA\tROLE\tCURRENT\tLAG\tACTIVE\tOFFLINE\t"

	tw := newTable(w)
	fmt.Fprintln(tw, "STREAM\tVERDICT\tMESSAGES\tBYTES\t"+replicaHead)
	for _, s := range rep.Streams {
		writeGroupRows(tw, []string{s.Stream, paint.verdict(s.Verdict), fmt.Sprint(s.Messages), size(int64(s.Bytes))}, s.Health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var consumers, unlisted int
	for _, s := range rep.Streams {
		consumers += len(s.Consumers)
		if s.ConsumersUnlisted {
			unlisted++
		}
	}
	fmt.Fprintln(w)
	switch {
	case consumers == 0 && unlisted > 0:
		fmt.Fprintf(w, "no durable consumers found; those of %s could not be listed\n", nouns(unlisted, "stream"))
	case consumers == 0:
		fmt.Fprintln(w, "no durable consumers (the services create them when they start)")
	default:
		tw = newTable(w)
		fmt.Fprintln(tw, "CONSUMER\tVERDICT\tPENDING\tACK PENDING\t"+replicaHead)
		for _, s := range rep.Streams {
			for _, c := range s.Consumers {
				writeGroupRows(tw, []string{s.Stream + "/" + c.Consumer, paint.verdict(c.Verdict), fmt.Sprint(c.Pending), fmt.Sprint(c.AckPending)}, c.Health)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	var problems []string
	var badStreams, badConsumers int
	counts := map[string]int{}
	for _, s := range rep.Streams {
		if s.Verdict != cluster.VerdictOK {
			badStreams++
			counts[s.Verdict]++
			problems = append(problems, fmt.Sprintf("%s: %s: %s", s.Stream, s.Verdict, strings.Join(s.Problems, "; ")))
		}
		for _, c := range s.Consumers {
			if c.Verdict != cluster.VerdictOK {
				badConsumers++
				counts[c.Verdict]++
				problems = append(problems, fmt.Sprintf("%s/%s: %s: %s", s.Stream, c.Consumer, c.Verdict, strings.Join(c.Problems, "; ")))
			}
		}
	}
	why := verdictCounts(counts)
	if rep.StreamsUnlisted {
		problems = append(problems, "JetStream could not list its streams (no meta leader?): only the ones this sluice knows are shown")
		why = strings.TrimPrefix(why+", stream list unavailable", ", ")
	}
	fmt.Fprintln(w)
	if len(problems) == 0 {
		where := "each with a leader and every replica current"
		if rep.Cluster == "" {
			where = "on a single server"
		}
		fmt.Fprintf(w, "cluster: %s: %s and %s, %s\n", paint.verdict(cluster.VerdictOK), nouns(len(rep.Streams), "stream"), nouns(consumers, "durable consumer"), where)
		return nil
	}
	fmt.Fprintln(w, "Problems:")
	for _, p := range problems {
		fmt.Fprintln(w, "  "+p)
	}
	cons := fmt.Sprintf("%d of %s", badConsumers, nouns(consumers, "durable consumer"))
	if unlisted > 0 {
		cons += fmt.Sprintf(" (those of %s unlisted)", nouns(unlisted, "stream"))
	}
	fmt.Fprintf(w, "\ncluster: %s: %d of %s and %s not ok (%s)\n",
		paint.verdict("NOT OK"), badStreams, nouns(len(rep.Streams), "stream"), cons, why)
	return nil
}

// writeGroupRows writes the rows of one stream or consumer: first its own
// cells with the leader (or the first replica), then one row per other
// replica with the leading cells blank.
func writeGroupRows(w io.Writer, lead []string, g cluster.Health) {
	row := func(cells ...string) { fmt.Fprintln(w, strings.Join(cells, "\t")+"\t") }
	blank := make([]string, len(lead))
	switch {
	case !g.Clustered && (g.Verdict == cluster.VerdictOK || g.Leader != ""):
		row(append(lead, "single server (no cluster)", "", "", "", "", "")...)
		return
	case len(g.Peers) == 0:
		row(append(lead, "-", "", "", "", "", "")...)
		return
	}
	for i, p := range g.Peers {
		cells := lead
		if i > 0 {
			cells = blank
		}
		role, current, lag, active := "follower", yesNo(p.Current), fmt.Sprint(p.Lag), "-"
		if p.ActiveMS != nil {
			active = cluster.Ago(time.Duration(*p.ActiveMS) * time.Millisecond)
		}
		switch {
		case p.Leader:
			role, lag, active = "leader", "-", "-"
		case p.Joining:
			role = "joining"
		}
		row(append(cells, p.Name, role, current, lag, active, yesNo(p.Offline))...)
	}
}

// nouns counts things: "1 stream", "8 streams".
func nouns(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// verdictCounts lists how many streams and consumers have each verdict
// that is not ok, worst first: "no leader 1, degraded 9".
func verdictCounts(m map[string]int) string {
	var parts []string
	for _, v := range []string{cluster.VerdictNoLeader, cluster.VerdictMissing, cluster.VerdictError, cluster.VerdictDegraded} {
		if m[v] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", v, m[v]))
		}
	}
	return strings.Join(parts, ", ")
}

// verdict colours a verdict on a terminal only: ok green, degraded yellow,
// the rest red.
func (p painter) verdict(v string) string {
	if !p {
		return v
	}
	c := "31"
	switch v {
	case cluster.VerdictOK:
		c = "32"
	case cluster.VerdictDegraded:
		c = "33"
	}
	return "\x1b[" + c + "m" + v + "\x1b[0m"
}
