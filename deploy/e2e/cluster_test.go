package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/freeport"
)

// The cluster tests run Sluice as it is deployed: the four service
// binaries against a three-node JetStream cluster of real nats-server
// processes with every stream replicated three times, and fail one part
// while an SMTP load runs. Each asserts exact counts: every message the
// ingress answered 250 arrives at the destination, duplicates (only what
// was in flight at the failure) stay under 1%, and the cluster's replicas
// are current again afterwards. A client that got a 4xx during an election
// was not promised anything and sends again, as real clients do; those
// replies are counted.

// clusterLoad is how many messages each failure test sends at least, at
// about 125 a second over 10 sessions. Duplicates come only from what was
// in flight at the failure (up to a deliverer's concurrency, 32), so the
// load must be large enough for the 1% bar to mean that, as in the issue
// that asked for these tests (3,000 messages).
const clusterLoad = 3000

// startCluster starts a three-node cluster on loopback, stopped (and its
// logs printed, if the test failed) when the test ends.
func startCluster(t testing.TB) *cluster.Cluster { return startNodes(t, 3) }

// startNodes is startCluster with the number of nodes; one node is a
// standalone server.
func startNodes(t testing.TB, nodes int) *cluster.Cluster {
	t.Helper()
	c, err := cluster.Start(cluster.Options{
		Bin:   filepath.Join(binDir, "nats-server"),
		Dir:   t.TempDir(),
		Nodes: nodes,
		Addr:  freeport.Addr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, n := range c.Nodes {
				b, _ := os.ReadFile(n.LogFile)
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) > 25 {
					lines = lines[len(lines)-25:]
				}
				t.Logf("--- nats-server %s log (last lines):\n%s", n.Name, strings.Join(lines, "\n"))
			}
		}
	})
	return c
}

// readyCluster is startCluster, waiting until every node is healthy
// before the services start: the tests of failures during a load need a
// cold start no more than once (TestClusterColdStart).
func readyCluster(t testing.TB) *cluster.Cluster { return readyNodes(t, 3) }

