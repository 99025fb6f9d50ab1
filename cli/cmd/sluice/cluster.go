package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
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

// Verdicts of a stream or consumer, the values of groupHealth.Verdict.
const (
	verdictOK       = "ok"
	verdictDegraded = "degraded"
	verdictNoLeader = "no leader"
	verdictMissing  = "missing"
	verdictError    = "error"
)

// exitNotOK is the exit status when some stream or consumer is not ok. It
// differs from 1 (the question could not be asked) and 2 (bad usage) so a
// monitoring script can tell a degraded cluster from a broken check.
const exitNotOK = 3

// clusterStreams are the streams Sluice keeps its queue in, in the order
// of a message's path: the queue itself, its history, then the streams
// behind the buckets (JetStream names them OBJ_<bucket> and KV_<bucket>).
// They are reported whether or not they exist.
var clusterStreams = []string{
	wire.StreamMessages, wire.StreamJobs, wire.StreamResults, wire.StreamBounces, wire.StreamEvents,
	"OBJ_" + wire.BucketBodies, "KV_" + wire.BucketRefs, "KV_" + wire.BucketHeld, "KV_" + wire.BucketShaping, "KV_" + wire.BucketStrikes,
}

// sluiceStreamPrefixes name Sluice's streams and buckets. A stream named
// like them that clusterStreams does not list (a bucket a newer service
// added) is reported too, after the known ones.
var sluiceStreamPrefixes = []string{"SLUICE_", "KV_sluice_", "OBJ_sluice_"}

// streamsToReport is clusterStreams followed by the other Sluice streams
// JetStream lists. When the list cannot be had (its answer comes from the
// meta leader, which a cluster without quorum does not have) the known
// streams are still reported, each with its own state.
func streamsToReport(ctx context.Context, js jetstream.JetStream, timeout time.Duration) ([]string, error) {
	names := slices.Clone(clusterStreams)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lister := js.StreamNames(ctx)
	var extra []string
	for n := range lister.Name() {
		sluice := slices.ContainsFunc(sluiceStreamPrefixes, func(p string) bool { return strings.HasPrefix(n, p) })
		if sluice && !slices.Contains(names, n) {
			extra = append(extra, n)
		}
	}
	slices.Sort(extra)
	return append(names, extra...), lister.Err()
}

// sluiceDurables are the durable consumers the services create. A consumer
// whose info does not arrive is reported only when it is one of these: the
// others are ephemeral (the schedulers' ordered consumers of the events, the
// deliverers' watchers of the held marks), single-replica by design, and
// recreated by their owners elsewhere when their server goes away.
func sluiceDurables() []string {
	names := []string{wire.ConsumerScheduler, wire.ConsumerResults, wire.ConsumerBouncer}
	for _, c := range wire.Classes {
		names = append(names, wire.DelivererConsumer(c))
	}
	return names
}

// clusterReport is what "sluice cluster" prints, and its -json document.
type clusterReport struct {
	// Cluster is the JetStream cluster's name, empty on a single server.
	Cluster string `json:"cluster,omitempty"`
	// Servers are the servers named as leader or replica of any stream or
	// consumer, sorted.
	Servers []string `json:"servers,omitempty"`
	// OK is true when every stream and consumer is ok.
	OK      bool           `json:"ok"`
	Streams []streamHealth `json:"streams"`
	// StreamsUnlisted is true when JetStream could not list its streams, so
	// only those in clusterStreams are reported. The list comes from the
	// meta leader, so this alone makes the report not ok: without a meta
	// leader no stream or consumer can be created or changed.
	StreamsUnlisted bool `json:"streams_unlisted,omitempty"`
}

