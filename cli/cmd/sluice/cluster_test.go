package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// testCluster is a JetStream cluster of real servers in the test's process,
// on loopback.
type testCluster struct {
	t       *testing.T
	name    string
	opts    []*server.Options
	servers []*server.Server
}

// startCluster starts n servers named n1..nN in the cluster "sluice-test",
// each with its own store and a route to every one, and waits until
// JetStream has elected its meta leader.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	// The cluster ports must be known before the servers start, to
	// configure the routes: take free ones from the kernel.
	ports := make([]int, n)
	var ls []net.Listener
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	var routes []string
	for i, l := range ls {
		l.Close()
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i]))
	}
	c := &testCluster{t: t, name: "sluice-test"}
	for i := range n {
		c.opts = append(c.opts, &server.Options{
			ServerName:            fmt.Sprintf("n%d", i+1),
			Host:                  "127.0.0.1",
			Port:                  server.RANDOM_PORT,
			JetStream:             true,
			StoreDir:              t.TempDir(),
			Cluster:               server.ClusterOpts{Name: c.name, Host: "127.0.0.1", Port: ports[i]},
			Routes:                server.RoutesFromStr(strings.Join(routes, ",")),
			NoSigs:                true,
			NoLog:                 true,
			DisableShortFirstPing: true,
		})
		c.servers = append(c.servers, nil)
		c.start(i)
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	c.waitMetaLeader()
	return c
}

// start starts (or restarts, on the same store and cluster port) server i.
func (c *testCluster) start(i int) {
	c.t.Helper()
	s, err := server.NewServer(c.opts[i])
	if err != nil {
		c.t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		c.t.Fatalf("%s not ready", c.opts[i].ServerName)
	}
	c.servers[i] = s
}

// stop shuts server i down, as an operator stopping a node would.
func (c *testCluster) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
}

