package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// wantStreams is what Check should report on: the streams Sluice is
// known to use, then the other streams named like Sluice's that exist (the
// services of this tree may provision more than this package knows of).
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

func reportedStreams(rep *Report) []string {
	var names []string
	for _, s := range rep.Streams {
		names = append(names, s.Stream)
	}
	return names
}

// check connects as `sluice cluster -timeout 3s` does, a new connection
// each time that does not reconnect, and returns Check's report with its
// JSON document.
func check(t *testing.T, urls string) (*Report, string) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.Timeout(3*time.Second), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rep, err := Check(context.Background(), nc, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	return rep, string(raw)
}

// pollCheck runs Check until done accepts the report or the time is up,
// and returns the last report.
func pollCheck(t *testing.T, urls string, within time.Duration, done func(*Report) bool) (*Report, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		rep, raw := check(t, urls)
		if done(rep) {
			return rep, raw
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reached within %s; last:\n%s", within, raw)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestCheckThreeNodes provisions Sluice's streams with three replicas on a
// three-node cluster, checks that every stream and durable consumer has a
// leader among the nodes and two current followers, then stops the leader
// of SLUICE_JOBS and checks that every stream becomes degraded, naming the
// stopped node; that all is ok again once the node is back and caught up;
// and that with two of three nodes stopped no stream has a leader and the
// known streams are reported without the stream list.
func TestCheckThreeNodes(t *testing.T) {
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
	// one, which the report leaves out.
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
	rep, raw := pollCheck(t, c.urls(), 60*time.Second, func(rep *Report) bool { return rep.OK })
	if rep.Cluster != c.name || !rep.OK || !slices.Equal(rep.Servers, nodes) || !slices.Equal(reportedStreams(rep), want) {
		t.Fatalf("report (want streams %q):\n%s", want, raw)
	}
	checkHealthy := func(what string, g Health) {
		t.Helper()
		if g.Verdict != VerdictOK || !g.Clustered || g.Cluster != c.name || g.Replicas != 3 || len(g.Problems) != 0 ||
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
		checkHealthy(s.Stream, s.Health)
		var cons []string
		for _, cs := range s.Consumers {
			cons = append(cons, cs.Consumer)
			checkHealthy(s.Stream+"/"+cs.Consumer, cs.Health)
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
	t.Logf("healthy:\n%s", raw)

	// Stop the node that leads the jobs, as losing it in production would.
	victim := slices.Index(nodes, rep.Streams[1].Leader)
	victimName := nodes[victim]
	c.stop(victim)
	degraded := func(g Health) bool {
		if g.Verdict != VerdictDegraded || g.Leader == "" || g.Leader == victimName {
			return false
		}
		for _, p := range g.Peers {
			if p.Name == victimName {
				return (p.Offline || !p.Current) && strings.HasPrefix(strings.Join(g.Problems, "; "), victimName+" ")
			}
		}
		return false
	}
	_, raw = pollCheck(t, c.urls(), 60*time.Second, func(rep *Report) bool {
		if rep.OK {
			return false
		}
		for _, s := range rep.Streams {
			if !degraded(s.Health) {
				return false
			}
			for _, cs := range s.Consumers {
				if !degraded(cs.Health) {
					return false
				}
			}
		}
		return true
	})
	t.Logf("%s stopped; degraded:\n%s", victimName, raw)

	// Back, and caught up.
	c.start(victim)
	pollCheck(t, c.urls(), 60*time.Second, func(rep *Report) bool {
		return rep.OK && slices.Equal(rep.Servers, nodes)
	})

	// Two of three gone: no quorum, so no stream can have a leader, and
	// without a meta leader JetStream cannot list the streams either: the
	// known ones are reported.
	c.stop(victim)
	c.stop((victim + 1) % 3)
	_, raw = pollCheck(t, c.urls(), 60*time.Second, func(rep *Report) bool {
		if rep.OK || !rep.StreamsUnlisted || !slices.Equal(reportedStreams(rep), clusterStreams) {
			return false
		}
		for _, s := range rep.Streams {
			if s.Verdict != VerdictNoLeader || s.Leader != "" {
				return false
			}
		}
		return true
	})
	t.Logf("two of three stopped:\n%s", raw)
}

// TestCheckSingleServer checks a single server: every stream missing
// before any service provisioned them, and afterwards each ok and not
// clustered, with the buckets of a newer Sluice after the known streams
// and the streams that are not Sluice's left out.
func TestCheckSingleServer(t *testing.T) {
	ns := natstest.Start(t)
	rep, raw := check(t, ns.ClientURL())
	if rep.OK || !slices.Equal(reportedStreams(rep), clusterStreams) {
		t.Fatalf("empty JetStream:\n%s", raw)
	}
	for _, s := range rep.Streams {
		if s.Verdict != VerdictMissing || s.Clustered {
			t.Errorf("%s: %+v, want missing", s.Stream, s.Health)
		}
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
	rep, raw = check(t, ns.ClientURL())
	if !rep.OK || rep.Cluster != "" || !slices.Equal(rep.Servers, []string{"sluice-embedded"}) ||
		!slices.Equal(reportedStreams(rep), want) || want[n-1] != "KV_sluice_zz_future" {
		t.Fatalf("single server (want streams %q):\n%s", want, raw)
	}
	for _, s := range rep.Streams {
		if s.Verdict != VerdictOK || s.Clustered || s.Leader != "sluice-embedded" || s.Replicas != 1 || len(s.Peers) != 0 {
			t.Errorf("%s: %+v", s.Stream, s.Health)
		}
	}
	if cs := rep.Streams[2].Consumers; len(cs) != 1 || cs[0].Consumer != wire.ConsumerResults || cs[0].Verdict != VerdictOK {
		t.Errorf("SLUICE_RESULTS consumers: %+v", cs)
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
		{"single server", &jetstream.ClusterInfo{Leader: "s1"}, 1, VerdictOK, ""},
		{"no cluster info", nil, 0, VerdictOK, ""},
		{"R3 healthy", &jetstream.ClusterInfo{Name: "c", RaftGroup: "S-R3F-x", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 200*time.Millisecond), peer("n3", true, false, 0, 100*time.Millisecond)}}, 3, VerdictOK, ""},
		{"R1 in a cluster", &jetstream.ClusterInfo{Name: "c", RaftGroup: "S-R1F-x", Leader: "n2"}, 1, VerdictOK, ""},
		{"one offline", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0), peer("n3", false, true, 7, 8240*time.Millisecond)}}, 3, VerdictDegraded,
			"n3 offline, last seen 8.2s ago"},
		{"one behind", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", false, false, 12, 1500*time.Millisecond), peer("n3", true, false, 0, 0)}}, 3, VerdictDegraded,
			"n2 not current, 12 operations behind, last seen 1.5s ago"},
		{"silent but still current", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 8900*time.Millisecond), peer("n3", true, false, 0, 4900*time.Millisecond)}}, 3, VerdictDegraded,
			"n2 silent, last seen 8.9s ago (JetStream counts a replica current for 10s after it falls silent)"},
		{"joining", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{{Name: "n2", Pending: true}, peer("n3", true, false, 0, 0)}}, 3, VerdictDegraded, "n2 still joining"},
		{"too few", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0)}}, 3, VerdictDegraded, "2 of 3 replicas"},
		{"no leader", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g",
			Replicas: []*jetstream.PeerInfo{peer("n1", false, false, 0, 0), peer("n2", false, true, 0, 3*time.Minute), peer("n3", false, true, 0, 3*time.Minute)}}, 3, VerdictNoLeader,
			"n2 offline, last seen 3m ago; n3 offline, last seen 3m ago; 1 of 3 replicas online, 2 needed to elect a leader"},
		{"new leader never heard from the old one", &jetstream.ClusterInfo{Name: "c", RaftGroup: "g", Leader: "n1",
			Replicas: []*jetstream.PeerInfo{peer("n2", true, false, 0, 0), peer("n3", false, true, 3, 0)}}, 3, VerdictDegraded,
			"n3 offline, not heard from since the last election"},
	} {
		g := judge(tc.ci, tc.replicas)
		if g.Verdict != tc.verdict || strings.Join(g.Problems, "; ") != tc.problems {
			t.Errorf("%s: %s %q, want %s %q", tc.name, g.Verdict, g.Problems, tc.verdict, tc.problems)
		}
	}
}