// groupHealth is the state of one replicated thing, a stream or a consumer.
type groupHealth struct {
	Verdict string `json:"verdict"`
	// Problems say why the verdict is not ok, one finding each
	// ("n3 offline, last seen 8.2s ago").
	Problems []string `json:"problems,omitempty"`
	// Clustered is false on a single server, where there are no replicas.
	Clustered bool `json:"clustered"`
	// Cluster is the JetStream cluster that holds it.
	Cluster string `json:"cluster,omitempty"`
	Leader  string `json:"leader,omitempty"`
	// Replicas is the configured number of replicas.
	Replicas int `json:"replicas"`
	// Peers are the leader (first) and the other replicas as the answering
	// server sees them.
	Peers []peerHealth `json:"peers,omitempty"`
}

// peerHealth is one replica of a stream or consumer.
type peerHealth struct {
	Name    string `json:"name"`
	Leader  bool   `json:"leader,omitempty"`
	Current bool   `json:"current"`
	Offline bool   `json:"offline"`
	// Joining is true for a peer assigned to the group that has not joined
	// its Raft group yet (or is being removed from it).
	Joining bool `json:"joining,omitempty"`
	// Lag is how many operations the replica is behind the leader.
	Lag uint64 `json:"lag"`
	// ActiveMS is how long ago the leader last heard from the replica;
	// absent for the leader itself and for a replica the leader has not
	// heard from since it was elected (typically the old leader, gone).
	ActiveMS *int64 `json:"active_ms,omitempty"`
}

// streamHealth is one stream and its durable consumers.
type streamHealth struct {
	Stream string `json:"stream"`
	groupHealth
	Messages  uint64           `json:"messages"`
	Bytes     uint64           `json:"bytes"`
	Consumers []consumerHealth `json:"consumers,omitempty"`
	// ConsumersUnlisted is true when the consumers could not be listed
	// (see Problems): Consumers is empty then, whatever exists.
	ConsumersUnlisted bool `json:"consumers_unlisted,omitempty"`
}

// consumerHealth is one durable consumer.
type consumerHealth struct {
	Consumer string `json:"consumer"`
	groupHealth
	// Pending counts the messages not yet delivered, AckPending those
	// delivered and not yet acknowledged.
	Pending    uint64 `json:"pending"`
	AckPending int    `json:"ack_pending"`
}

// runCluster implements "sluice cluster".
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
	rep, err := clusterHealth(context.Background(), c.nc, o.timeout)
	if err != nil {
		fmt.Fprintf(stderr, "sluice cluster: %v\n", err)
		return 1
	}
	if o.json {
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

// clusterHealth asks JetStream about every Sluice stream and its durable
// consumers, all streams at once, each request bounded by timeout. It fails
// only when JetStream itself is not there; a stream that cannot be asked
// gets its verdict instead.
func clusterHealth(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*clusterReport, error) {
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(timeout))
	if err != nil {
		return nil, err
	}
	names, listErr := streamsToReport(ctx, js, timeout)
	rep := &clusterReport{Streams: make([]streamHealth, len(names)), OK: listErr == nil, StreamsUnlisted: listErr != nil}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { rep.Streams[i], errs[i] = streamHealthOf(ctx, js, name, timeout) })
	}
	wg.Wait()
	// The same answer for every stream: report it once.
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("no JetStream at %s for this user: %w", nc.ConnectedUrlRedacted(), err)
		}
	}
	servers := map[string]bool{}
	note := func(g groupHealth) {
		if g.Verdict != verdictOK {
			rep.OK = false
		}
		if rep.Cluster == "" && g.Clustered {
			rep.Cluster = g.Cluster
		}
		for _, p := range g.Peers {
			servers[p.Name] = true
		}
		if g.Leader != "" {
			servers[g.Leader] = true
		}
	}
	for _, s := range rep.Streams {
		note(s.groupHealth)
		for _, c := range s.Consumers {
			note(c.groupHealth)
		}
	}
	for name := range servers {
		rep.Servers = append(rep.Servers, name)
	}
	slices.Sort(rep.Servers)
	return rep, nil
}