// readyNodes is readyCluster with the number of nodes.
func readyNodes(t testing.TB, nodes int) *cluster.Cluster {
	t.Helper()
	c := startNodes(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// clusterJS connects the test itself to the cluster, to ask it about its
// streams.
func clusterJS(t *testing.T, c *cluster.Cluster) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// streamLeader returns the node leading stream, waiting for it to have one.
func streamLeader(t *testing.T, js jetstream.JetStream, c *cluster.Cluster, stream string) *cluster.Node {
	t.Helper()
	var leader *cluster.Node
	eventually(t, 30*time.Second, stream+" has a leader", func() bool {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		if err != nil || info.Cluster == nil {
			return false
		}
		leader = c.Node(info.Cluster.Leader)
		return leader != nil
	})
	return leader
}

// replicasCurrent reports nil when every stream of the account (the
// queue's streams, the key-value buckets and the object store) has a
// leader and replicas on every other node, each online and current.
func replicasCurrent(js jetstream.JetStream, nodes int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if err := names.Err(); err != nil {
		return err
	}
	if len(all) == 0 {
		return errors.New("no streams")
	}
	for _, name := range all {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("%s: no leader", name)
		}
		if len(info.Cluster.Replicas) != nodes-1 {
			return fmt.Errorf("%s: leader %s and %d replicas, want %d", name, info.Cluster.Leader, len(info.Cluster.Replicas), nodes-1)
		}
		for _, r := range info.Cluster.Replicas {
			if r.Offline || !r.Current {
				return fmt.Errorf("%s: replica on %s offline=%v current=%v lag=%d", name, r.Name, r.Offline, r.Current, r.Lag)
			}
		}
	}
	return nil
}

// waitCurrent waits until replicasCurrent holds.
func waitCurrent(t *testing.T, js jetstream.JetStream, d time.Duration) {
	t.Helper()
	var last error
	deadline := time.Now().Add(d)
	for {
		if last = replicasCurrent(js, 3); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the cluster's replicas are not current: %v", d, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// load sends numbered messages (X-Seq and Message-ID carry the number) to
// dest.test over concurrent SMTP sessions. Each message is sent until the
// ingress answers 250; a 4xx, 5xx or broken connection is counted and the
// same message sent again.
type load struct {
	w        *world
	n        int           // at most this many messages
	from     int           // the first message's number; earlier numbers are another load's
	sessions int           // concurrent SMTP sessions
	interval time.Duration // message i is started no earlier than start + i*interval
	// addrs are the ingresses' SMTP addresses (default: the world's one).
	// Session s starts on addrs[s%len(addrs)] and, after a connection
	// error, sends to the next one, as a client with two MX or
	// submission hosts does.
	addrs []string
	// refuse, when not zero, addresses every refuse-th message (number
	// k with k%refuse == 0) to refuse<k>@dest.test, which the world's
	// destination refuses for good (refuseRefused): its sender gets a DSN
	// at sender.test instead.
	refuse int

	start    time.Time
	took     time.Duration // from start to the last 250, set when the sessions end
	taken    atomic.Int64  // messages taken by a session
	accepted atomic.Int64  // messages answered 250
	temp     atomic.Int64  // 4xx replies
	perm     atomic.Int64  // 5xx replies
	broken   atomic.Int64  // connection errors
	failover atomic.Int64  // sessions moved to the next ingress after a connection error
	stopping atomic.Bool
	wg       sync.WaitGroup
	slowest  atomic.Int64 // longest time from taking a message to its 250, in ns

	mu       sync.Mutex
	lastPerm error
	stuck    []int // messages given up on
}

// run starts the sessions; wait or stop ends them.
func (l *load) run() {
	l.start = time.Now()
	if len(l.addrs) == 0 {
		l.addrs = []string{l.w.smtp}
	}
	for s := range l.sessions {
		l.wg.Add(1)
		go l.session(s % len(l.addrs))
	}
}

// stop makes the sessions take no new message and waits for them to get
// the messages they hold accepted.
func (l *load) stop() { l.stopping.Store(true); l.wait() }

// wait waits until every message has been accepted.
func (l *load) wait() { l.wg.Wait(); l.took = time.Since(l.start) }

// count is how many messages were taken, all of which were accepted once
// the load has ended.
func (l *load) count() int { return int(l.taken.Load()) }

// session sends messages over one SMTP connection at a time, to
// l.addrs[at] until a connection to it fails.
func (l *load) session(at int) {
	defer l.wg.Done()
	var c *smtp.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for !l.stopping.Load() {
		i := int(l.taken.Add(1) - 1)
		if i >= l.n {
			l.taken.Add(-1)
			return
		}
		if l.interval > 0 {
			time.Sleep(time.Until(l.start.Add(time.Duration(i) * l.interval)))
		}
		k := l.from + i
		rcpt := fmt.Sprintf("r%d@dest.test", k)
		if l.refused(i) {
			rcpt = fmt.Sprintf("refuse%d@dest.test", k)
		}
		data := fmt.Sprintf("From: a@sender.test\r\nTo: %s\r\nSubject: load %d\r\nMessage-ID: <load-%d@sender.test>\r\nX-Seq: %d\r\n\r\nbody %d\r\n", rcpt, k, k, k, k)
		given := time.Now()
		for {
			if c == nil {
				var err error
				if c, err = smtp.Dial(l.addrs[at]); err != nil {
					l.broken.Add(1)
					l.next(&at)
					c = nil
					time.Sleep(100 * time.Millisecond)
					continue
				}
				c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
			}
			_, err := sendOn(c, "a@sender.test", []string{rcpt}, data)
			if err == nil {
				l.accepted.Add(1)
				for took := int64(time.Since(given)); ; {
					s := l.slowest.Load()
					if took <= s || l.slowest.CompareAndSwap(s, took) {
						break
					}
				}
				break
			}
			var se *smtp.SMTPError
			switch {
			case errors.As(err, &se) && se.Code >= 400 && se.Code < 500:
				l.temp.Add(1)
			case errors.As(err, &se):
				l.perm.Add(1)
				l.mu.Lock()
				l.lastPerm = err
				l.mu.Unlock()
			default:
				l.broken.Add(1)
				l.next(&at)
			}
			if se == nil || c.Reset() != nil {
				c.Close()
				c = nil
			}
			if time.Since(given) > 90*time.Second {
				// Nothing to count it against: a message never accepted
				// was promised nothing, but the test must say so.
				l.mu.Lock()
				l.stuck = append(l.stuck, i)
				l.mu.Unlock()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// next moves a session to the next ingress, if there is another.
func (l *load) next(at *int) {
	if len(l.addrs) > 1 {
		*at = (*at + 1) % len(l.addrs)
		l.failover.Add(1)
	}
}

// refused reports whether the load's message i goes to a recipient the
// destination refuses.
func (l *load) refused(i int) bool { return l.refuse > 0 && (l.from+i)%l.refuse == 0 }

// verify waits until every accepted message arrived at dest.test, or for
// a refused recipient its DSN at sender.test (up to d), and asserts the
// counts: none missing, none unknown, none delivered to the wrong side,
// duplicates under 1% (deliveries and DSNs each), and no 5xx reply ever
// (a 5xx would make a client bounce mail the failure should only have
// delayed).
func (l *load) verify(t *testing.T, d time.Duration) {
	t.Helper()
	l.mu.Lock()
	stuck, lastPerm := l.stuck, l.lastPerm
	l.mu.Unlock()
	if len(stuck) > 0 {
		t.Errorf("%d messages never got a 250 in 90 s of retrying, e.g. %v", len(stuck), stuck[:min(10, len(stuck))])
	}
	n := l.count()
	if got := int(l.accepted.Load()); got != n-len(stuck) {
		t.Fatalf("accepted %d of %d messages taken", got, n)
	}
	seq := regexp.MustCompile(`(?m)^X-Seq: (\d+)\r?$`)
	delivered, bounced := make([]int, n), make([]int, n)
	var unknown, unique int
	tally := func(ms []capture.Message, got []int) {
		for _, m := range ms {
			s := seq.FindSubmatch(m.Data)
			if s == nil {
				unknown++
				continue
			}
			i := atoi(s[1]) - l.from
			if i < 0 {
				continue // an earlier load's
			}
			if i >= n {
				unknown++
				continue
			}
			if delivered[i]+bounced[i] == 0 {
				unique++
			}
			got[i]++
		}
	}
	count := func() {
		clear(delivered)
		clear(bounced)
		unknown, unique = 0, 0
		tally(l.w.dest.Messages(), delivered)
		tally(l.w.senders.Messages(), bounced)
	}
	deadline := time.Now().Add(d)
	for count(); unique < n-len(stuck) && time.Now().Before(deadline); count() {
		time.Sleep(250 * time.Millisecond)
	}
	var missing, wrong []int
	dups, dsnDups, dsns := 0, 0, 0
	for i := range n {
		want, other := delivered[i], bounced[i]
		if l.refused(i) {
			want, other = bounced[i], delivered[i]
			dsns++
			dsnDups += max(bounced[i]-1, 0)
		} else {
			dups += max(delivered[i]-1, 0)
		}
		if want == 0 && !contains(stuck, i) {
			missing = append(missing, i)
		}
		if other > 0 {
			wrong = append(wrong, i)
		}
	}
	t.Logf("load: %d messages accepted in %s over %d sessions to %d ingresses (slowest %s to its 250); replies 4xx %d, 5xx %d, broken connections %d, moves to another ingress %d; delivered %d unique (%d duplicates) and %d DSNs for refused recipients (%d duplicates), %d unknown",
		n, l.took.Round(time.Millisecond), l.sessions, len(l.addrs), time.Duration(l.slowest.Load()).Round(time.Millisecond),
		l.temp.Load(), l.perm.Load(), l.broken.Load(), l.failover.Load(), unique-dsns, dups, dsns, dsnDups, unknown)
	if len(missing) > 0 {
		t.Errorf("%d accepted messages neither delivered nor, if refused, bounced after %s, e.g. %v", len(missing), d, missing[:min(10, len(missing))])
	}
	if len(wrong) > 0 {
		t.Errorf("%d messages delivered although refused, or bounced although not, e.g. %v", len(wrong), wrong[:min(10, len(wrong))])
	}
	if unknown > 0 {
		t.Errorf("%d delivered messages or DSNs are not ones the load sent", unknown)
	}
	if dups*100 >= n-dsns {
		t.Errorf("%d duplicate deliveries of %d messages: 1%% or more", dups, n-dsns)
	}
	if dsns > 0 && dsnDups*100 >= dsns {
		t.Errorf("%d duplicate DSNs of %d: 1%% or more", dsnDups, dsns)
	}
	if p := l.perm.Load(); p > 0 {
		t.Errorf("%d transactions were refused with 5xx (last: %v): a client would have bounced them", p, lastPerm)
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// waitDrained waits until the queue's work streams are empty: every
// message was completed and deleted, no job or result is left behind. If
// one is not, it logs what each service wrote about the messages left.
func waitDrained(t *testing.T, w *world, js jetstream.JetStream, d time.Duration) {
	t.Helper()
	var last string
	deadline := time.Now().Add(d)
	for {
		last = ""
		for _, name := range []string{"SLUICE_MSGS", "SLUICE_JOBS", "SLUICE_RESULTS", "SLUICE_BOUNCES"} {
			s, err := js.Stream(context.Background(), name)
			if err != nil {
				last = fmt.Sprintf("%s: %v", name, err)
				break
			}
			// The scheduler's marker (wire.KeepSubject) is not work.
			keep := wire.KeepSubject(name)
			info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(keep))
			if err != nil {
				last = fmt.Sprintf("%s: %v", name, err)
				break
			}
			if left := info.State.Msgs - info.State.Subjects[keep]; left != 0 {
				last = fmt.Sprintf("%s holds %d messages", name, left)
				break
			}
		}
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			logLeftOver(t, w, js)
			t.Fatalf("queue not drained after %s: %s", d, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// logLeftOver logs the subjects of the first messages left in SLUICE_MSGS
// and every log line of every service that names their queue ids.
func logLeftOver(t *testing.T, w *world, js jetstream.JetStream) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "SLUICE_MSGS")
	if err != nil {
		return
	}
	info, err := s.Info(ctx)
	if err != nil {
		return
	}
	var ids []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && len(ids) < 5; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ids = append(ids, strings.TrimPrefix(m.Subject, "sluice.msg."))
	}
	t.Logf("left in SLUICE_MSGS: %v", ids)
	for _, p := range w.st.Procs() {
		b, _ := os.ReadFile(p.Log())
		for _, line := range strings.Split(string(b), "\n") {
			for _, id := range ids {
				if strings.Contains(line, id) {
					t.Logf("%s: %s", p.Name, line)
					break
				}
			}
		}
	}
}

// waitTaken waits until the load has taken at least k messages.
func waitTaken(t *testing.T, l *load, k int) {
	t.Helper()
	eventually(t, 2*time.Minute, fmt.Sprintf("load reaches %d messages", k), func() bool { return l.count() >= k })
}

// TestClusterColdStart starts the three nodes and every service at the
// same moment, with the default NATS settings: the services wait for the
// cluster to form and their R3 streams to be created, and mail flows.
// Then the power fails (every node and service killed -9, with mail
// queued) and everything starts again at the same moment, as after an
// outage or a rollout of the whole cluster: the services wait for the
// nodes to recover their streams, and the queued mail is delivered.
func TestClusterColdStart(t *testing.T) {
	c := startCluster(t)
	w := newWorld(t, worldOpts{cluster: c})
	js := clusterJS(t, c)
	// Every stream is replicated on all three nodes.
	for _, name := range []string{"SLUICE_MSGS", "SLUICE_JOBS", "SLUICE_RESULTS", "SLUICE_BOUNCES", "SLUICE_EVENTS"} {
		s, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("%s has %d replicas, want 3", name, r)
		}
	}
	l := &load{w: w, n: 300, sessions: 10}
	l.run()
	l.wait()
	l.verify(t, time.Minute)
	waitCurrent(t, js, 30*time.Second)
	waitDrained(t, w, js, 30*time.Second)

	// With the deliverer stopped, mail waits in the queue when the power
	// fails.
	w.st.Proc("deliverer").Stop(10 * time.Second)
	queued := &load{w: w, n: 300, from: 300, sessions: 10}
	queued.run()
	queued.wait()
	for _, p := range w.st.Procs() {
		p.Kill()
	}
	for _, n := range c.Nodes {
		n.Kill()
	}
	t.Logf("power loss with %d messages queued", queued.count())
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range w.st.Procs() {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := w.st.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	queued.verify(t, time.Minute)
	waitCurrent(t, js, 30*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterStreamLeaderKilled kills -9 the node leading SLUICE_JOBS
// while mail is sent, restarts it, and checks that nothing accepted is
// lost and that the restarted node's replicas catch up.
func TestClusterStreamLeaderKilled(t *testing.T) {
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c})
	js := clusterJS(t, c)
	l := &load{w: w, n: clusterLoad, sessions: 10, interval: 8 * time.Millisecond}
	l.run()
	waitTaken(t, l, 300)
	leader := streamLeader(t, js, c, "SLUICE_JOBS")
	pid := leader.Pid()
	leader.Kill()
	t.Logf("killed SLUICE_JOBS leader %s (pid %d) after %d messages", leader.Name, pid, l.count())
	time.Sleep(3 * time.Second)
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	l.wait()
	l.verify(t, 90*time.Second)
	if next := streamLeader(t, js, c, "SLUICE_JOBS"); next == nil {
		t.Fatal("no leader")
	}
	waitCurrent(t, js, 60*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterDelivererKilled runs two deliverers and kills -9 one of them
// during the load: the other delivers everything, including the jobs the
// dead one held (redelivered after their ack wait).
func TestClusterDelivererKilled(t *testing.T) {
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c, deliverers: 2})
	js := clusterJS(t, c)
	l := &load{w: w, n: clusterLoad, sessions: 10, interval: 8 * time.Millisecond}
	l.run()
	waitTaken(t, l, 400)
	p := w.st.Proc("deliverer-1")
	p.Kill()
	t.Logf("killed deliverer-1 after %d messages", l.count())
	l.wait()
	l.verify(t, 90*time.Second)
	// Both deliverers worked: the second alone delivered what came after.
	if got := w.metric("deliverer-2", "sluice_deliverer_attempts_total", `result="delivered"`); got <= 0 {
		t.Fatalf("deliverer-2 delivered %v", got)
	}
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterNodeFrozen freezes the SLUICE_JOBS leader with SIGSTOP for
// 30 s during the load (its sockets stay open, it answers nothing), then
// thaws it: nothing accepted is lost and it catches up. The services
// connected to it are named in the log: they wait for it (see the load's
// slowest 250), as NATS clients do not notice a silent server before
// their ping interval.
func TestClusterNodeFrozen(t *testing.T) {
	const freeze = 30 * time.Second
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c})
	js := clusterJS(t, c)
	l := &load{w: w, n: 2 * clusterLoad, sessions: 10, interval: 8 * time.Millisecond}
	l.run()
	waitTaken(t, l, 300)
	leader := streamLeader(t, js, c, "SLUICE_JOBS")
	clients, _ := leader.Clients(context.Background())
	if err := leader.Freeze(); err != nil {
		t.Fatal(err)
	}
	t.Logf("froze SLUICE_JOBS leader %s (pid %d) after %d messages; its clients: %v", leader.Name, leader.Pid(), l.count(), clients)
	time.Sleep(freeze)
	if err := leader.Thaw(); err != nil {
		t.Fatal(err)
	}
	thawed := l.count()
	t.Logf("thawed %s after %d messages", leader.Name, thawed)
	// Mail keeps flowing with the thawed node back.
	waitTaken(t, l, max(thawed+300, clusterLoad))
	l.stop()
	if l.count() >= l.n {
		t.Fatalf("the load ended (%d messages) before the node was thawed", l.n)
	}
	l.verify(t, 90*time.Second)
	waitCurrent(t, js, 60*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterRollingRestart restarts the three nodes one at a time, as a
// rollout does (SIGTERM, start, wait until the node and every replica are
// current before the next), while mail is sent throughout.
func TestClusterRollingRestart(t *testing.T) {
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c})
	js := clusterJS(t, c)
	l := &load{w: w, n: 2 * clusterLoad, sessions: 10, interval: 8 * time.Millisecond}
	l.run()
	waitTaken(t, l, 200)
	for _, n := range c.Nodes {
		n.Stop(30 * time.Second)
		t.Logf("stopped %s after %d messages", n.Name, l.count())
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := n.Ready(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		waitCurrent(t, js, time.Minute)
		t.Logf("%s is back and current after %d messages", n.Name, l.count())
	}
	waitTaken(t, l, max(l.count()+100, clusterLoad))
	l.stop()
	if l.count() >= l.n {
		t.Fatalf("the load ended (%d messages) before the restarts did", l.n)
	}
	l.verify(t, 90*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterSchedulerInstanceLost runs two schedulers (and two
// deliverers) on the cluster and, during the load, kills -9 one scheduler,
// starts it again, then freezes the other with SIGSTOP for 30 s: the
// schedulers share their durable consumers, so the survivor goes on at
// once and what the lost one held is handed over after the consumers'
// AckWait (10 s). Nothing accepted is lost, duplicates stay under 1%, and
// delivery keeps going while one scheduler is frozen.
func TestClusterSchedulerInstanceLost(t *testing.T) {
	const freeze = 30 * time.Second
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c, deliverers: 2, instances: map[string]int{"scheduler": 2}})
	js := clusterJS(t, c)
	l := &load{w: w, n: 2 * clusterLoad, sessions: 10, interval: 8 * time.Millisecond}
	l.run()
	waitTaken(t, l, 300)
	s1, s2 := w.st.Proc("scheduler-1"), w.st.Proc("scheduler-2")
	if s1 == nil || s2 == nil {
		t.Fatal("the stack did not start two schedulers")
	}
	s1.Kill()
	t.Logf("killed scheduler-1 after %d messages", l.count())
	waitTaken(t, l, l.count()+500)
	if err := s1.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started scheduler-1 again after %d messages", l.count())
	waitTaken(t, l, l.count()+300)
	if err := s2.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozenAt, before := time.Now(), len(w.dest.Messages())
	t.Logf("froze scheduler-2 after %d messages (%d delivered)", l.count(), before)
	// scheduler-1 alone carries the load: mail is delivered meanwhile.
	eventually(t, freeze, "deliveries while scheduler-2 is frozen", func() bool { return len(w.dest.Messages()) >= before+200 })
	t.Logf("200 more delivered %s after the freeze", time.Since(frozenAt).Round(100*time.Millisecond))
	time.Sleep(time.Until(frozenAt.Add(freeze)))
	if err := s2.Thaw(); err != nil {
		t.Fatal(err)
	}
	t.Logf("thawed scheduler-2 after %d messages", l.count())
	waitTaken(t, l, l.count()+200)
	l.stop()
	if l.count() >= l.n {
		t.Fatalf("the load ended (%d messages) before scheduler-2 was thawed", l.n)
	}
	l.verify(t, 90*time.Second)
	// Both schedulers did work.
	for _, name := range []string{"scheduler-1", "scheduler-2"} {
		if got := w.metric(name, "sluice_scheduler_messages_completed_total"); got <= 0 {
			t.Errorf("%s completed %v messages", name, got)
		}
	}
	waitCurrent(t, js, 60*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// TestClusterIngressKilledDelivererFrozen runs two ingresses and two
// deliverers on the cluster. During the load it kills -9 one ingress: the
// clients connected to it get connection errors and send to the other, as
// clients with two MX or submission hosts do (counted as moves); the
// messages they were sending when it died were promised nothing unless
// they got their 250. Then it freezes one deliverer with SIGSTOP for 30 s:
// the other goes on delivering, and the jobs the frozen one held come back
// after the deliverer's AckWait, set here to production's 10 s (the other
// tests' worlds use 5 s): the other deliverer asks the frozen one about
// them, gets no answer and delivers them. When thawed, the frozen
// deliverer finishes or abandons what it held. Nothing
// accepted is lost, duplicates stay under 1%, and the queue drains within
// a bound after the thaw. Both failures share one load of up to 6,000
// messages (about 4,500 are sent): one cluster start instead of two, and
// enough mail for the 1% bar to allow a deliverer's whole concurrency (32)
// of duplicates, at most.
func TestClusterIngressKilledDelivererFrozen(t *testing.T) {
	const (
		freeze  = 30 * time.Second
		ackWait = 10 * time.Second
	)
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c, deliverers: 2, instances: map[string]int{"ingress": 2},
		config: map[string]map[string]any{"deliverer": {"ack_wait": ackWait.String()}}})
	js := clusterJS(t, c)
	second := w.st.SMTP["ingress-2"]
	if second == "" || w.st.Proc("ingress-1") == nil {
		t.Fatal("the stack did not start two ingresses")
	}
	l := &load{w: w, n: 2 * clusterLoad, sessions: 10, interval: 8 * time.Millisecond, addrs: []string{w.smtp, second}}
	l.run()
	waitTaken(t, l, 300)
	w.st.Proc("ingress-1").Kill()
	t.Logf("killed ingress-1 (%s) after %d messages; ingress-2 is %s", w.smtp, l.count(), second)
	waitTaken(t, l, l.count()+300)

	d1 := w.st.Proc("deliverer-1")
	if err := d1.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozenAt, before := time.Now(), len(w.dest.Messages())
	t.Logf("froze deliverer-1 (pid %d) after %d messages (%d delivered)", d1.Pid(), l.count(), before)
	// deliverer-2 alone carries the load: mail is delivered meanwhile.
	eventually(t, freeze, "deliveries while deliverer-1 is frozen", func() bool { return len(w.dest.Messages()) >= before+200 })
	t.Logf("200 more delivered %s after the freeze", time.Since(frozenAt).Round(100*time.Millisecond))
	time.Sleep(time.Until(frozenAt.Add(freeze)))
	if err := d1.Thaw(); err != nil {
		t.Fatal(err)
	}
	thawedAt := time.Now()
	t.Logf("thawed deliverer-1 after %d messages (%d delivered)", l.count(), len(w.dest.Messages()))
	waitTaken(t, l, l.count()+200)
	l.stop()
	if l.count() >= l.n {
		t.Fatalf("the load ended (%d messages) before deliverer-1 was thawed", l.n)
	}
	stoppedAt := time.Now()
	l.verify(t, 90*time.Second)
	if l.failover.Load() < int64(l.sessions/2) {
		t.Errorf("%d moves to another ingress; the %d sessions of ingress-1 should each have moved", l.failover.Load(), l.sessions/2)
	}
	for _, name := range []string{"deliverer-1", "deliverer-2"} {
		got := w.metric(name, "sluice_deliverer_attempts_total", `result="delivered"`)
		t.Logf("%s delivered %v; jobs handed to it again: %v", name, got, w.metric(name, "sluice_deliverer_jobs_redelivered_total"))
		if got <= 0 {
			t.Errorf("%s delivered %v", name, got)
		}
	}
	waitCurrent(t, js, 60*time.Second)
	waitDrained(t, w, js, 30*time.Second)
	// Everything the frozen deliverer held was handed out again after
	// AckWait at the latest, so the queue is empty soon after the last
	// message was accepted: within AckWait and as long again for the
	// deliveries themselves and this loaded machine.
	drained := time.Since(stoppedAt)
	t.Logf("queue drained %s after the thaw, %s after the load's last 250", time.Since(thawedAt).Round(100*time.Millisecond), drained.Round(100*time.Millisecond))
	if drained > 2*ackWait {
		t.Errorf("queue drained %s after the load ended, want within %s", drained.Round(100*time.Millisecond), 2*ackWait)
	}
}

// TestClusterBouncerInstanceLost runs two bouncers on the cluster while
// one message in five goes to a recipient the destination refuses for
// good, so that DSNs are written throughout the load. It kills -9 one
// bouncer, starts it again, then freezes the other with SIGSTOP for 30 s:
// the bouncers share their durable consumer, so the survivor goes on and
// what the lost one held is handed over after the consumer's AckWait
// (10 s). Every refused message's DSN reaches its sender, duplicates
// (counted) stay under 1%, and every other message is delivered. Of the up
// to 6,000 messages (about 5,000 are sent) some 1,000 bounce: enough that
// 1% allows for the request a bouncer was writing at each failure.
func TestClusterBouncerInstanceLost(t *testing.T) {
	const freeze = 30 * time.Second
	c := readyCluster(t)
	w := newWorld(t, worldOpts{cluster: c, instances: map[string]int{"bouncer": 2}, destRcpt: refuseRefused})
	js := clusterJS(t, c)
	l := &load{w: w, n: 2 * clusterLoad, sessions: 10, interval: 8 * time.Millisecond, refuse: 5}
	l.run()
	waitTaken(t, l, 300)
	b1, b2 := w.st.Proc("bouncer-1"), w.st.Proc("bouncer-2")
	if b1 == nil || b2 == nil {
		t.Fatal("the stack did not start two bouncers")
	}
	b1.Kill()
	t.Logf("killed bouncer-1 after %d messages (%d DSNs)", l.count(), len(w.senders.Messages()))
	waitTaken(t, l, l.count()+500)
	if err := b1.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started bouncer-1 again after %d messages", l.count())
	waitTaken(t, l, l.count()+300)
	if err := b2.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozenAt, before := time.Now(), len(w.senders.Messages())
	t.Logf("froze bouncer-2 after %d messages (%d DSNs)", l.count(), before)
	// bouncer-1 alone writes the DSNs meanwhile.
	eventually(t, freeze, "DSNs while bouncer-2 is frozen", func() bool { return len(w.senders.Messages()) >= before+50 })
	t.Logf("50 more DSNs %s after the freeze", time.Since(frozenAt).Round(100*time.Millisecond))
	time.Sleep(time.Until(frozenAt.Add(freeze)))
	if err := b2.Thaw(); err != nil {
		t.Fatal(err)
	}
	t.Logf("thawed bouncer-2 after %d messages (%d DSNs)", l.count(), len(w.senders.Messages()))
	waitTaken(t, l, l.count()+200)
	l.stop()
	if l.count() >= l.n {
		t.Fatalf("the load ended (%d messages) before bouncer-2 was thawed", l.n)
	}
	l.verify(t, 90*time.Second)
	for _, name := range []string{"bouncer-1", "bouncer-2"} {
		got := w.metric(name, "sluice_bouncer_dsn_generated_total")
		t.Logf("%s generated %v DSNs since its last start; it found %v already written", name, got, w.metric(name, "sluice_bouncer_dsn_duplicates_total"))
		if got <= 0 {
			t.Errorf("%s generated %v DSNs", name, got)
		}
	}
	waitCurrent(t, js, 60*time.Second)
	waitDrained(t, w, js, 30*time.Second)
}

// refuseRefused refuses for good the recipients the load addresses as
// refuse<k>@dest.test.
func refuseRefused(rcpt string, _ int) *smtp.SMTPError {
	if strings.HasPrefix(rcpt, "refuse") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
