package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/cli/cluster"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// The health analysis is tested against real servers in package cluster;
// these tests are of the command: its tables, its JSON document and its
// exit status.

func reportedStreams(rep *cluster.Report) []string {
	var names []string
	for _, s := range rep.Streams {
		names = append(names, s.Stream)
	}
	return names
}

// clusterJSON runs "sluice cluster -json" and decodes its document.
func clusterJSON(t *testing.T, server string) (int, *cluster.Report, string) {
	t.Helper()
	code, out, errOut := diagRun("cluster", "-json", "-server", server, "-timeout", "3s")
	if code != 0 && code != exitNotOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep cluster.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("not one JSON document (%v):\n%s", err, out)
	}
	return code, &rep, out
}

// trimLines splits the output into lines without the padding tabwriter
// leaves at their ends.
func trimLines(out string) []string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return lines
}

// showRecorded shows a report recorded in testdata/cluster as the command
// does, and checks that its JSON document is the recorded one, byte for
// byte. It returns the report, the exit status and the tables.
func showRecorded(t *testing.T, name string) (*cluster.Report, int, string) {
	t.Helper()
	raw, err := os.ReadFile("testdata/cluster/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var rep cluster.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	jsonCode := showCluster(&rep, true, &out, &errOut)
	if out.String() != string(raw) || errOut.Len() != 0 {
		t.Errorf("%s: -json (exit %d) is not the recorded document:\n%s%s", name, jsonCode, out.String(), errOut.String())
	}
	out.Reset()
	code := showCluster(&rep, false, &out, &errOut)
	if jsonCode != code || errOut.Len() != 0 {
		t.Errorf("%s: exit %d with -json, %d without; stderr %q", name, jsonCode, code, errOut.String())
	}
	return &rep, code, out.String()
}

// TestClusterThreeNodes shows what "sluice cluster -json" answered of a
// real three-node cluster with Sluice's streams provisioned with three
// replicas, two messages in SLUICE_MSGS and two durable consumers, in the
// scenario of cluster.TestCheckThreeNodes (whose -v log has the documents
// to record again): healthy; after the leader of SLUICE_JOBS was stopped,
// every stream degraded naming it, exit status 3; with two of the three
// nodes stopped, no leader and no stream list, exit status 3.
func TestClusterThreeNodes(t *testing.T) {
	healthy, code, out := showRecorded(t, "healthy")
	msgs := healthy.Streams[0]
	n := len(healthy.Streams)
	lines := trimLines(out)
	if code != 0 || lines[0] != "JetStream cluster sluice-test, servers seen: n1, n2, n3" ||
		!regexp.MustCompile(`^STREAM\s+VERDICT\s+MESSAGES\s+BYTES\s+REPLICA\s+ROLE\s+CURRENT\s+LAG\s+ACTIVE\s+OFFLINE$`).MatchString(lines[2]) ||
		!regexp.MustCompile(`^SLUICE_MSGS\s+ok\s+2\s+\d+\s+`+msgs.Leader+`\s+leader\s+yes\s+-\s+-\s+no$`).MatchString(lines[3]) ||
		!regexp.MustCompile(`^\s+n[123]\s+follower\s+yes\s+0\s+\d+(\.\d+)?m?s\s+no$`).MatchString(lines[4]) ||
		lines[len(lines)-1] != fmt.Sprintf("cluster: ok: %d streams and 2 durable consumers, each with a leader and every replica current", n) {
		t.Fatalf("table (exit %d):\n%s", code, out)
	}
	if !regexp.MustCompile(`(?m)^SLUICE_MSGS/scheduler\s+ok\s+2\s+0\s+n[123]\s+leader`).MatchString(out) {
		t.Errorf("consumer row missing:\n%s", out)
	}

	// The node that led the jobs stopped. Right after the stop the leaders
	// may still count the stopped node current (until they have missed it
	// for a while), but offline it is.
	victimName := healthy.Streams[1].Leader
	_, code, out = showRecorded(t, "degraded")
	if code != exitNotOK || !strings.Contains(out, "Problems:\n  SLUICE_MSGS: degraded: "+victimName+" ") ||
		!regexp.MustCompile(`(?m)^\s+`+victimName+`\s+follower\s+(yes|no)\s+\d+\s+\S+\s+yes$`).MatchString(strings.Join(trimLines(out), "\n")) ||
		!strings.HasSuffix(out, fmt.Sprintf("cluster: NOT OK: %d of %d streams and 2 of 2 durable consumers not ok (degraded %d)\n", n, n, n+2)) {
		t.Errorf("degraded table (exit %d):\n%s", code, out)
	}

	// Two of three gone. The remaining replica either answers for its
	// leaderless group or, until it has decided that the group is
	// leaderless, stays silent; the consumers may or may not be listed (by
	// a meta leader on its way out) and are leaderless as well when they
	// are.
	// The recording lists the streams its sluice knew (OBJ_sluice_index
	// came later): the summary counts what the document holds.
	rep, code, out := showRecorded(t, "no_leader")
	k := len(rep.Streams)
	if code != exitNotOK ||
		!regexp.MustCompile(`Problems:\n  SLUICE_MSGS: no leader: ((n\d offline, [^;]+; ){2}1 of 3 replicas online, 2 needed to elect a leader|no answer: no leader, or no replica reachable)`).MatchString(out) ||
		!strings.Contains(out, "\n  JetStream could not list its streams (no meta leader?): only the ones this sluice knows are shown\n") ||
		!regexp.MustCompile(fmt.Sprintf(`\ncluster: NOT OK: %d of %d streams and [0-2] of [0-2] durable consumers?( \(those of \d+ streams? unlisted\))? not ok \(no leader (%d|%d|%d), stream list unavailable\)\n$`, k, k, k, k+1, k+2)).MatchString(out) {
		t.Errorf("no leader table (exit %d):\n%s", code, out)
	}
}

// TestClusterSingleServer runs the command against a single server: exit
// status 3 and every stream missing before any service provisioned them,
// and afterwards "single server (no cluster)" and ok for each, exit
// status 0.
func TestClusterSingleServer(t *testing.T) {
	ns := natstest.Start(t)
	k := len(cluster.KnownStreams())
	code, rep, raw := clusterJSON(t, ns.ClientURL())
	if code != exitNotOK || rep.OK {
		t.Fatalf("empty JetStream (exit %d):\n%s", code, raw)
	}
	code, out, _ := diagRun("cluster", "-server", ns.ClientURL())
	if code != exitNotOK || !strings.HasPrefix(out, "JetStream: no Sluice stream said where it is kept\n\n") || !regexp.MustCompile(`(?m)^KV_sluice_held\s+missing\s+0\s+0\s+-$`).MatchString(strings.Join(trimLines(out), "\n")) ||
		!strings.Contains(out, "  SLUICE_MSGS: missing: stream does not exist (no Sluice service has provisioned it on this JetStream)\n") ||
		!strings.HasSuffix(out, fmt.Sprintf("cluster: NOT OK: %d of %d streams and 0 of 0 durable consumers not ok (missing %d)\n", k, k, k)) {
		t.Errorf("missing streams (exit %d):\n%s", code, out)
	}

	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, wire.StreamResults, jetstream.ConsumerConfig{Durable: wire.ConsumerResults, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	code, rep, raw = clusterJSON(t, ns.ClientURL())
	want := reportedStreams(rep)
	n := len(want)
	if code != 0 || !rep.OK {
		t.Fatalf("single server (exit %d):\n%s", code, raw)
	}
	code, out, _ = diagRun("cluster", "-server", ns.ClientURL())
	lines := trimLines(out)
	if code != 0 || lines[0] != "JetStream on a single server (no cluster): sluice-embedded" ||
		strings.Count(out, "single server (no cluster)") != 1+n+1 ||
		lines[len(lines)-1] != fmt.Sprintf("cluster: ok: %d streams and 1 durable consumer, on a single server", n) {
		t.Errorf("single server table (exit %d):\n%s", code, out)
	}
	for i, name := range want {
		if !regexp.MustCompile(`^` + name + `\s+ok\s+\d+\s+\d+k?\s+single server \(no cluster\)$`).MatchString(lines[3+i]) {
			t.Errorf("row %q", lines[3+i])
		}
	}
}

func TestClusterUsageAndUnreachable(t *testing.T) {
	for _, args := range [][]string{{"cluster", "extra"}, {"cluster", "-bogus"}, {"cluster", "-timeout", "0s"}} {
		if code, _, errOut := diagRun(args...); code != 2 || !strings.Contains(errOut, "usage: sluice cluster") && !strings.Contains(errOut, "-timeout") {
			t.Errorf("%q: exit %d, %s", args, code, errOut)
		}
	}
	code, _, errOut := diagRun("cluster", "-server", "nats://127.0.0.1:1", "-timeout", "1s")
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS at nats://127.0.0.1:1 within 1s") {
		t.Fatalf("exit %d: %s", code, errOut)
	}

	// A NATS server without JetStream: nothing to judge, so the check
	// itself fails.
	plain, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	plain.Start()
	t.Cleanup(plain.Shutdown)
	if !plain.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	code, out, errOut := diagRun("cluster", "-server", plain.ClientURL(), "-timeout", "1s")
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "sluice cluster: no JetStream at "+plain.ClientURL()+" for this user: nats: no responders available for request") {
		t.Fatalf("exit %d: %q %q", code, out, errOut)
	}
}