// streamHealthOf asks for one stream and its durable consumers. The error
// it returns means JetStream is not available to this user at all.
func streamHealthOf(ctx context.Context, js jetstream.JetStream, name string, timeout time.Duration) (streamHealth, error) {
	sh := streamHealth{Stream: name}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	st, err := js.Stream(rctx, name)
	cancel()
	if err != nil {
		if notEnabled(err) {
			return sh, err
		}
		sh.groupHealth = unanswered(err, "stream does not exist (no Sluice service has provisioned it on this JetStream)")
		return sh, nil
	}
	info := st.CachedInfo()
	sh.groupHealth = judge(info.Cluster, info.Config.Replicas)
	sh.Messages, sh.Bytes = info.State.Msgs, info.State.Bytes

	// Consumer names come from the meta leader's assignments, so they are
	// known even when the stream has no leader.
	rctx, cancel = context.WithTimeout(ctx, timeout)
	lister := st.ConsumerNames(rctx)
	var names []string
	for n := range lister.Name() {
		names = append(names, n)
	}
	err = lister.Err()
	cancel()
	if err != nil {
		// The meta leader answers this, so a stream with a leader of its
		// own gets here when the cluster as a whole has none.
		un := unanswered(err, "")
		sh.ConsumersUnlisted = true
		sh.Problems = append(sh.Problems, "its consumers could not be listed: "+strings.Join(un.Problems, "; "))
		if sh.Verdict == verdictOK {
			sh.Verdict = un.Verdict
		}
		return sh, nil
	}
	slices.Sort(names)
	cons := make([]*consumerHealth, len(names))
	var wg sync.WaitGroup
	for i, cname := range names {
		wg.Go(func() { cons[i] = consumerHealthOf(ctx, st, cname, max(info.Config.Replicas, 1), timeout) })
	}
	wg.Wait()
	for _, c := range cons {
		if c != nil {
			sh.Consumers = append(sh.Consumers, *c)
		}
	}
	return sh, nil
}

// consumerHealthOf asks for one consumer; nil means it is not a durable
// consumer worth reporting (see sluiceDurables).
func consumerHealthOf(ctx context.Context, st jetstream.Stream, name string, streamReplicas int, timeout time.Duration) *consumerHealth {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := st.Consumer(rctx, name)
	if err != nil {
		if !slices.Contains(sluiceDurables(), name) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			// An ephemeral consumer, or one deleted since it was listed.
			return nil
		}
		return &consumerHealth{Consumer: name, groupHealth: unanswered(err, "")}
	}
	info := c.CachedInfo()
	if info.Config.Durable == "" {
		return nil
	}
	// A consumer without its own replica count has its stream's.
	replicas := info.Config.Replicas
	if replicas == 0 {
		replicas = streamReplicas
	}
	return &consumerHealth{
		Consumer:    name,
		groupHealth: judge(info.Cluster, replicas),
		Pending:     info.NumPending,
		AckPending:  info.NumAckPending,
	}
}

// notEnabled reports whether err means there is no JetStream to ask:
// nobody serves its API to this account (no responders), or it says so.
func notEnabled(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// JetStream API error codes that mean nobody leads the asset: the meta
// group has no leader (10008, "JetStream system temporarily unavailable"),
// or every peer of the stream or consumer is offline (10118, 10119).
const (
	errCodeClusterNotAvailable = 10008
	errCodeStreamOffline       = 10118
	errCodeConsumerOffline     = 10119
)

// unanswered is the health of a stream or consumer whose info request
// failed. A timeout means no leader: when a group has a leader only the
// leader answers, and when it has none its reachable members answer, so
// silence means none of them is reachable.
func unanswered(err error, notFound string) groupHealth {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && notFound != "":
		return groupHealth{Verdict: verdictMissing, Problems: []string{notFound}}
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return groupHealth{Verdict: verdictNoLeader, Problems: []string{"no answer: no leader, or no replica reachable"}}
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeClusterNotAvailable ||
		apiErr.ErrorCode == errCodeStreamOffline || apiErr.ErrorCode == errCodeConsumerOffline):
		return groupHealth{Verdict: verdictNoLeader, Problems: []string{apiErr.Description}}
	case errors.As(err, &apiErr):
		return groupHealth{Verdict: verdictError, Problems: []string{fmt.Sprintf("%s (JetStream error %d)", apiErr.Description, apiErr.ErrorCode)}}
	}
	return groupHealth{Verdict: verdictError, Problems: []string{err.Error()}}
}

