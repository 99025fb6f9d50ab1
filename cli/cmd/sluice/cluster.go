package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/sluice-mta/sluice/cli/cluster"
)

const clusterUsage = `usage: sluice cluster [-json] [-server URL] [-creds FILE] [-timeout 5s]

Shows how JetStream holds Sluice's queue: for every Sluice stream (SLUICE_MSGS,
SLUICE_JOBS, SLUICE_RESULTS, SLUICE_BOUNCES, SLUICE_EVENTS, the streams of the
buckets OBJ_sluice_bodies, KV_sluice_refs, KV_sluice_held, KV_sluice_shaping, KV_sluice_strikes, and
any other stream named SLUICE_*, KV_sluice_* or OBJ_sluice_*) and every durable
consumer on them: the JetStream cluster, the leader, each replica (current or
not, operations behind the leader, time since the leader last heard from it,
offline), messages and bytes, and a verdict:

  ok         a leader, and every configured replica online and current
  degraded   a replica offline, not current, silent for 5s or more (JetStream
             itself counts a silent replica current for 10s) or still
             joining, or fewer replicas than configured: the stream works,
             with less margin
  no leader  no replica leads, or none answered within -timeout: writes wait
  missing    the stream does not exist (no service has provisioned it yet)
  error      JetStream answered with another error, printed with it

On a single server without a cluster every stream says "single server (no cluster)".
The answers are JetStream's own (stream and consumer info, as the stream and
consumer leaders see their replicas); no Sluice service needs to be running.

flags:
  -json          one JSON document instead of the tables
  -server URL    NATS server(s), comma-separated (default $SLUICE_NATS_URL or nats://127.0.0.1:4222)
  -creds FILE    NATS credentials (default $SLUICE_NATS_CREDS)
  -timeout D     connecting, and each JetStream request (default 5s)

Exit status: 0 when every stream and consumer is ok, 1 when JetStream could not
be asked, 2 for bad usage, 3 when a stream or consumer is not ok.
`

// exitNotOK is the exit status when some stream or consumer is not ok. It
// differs from 1 (the question could not be asked) and 2 (bad usage) so a
// monitoring script can tell a degraded cluster from a broken check.
const exitNotOK = 3

// runCluster implements "sluice cluster": it reads the flags, connects,
// asks cluster.Check and shows the report.
func runCluster(args []string, stdout, stderr io.Writer) int {
	var o queueOpts
	fs := flag.NewFlagSet("sluice cluster", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.global(fs)
	pos, err := parseInterleaved(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, clusterUsage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "sluice cluster: %v\n\n%s", err, clusterUsage)
		return 2
	case len(pos) > 0:
		fmt.Fprintf(stderr, "sluice cluster: unexpected argument %q\n\n%s", pos[0], clusterUsage)
		return 2
	case o.timeout <= 0:
		fmt.Fprintf(stderr, "sluice cluster: -timeout must be positive\n")
		return 2
	}
	c, err := dialQueue(&o)
	if err != nil {
		fmt.Fprintf(stderr, "sluice cluster: %v\n", err)
		return 1
	}
	defer c.close()
	rep, err := cluster.Check(context.Background(), c.nc, o.timeout)
	if err != nil {
		fmt.Fprintf(stderr, "sluice cluster: %v\n", err)
		return 1
	}
	return showCluster(rep, o.json, stdout, stderr)
}

// showCluster prints the report, as tables or as one JSON document, and
// returns the exit status it makes: 0 when every stream and consumer is
// ok, exitNotOK when one is not, 1 when the output cannot be written.
func showCluster(rep *cluster.Report, asJSON bool, stdout, stderr io.Writer) int {
	var err error
	if asJSON {
		err = writeJSONLine(stdout, rep)
	} else {
		err = printCluster(stdout, rep, painter(isTerminal(stdout)))
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice cluster: %v\n", err)
		return 1
	}
	if !rep.OK {
		return exitNotOK
	}
	return 0
}