func (c *testCluster) waitMetaLeader() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, s := range c.servers {
			if s.Running() && s.JetStreamIsLeader() {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatal("no JetStream meta leader within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// urls is every running server's client URL, comma-separated, as an
// operator would give -server.
func (c *testCluster) urls() string {
	var u []string
	for _, s := range c.servers {
		if s.Running() {
			u = append(u, s.ClientURL())
		}
	}
	return strings.Join(u, ",")
}

// provision creates Sluice's streams and buckets with the given replicas,
// retrying while the cluster settles (a young meta leader may not know
// every peer yet and refuse R3 for lack of servers).
func provision(t *testing.T, js jetstream.JetStream, replicas int) {
	t.Helper()
	q := config.DefaultQueue()
	q.Replicas = replicas
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := streams.Provision(ctx, js, q)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("provision: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wantStreams is what the command should report on: the streams Sluice is
// known to use, then the other streams named like Sluice's that exist (the
// services of this tree may provision more than this command knows of).
func wantStreams(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var extra []string
	names := js.StreamNames(ctx)
	for n := range names.Name() {
		if !slices.Contains(clusterStreams, n) && (strings.HasPrefix(n, "SLUICE_") || strings.HasPrefix(n, "KV_sluice_") || strings.HasPrefix(n, "OBJ_sluice_")) {
			extra = append(extra, n)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(extra)
	return append(slices.Clone(clusterStreams), extra...)
}

func reportedStreams(rep *clusterReport) []string {
	var names []string
	for _, s := range rep.Streams {
		names = append(names, s.Stream)
	}
	return names
}

// clusterJSON runs "sluice cluster -json" and decodes its document.
func clusterJSON(t *testing.T, server string) (int, *clusterReport, string) {
	t.Helper()
	code, out, errOut := diagRun("cluster", "-json", "-server", server, "-timeout", "3s")
	if code != 0 && code != exitNotOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep clusterReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("not one JSON document (%v):\n%s", err, out)
	}
	return code, &rep, out
}

// pollCluster runs "sluice cluster -json" until done accepts the result or
// the time is up, and returns the last result.
func pollCluster(t *testing.T, server string, within time.Duration, done func(int, *clusterReport) bool) (int, *clusterReport, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, rep, raw := clusterJSON(t, server)
		if done(code, rep) {
			return code, rep, raw
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reached within %s; last (exit %d):\n%s", within, code, raw)
		}
		time.Sleep(250 * time.Millisecond)
	}
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

// TestClusterThreeNodes provisions Sluice's streams with three replicas on a
// three-node cluster, checks that every stream and durable consumer has a
// leader among the nodes and two current followers, then stops the leader of
// SLUICE_JOBS and checks that every stream becomes degraded, naming the
// stopped node, with exit status 3; and that it is ok again once the node is
// back and caught up.
func TestClusterThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node JetStream cluster")
	}
	c := startCluster(t, 3)
	nc, err := nats.Connect(c.urls(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	provision(t, js, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range []string{"Q1", "Q2"} {
		if _, err := js.Publish(ctx, wire.MessageSubject(id), []byte("message "+id)); err != nil {
			t.Fatal(err)
		}
	}
	// Two durable consumers as the services make them, and an ephemeral
	// one, which the command leaves out.
	for stream, durable := range map[string]string{wire.StreamMessages: wire.ConsumerScheduler, wire.StreamBounces: wire.ConsumerBouncer} {
		if _, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: durable, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.CreateConsumer(ctx, wire.StreamEvents, jetstream.ConsumerConfig{InactiveThreshold: time.Hour}); err != nil {
		t.Fatal(err)
	}

	nodes := []string{"n1", "n2", "n3"}
	want := wantStreams(t, js)
	n := len(want)
	_, rep, raw := pollCluster(t, c.urls(), 60*time.Second, func(code int, _ *clusterReport) bool { return code == 0 })
	if rep.Cluster != c.name || !rep.OK || !slices.Equal(rep.Servers, nodes) || !slices.Equal(reportedStreams(rep), want) {
		t.Fatalf("report (want streams %q):\n%s", want, raw)
	}
	checkHealthy := func(what string, g groupHealth) {
		t.Helper()
		if g.Verdict != verdictOK || !g.Clustered || g.Cluster != c.name || g.Replicas != 3 || len(g.Problems) != 0 ||
			!slices.Contains(nodes, g.Leader) || len(g.Peers) != 3 || g.Peers[0].Name != g.Leader || !g.Peers[0].Leader {
			t.Errorf("%s: %+v", what, g)
			return
		}
		var names []string
		for _, p := range g.Peers {
			names = append(names, p.Name)
			if !p.Current || p.Offline || p.Joining || p.Lag != 0 {
				t.Errorf("%s: replica %+v not current", what, p)
			}
		}
		if slices.Sort(names); !slices.Equal(names, nodes) {
			t.Errorf("%s: replicas %q", what, names)
		}
	}
	for _, s := range rep.Streams {
		checkHealthy(s.Stream, s.groupHealth)
		var cons []string
		for _, cs := range s.Consumers {
			cons = append(cons, cs.Consumer)
			checkHealthy(s.Stream+"/"+cs.Consumer, cs.groupHealth)
		}
		want := map[string][]string{wire.StreamMessages: {wire.ConsumerScheduler}, wire.StreamBounces: {wire.ConsumerBouncer}}[s.Stream]
		if !slices.Equal(cons, want) {
			t.Errorf("%s: consumers %q, want %q (durable only)", s.Stream, cons, want)
		}
	}
	msgs := rep.Streams[0]
	if msgs.Messages != 2 || msgs.Bytes == 0 || msgs.Consumers[0].Pending != 2 {
		t.Errorf("SLUICE_MSGS: %d messages, %d bytes, consumer pending %d; want 2, >0, 2", msgs.Messages, msgs.Bytes, msgs.Consumers[0].Pending)
	}
	if !strings.Contains(raw, `"leader":"n`) || !strings.Contains(raw, `"active_ms":`) {
		t.Errorf("JSON field names:\n%s", raw)
	}

	// The same as a table.
	code, out, _ := diagRun("cluster", "-server", c.urls())
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
	t.Logf("healthy:\n%s", out)

	// Stop the node that leads the jobs, as losing it in production would.
	victim := slices.Index(nodes, rep.Streams[1].Leader)
	victimName := nodes[victim]
	c.stop(victim)
	degraded := func(g groupHealth) bool {
		if g.Verdict != verdictDegraded || g.Leader == "" || g.Leader == victimName {
			return false
		}
		for _, p := range g.Peers {
			if p.Name == victimName {
				return (p.Offline || !p.Current) && strings.HasPrefix(strings.Join(g.Problems, "; "), victimName+" ")
			}
		}
		return false
	}
	code, rep, raw = pollCluster(t, c.urls(), 60*time.Second, func(code int, rep *clusterReport) bool {
		if code != exitNotOK || rep.OK {
			return false
		}
		for _, s := range rep.Streams {
			if !degraded(s.groupHealth) {
				return false
			}
			for _, cs := range s.Consumers {
				if !degraded(cs.groupHealth) {
					return false
				}
			}
		}
		return true
	})
	t.Logf("%s stopped; degraded:\n%s", victimName, raw)
	// Right after the stop the leaders may still count the stopped node
	// current (until they have missed it for a while), but offline it is.
	code, out, _ = diagRun("cluster", "-server", c.urls())
	if code != exitNotOK || !strings.Contains(out, "Problems:\n  SLUICE_MSGS: degraded: "+victimName+" ") ||
		!regexp.MustCompile(`(?m)^\s+`+victimName+`\s+follower\s+(yes|no)\s+\d+\s+\S+\s+yes$`).MatchString(strings.Join(trimLines(out), "\n")) ||
		!strings.HasSuffix(out, fmt.Sprintf("cluster: NOT OK: %d of %d streams and 2 of 2 durable consumers not ok (degraded %d)\n", n, n, n+2)) {
		t.Errorf("degraded table (exit %d):\n%s", code, out)
	}
	t.Logf("table:\n%s", out)

	// Back, and caught up.
	c.start(victim)
	pollCluster(t, c.urls(), 60*time.Second, func(code int, rep *clusterReport) bool {
		return code == 0 && rep.OK && slices.Equal(rep.Servers, nodes)
	})

	// Two of three gone: no quorum, so no stream can have a leader, and
	// without a meta leader JetStream cannot list the streams either: the
	// known ones are reported.
	c.stop(victim)
	c.stop((victim + 1) % 3)
	k := len(clusterStreams)
	_, _, raw = pollCluster(t, c.urls(), 60*time.Second, func(code int, rep *clusterReport) bool {
		if code != exitNotOK || !rep.StreamsUnlisted || !slices.Equal(reportedStreams(rep), clusterStreams) {
			return false
		}
		for _, s := range rep.Streams {
			if s.Verdict != verdictNoLeader || s.Leader != "" {
				return false
			}
		}
		return true
	})
	t.Logf("two of three stopped:\n%s", raw)
	code, out, _ = diagRun("cluster", "-server", c.urls(), "-timeout", "3s")
	// The remaining replica either answers for its leaderless group or,
	// until it has decided that the group is leaderless, stays silent; the
	// consumers may or may not be listed (by a meta leader on its way out)
	// and are leaderless as well when they are.
	if code != exitNotOK ||
		!regexp.MustCompile(`Problems:\n  SLUICE_MSGS: no leader: ((n\d offline, [^;]+; ){2}1 of 3 replicas online, 2 needed to elect a leader|no answer: no leader, or no replica reachable)`).MatchString(out) ||
		!strings.Contains(out, "\n  JetStream could not list its streams (no meta leader?): only the ones this sluice knows are shown\n") ||
		!regexp.MustCompile(fmt.Sprintf(`\ncluster: NOT OK: %d of %d streams and [0-2] of [0-2] durable consumers?( \(those of \d+ streams? unlisted\))? not ok \(no leader (%d|%d|%d), stream list unavailable\)\n$`, k, k, k, k+1, k+2)).MatchString(out) {
		t.Errorf("no leader table (exit %d):\n%s", code, out)
	}
	t.Logf("no leader table:\n%s", out)
}

// TestClusterSingleServer checks a single server: every stream missing
// before any service provisioned them, and afterwards "single server (no
// cluster)" and ok for each.
func TestClusterSingleServer(t *testing.T) {
	ns := natstest.Start(t)
	k := len(clusterStreams)
	code, rep, raw := clusterJSON(t, ns.ClientURL())
	if code != exitNotOK || rep.OK || !slices.Equal(reportedStreams(rep), clusterStreams) {
		t.Fatalf("empty JetStream (exit %d):\n%s", code, raw)
	}
	for _, s := range rep.Streams {
		if s.Verdict != verdictMissing || s.Clustered {
			t.Errorf("%s: %+v, want missing", s.Stream, s.groupHealth)
		}
	}
	code, out, _ := diagRun("cluster", "-server", ns.ClientURL())
	if code != exitNotOK || !strings.HasPrefix(out, "JetStream: no Sluice stream said where it is kept\n\n") || !regexp.MustCompile(`(?m)^KV_sluice_held\s+missing\s+0\s+0\s+-$`).MatchString(strings.Join(trimLines(out), "\n")) ||
		!strings.Contains(out, "  SLUICE_MSGS: missing: stream does not exist (no Sluice service has provisioned it on this JetStream)\n") ||
		!strings.HasSuffix(out, fmt.Sprintf("cluster: NOT OK: %d of %d streams and 0 of 0 durable consumers not ok (missing %d)\n", k, k, k)) {
		t.Errorf("missing streams (exit %d):\n%s", code, out)
	}

	_, js := ns.Connect(t)
	provision(t, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateConsumer(ctx, wire.StreamResults, jetstream.ConsumerConfig{Durable: wire.ConsumerResults, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	// A bucket of a newer Sluice is reported after the known streams; a
	// stream that is not Sluice's is not.
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "sluice_zz_future"}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	want := wantStreams(t, js)
	n := len(want)
	code, rep, raw = clusterJSON(t, ns.ClientURL())
	if code != 0 || !rep.OK || rep.Cluster != "" || !slices.Equal(rep.Servers, []string{"sluice-embedded"}) ||
		!slices.Equal(reportedStreams(rep), want) || want[n-1] != "KV_sluice_zz_future" {
		t.Fatalf("single server (exit %d, want streams %q):\n%s", code, want, raw)
	}
	for _, s := range rep.Streams {
		if s.Verdict != verdictOK || s.Clustered || s.Leader != "sluice-embedded" || s.Replicas != 1 || len(s.Peers) != 0 {
			t.Errorf("%s: %+v", s.Stream, s.groupHealth)
		}
	}
	if cs := rep.Streams[2].Consumers; len(cs) != 1 || cs[0].Consumer != wire.ConsumerResults || cs[0].Verdict != verdictOK {
		t.Errorf("SLUICE_RESULTS consumers: %+v", cs)
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

// TestJudge is the verdict policy, case by case.
func TestJudge(t *testing.T) {
	peer := func(name string, current, offline bool, lag uint64, active time.Duration) *jetstream.PeerInfo {
		return &jetstream.PeerInfo{Name: name, Current: current, Offline: offline, Lag: lag, Active: active}
	}
	for _, tc := range []struct {
		name     string
		ci       *jetstream.ClusterInfo
		replicas int
		verdict  string
		problems string
	}{
		{"single server", &jetstream.ClusterInfo{Leader: "s1"}, 1, verdictOK, ""},
		{"no cluster info", nil, 0, verdictOK, ""},
		{"R3 healthy", &jetstream.ClusterInfo{Name: "c", RaftGroup: "S-R3F-x", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 200*time.Millisecond), peer("n3", true, false, 0, 100*time.Millisecond)}}, 3, verdictOK, ""},
		{"R1 in a cluster", &jetstream.ClusterInfo{Name: "c", RaftGroup: "S-R1F-x", Leader: "n2"}, 1, verdictOK, ""},
		{"one offline", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0), peer("n3", false, true, 7, 8240*time.Millisecond)}}, 3, verdictDegraded,
			"n3 offline, last seen 8.2s ago"},
		{"one behind", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", false, false, 12, 1500*time.Millisecond), peer("n3", true, false, 0, 0)}}, 3, verdictDegraded,
			"n2 not current, 12 operations behind, last seen 1.5s ago"},
		{"silent but still current", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 8900*time.Millisecond), peer("n3", true, false, 0, 4900*time.Millisecond)}}, 3, verdictDegraded,
			"n2 silent, last seen 8.9s ago (JetStream counts a replica current for 10s after it falls silent)"},
		{"joining", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{{Name: "n2", Pending: true}, peer("n3", true, false, 0, 0)}}, 3, verdictDegraded, "n2 still joining"},
		{"too few", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0)}}, 3, verdictDegraded, "2 of 3 replicas"},
		{"no leader", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g",
			Replicas: []*jetstream.PeerInfo{peer("n1", false, false, 0, 0), peer("n2", false, true, 0, 3*time.Minute), peer("n3", false, true, 0, 3*time.Minute)}}, 3, verdictNoLeader,
			"n2 offline, last seen 3m ago; n3 offline, last seen 3m ago; 1 of 3 replicas online, 2 needed to elect a leader"},
		{"new leader never heard from the old one", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0), peer("n3", false, true, 3, 0)}}, 3, verdictDegraded,
			"n3 offline, not heard from since the last election"},
	} {
		g := judge(tc.ci, tc.replicas)
		if g.Verdict != tc.verdict || strings.Join(g.Problems, "; ") != tc.problems {
			t.Errorf("%s: %s %q, want %s %q", tc.name, g.Verdict, g.Problems, tc.verdict, tc.problems)
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