// silentAfter is how long a replica may go unheard before the command
// calls the group degraded while JetStream still says the replica is
// current. A leader hears from each follower at least every heartbeat (1 s
// in nats-server); JetStream itself stops counting a silent replica current
// only after lostQuorumInterval, and offline only once the server's own
// heartbeats stop arriving, so after a kill -9 the verdict would say ok for
// ten seconds without this.
const (
	silentAfter        = 5 * time.Second
	lostQuorumInterval = 10 * time.Second
)

// judge gives the verdict on a stream or consumer from its cluster info and
// its configured replicas. It is pure: the whole policy of the command.
func judge(ci *jetstream.ClusterInfo, replicas int) groupHealth {
	replicas = max(replicas, 1)
	g := groupHealth{Verdict: verdictOK, Replicas: replicas}
	// Without a Raft group JetStream runs on one server: it names itself
	// leader and there is nothing to replicate.
	if ci == nil || ci.RaftGroup == "" {
		if ci != nil {
			g.Leader = ci.Leader
		}
		return g
	}
	g.Clustered, g.Cluster, g.Leader = true, ci.Name, ci.Leader
	if ci.Leader != "" {
		// The leader is not among the replicas it reports.
		g.Peers = append(g.Peers, peerHealth{Name: ci.Leader, Leader: true, Current: true})
	}
	online := 0
	for _, p := range ci.Replicas {
		if p == nil {
			continue
		}
		ph := peerHealth{Name: p.Name, Current: p.Current, Offline: p.Offline, Joining: p.Pending, Lag: p.Lag}
		// JetStream reports zero when the answering server has not heard
		// from the peer since it last took part in an election.
		seen := "not heard from since the last election"
		if p.Active > 0 {
			ms := p.Active.Milliseconds()
			ph.ActiveMS, seen = &ms, "last seen "+activeAgo(p.Active)+" ago"
		}
		g.Peers = append(g.Peers, ph)
		switch {
		case p.Offline:
			g.Problems = append(g.Problems, fmt.Sprintf("%s offline, %s", p.Name, seen))
		case p.Pending:
			g.Problems = append(g.Problems, fmt.Sprintf("%s still joining", p.Name))
		case ci.Leader == "":
			// Without a leader no replica is current: saying so of each
			// would only hide the offline ones.
		case !p.Current:
			g.Problems = append(g.Problems, fmt.Sprintf("%s not current, %d operations behind, %s", p.Name, p.Lag, seen))
		case p.Active >= silentAfter:
			g.Problems = append(g.Problems, fmt.Sprintf("%s silent, last seen %s ago (JetStream counts a replica current for %s after it falls silent)",
				p.Name, activeAgo(p.Active), lostQuorumInterval))
		}
		if !p.Offline {
			online++
		}
	}
	if ci.Leader == "" {
		// Without a leader the answering replica lists itself among the
		// replicas. A leader needs a majority of the configured replicas.
		g.Verdict = verdictNoLeader
		g.Problems = append(g.Problems, fmt.Sprintf("%d of %d replicas online, %d needed to elect a leader", online, replicas, replicas/2+1))
		return g
	}
	if len(g.Peers) < replicas {
		g.Problems = append(g.Problems, fmt.Sprintf("%d of %d replicas", len(g.Peers), replicas))
	}
	if len(g.Problems) > 0 {
		g.Verdict = verdictDegraded
	}
	return g
}

// activeAgo renders the time since a replica was last seen: 312ms, 8.2s, 3m.
func activeAgo(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return age(d)
}
