// Package cluster answers how JetStream holds Sluice's queue: for every
// Sluice stream (the queue, its history, the streams behind the buckets,
// and any other stream named like Sluice's) and every durable consumer on
// them, the JetStream cluster, the leader, each replica (current or not,
// operations behind the leader, time since the leader last heard from it,
// offline), messages and bytes, and a verdict: ok, degraded, no leader,
// missing or error.
//
// The answers are JetStream's own (stream and consumer info, as the stream
// and consumer leaders see their replicas); no Sluice service needs to be
// running. It does no printing: `sluice cluster` prints a Report as tables
// or JSON, and a web view or a monitoring check can do the same from it.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Verdicts of a stream or consumer, the values of Health.Verdict.
const (
	// VerdictOK: a leader, and every configured replica online and current.
	VerdictOK = "ok"
	// VerdictDegraded: a replica offline, not current, silent for 5s or
	// more or still joining, or fewer replicas than configured. The stream
	// works, with less margin.
	VerdictDegraded = "degraded"
	// VerdictNoLeader: no replica leads, or none answered in time; writes
	// wait.
	VerdictNoLeader = "no leader"
	// VerdictMissing: the stream does not exist (no service has
	// provisioned it yet).
	VerdictMissing = "missing"
	// VerdictError: JetStream answered with another error, which the
	// problems quote.
	VerdictError = "error"
)

// clusterStreams are the streams Sluice keeps its queue in, in the order
// of a message's path: the queue itself, its history, then the streams
// behind the buckets (JetStream names them OBJ_<bucket> and KV_<bucket>).
// They are reported whether or not they exist.
var clusterStreams = []string{
	wire.StreamMessages, wire.StreamJobs, wire.StreamResults, wire.StreamBounces, wire.StreamEvents,
	"OBJ_" + wire.BucketBodies, "KV_" + wire.BucketRefs, "KV_" + wire.BucketHeld, "KV_" + wire.BucketShaping, "KV_" + wire.BucketStrikes,
	"OBJ_" + wire.BucketIndex,
}

// KnownStreams are the streams every Report covers, first and in this
// order, whether or not they exist: the streams Sluice keeps its queue in,
// in the order of a message's path, then the streams behind its buckets.
func KnownStreams() []string { return slices.Clone(clusterStreams) }

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

// Report is the state of every Sluice stream and its durable consumers;
// encoded as JSON it is the document `sluice cluster -json` prints.
type Report struct {
	// Cluster is the JetStream cluster's name, empty on a single server.
	Cluster string `json:"cluster,omitempty"`
	// Servers are the servers named as leader or replica of any stream or
	// consumer, sorted.
	Servers []string `json:"servers,omitempty"`
	// OK is true when every stream and consumer is ok.
	OK      bool     `json:"ok"`
	Streams []Stream `json:"streams"`
	// StreamsUnlisted is true when JetStream could not list its streams, so
	// only the KnownStreams are reported. The list comes from the meta
	// leader, so this alone makes the report not ok: without a meta leader
	// no stream or consumer can be created or changed.
	StreamsUnlisted bool `json:"streams_unlisted,omitempty"`
}

// Health is the state of one replicated thing, a stream or a consumer.
type Health struct {
	// Verdict is one of the Verdict constants.
	Verdict string `json:"verdict"`
	// Problems say why the verdict is not ok, one finding each
	// ("n3 offline, last seen 8.2s ago").
	Problems []string `json:"problems,omitempty"`
	// Clustered is false on a single server, where there are no replicas.
	Clustered bool `json:"clustered"`
	// Cluster is the JetStream cluster that holds it.
	Cluster string `json:"cluster,omitempty"`
	// Leader is the server that leads it, empty when none does.
	Leader string `json:"leader,omitempty"`
	// Replicas is the configured number of replicas.
	Replicas int `json:"replicas"`
	// Peers are the leader (first) and the other replicas as the answering
	// server sees them.
	Peers []Peer `json:"peers,omitempty"`
}

// Peer is one replica of a stream or consumer.
type Peer struct {
	// Name is the server's name.
	Name string `json:"name"`
	// Leader is true for the replica that leads.
	Leader bool `json:"leader,omitempty"`
	// Current is true when the replica has every operation the leader has.
	Current bool `json:"current"`
	// Offline is true when the replica's server is gone.
	Offline bool `json:"offline"`
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

// Stream is one stream and its durable consumers.
type Stream struct {
	// Stream is the stream's name.
	Stream string `json:"stream"`
	Health
	// Messages and Bytes are what the stream holds.
	Messages  uint64     `json:"messages"`
	Bytes     uint64     `json:"bytes"`
	Consumers []Consumer `json:"consumers,omitempty"`
	// ConsumersUnlisted is true when the consumers could not be listed
	// (see Problems): Consumers is empty then, whatever exists.
	ConsumersUnlisted bool `json:"consumers_unlisted,omitempty"`
}

// Consumer is one durable consumer.
type Consumer struct {
	// Consumer is the consumer's durable name.
	Consumer string `json:"consumer"`
	Health
	// Pending counts the messages not yet delivered, AckPending those
	// delivered and not yet acknowledged.
	Pending    uint64 `json:"pending"`
	AckPending int    `json:"ack_pending"`
}

// Check asks JetStream about every Sluice stream and its durable
// consumers, all streams at once, each request bounded by timeout. It fails
// only when JetStream itself is not there; a stream that cannot be asked
// gets its verdict instead.
func Check(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*Report, error) {
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(timeout))
	if err != nil {
		return nil, err
	}
	names, listErr := streamsToReport(ctx, js, timeout)
	rep := &Report{Streams: make([]Stream, len(names)), OK: listErr == nil, StreamsUnlisted: listErr != nil}
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
	note := func(g Health) {
		if g.Verdict != VerdictOK {
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
		note(s.Health)
		for _, c := range s.Consumers {
			note(c.Health)
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
func streamHealthOf(ctx context.Context, js jetstream.JetStream, name string, timeout time.Duration) (Stream, error) {
	sh := Stream{Stream: name}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	st, err := js.Stream(rctx, name)
	cancel()
	if err != nil {
		if notEnabled(err) {
			return sh, err
		}
		sh.Health = unanswered(err, "stream does not exist (no Sluice service has provisioned it on this JetStream)")
		return sh, nil
	}
	info := st.CachedInfo()
	sh.Health = judge(info.Cluster, info.Config.Replicas)
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
		if sh.Verdict == VerdictOK {
			sh.Verdict = un.Verdict
		}
		return sh, nil
	}
	slices.Sort(names)
	cons := make([]*Consumer, len(names))
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
func consumerHealthOf(ctx context.Context, st jetstream.Stream, name string, streamReplicas int, timeout time.Duration) *Consumer {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := st.Consumer(rctx, name)
	if err != nil {
		if !slices.Contains(sluiceDurables(), name) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			// An ephemeral consumer, or one deleted since it was listed.
			return nil
		}
		return &Consumer{Consumer: name, Health: unanswered(err, "")}
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
	return &Consumer{
		Consumer:   name,
		Health:     judge(info.Cluster, replicas),
		Pending:    info.NumPending,
		AckPending: info.NumAckPending,
	}
}

// notEnabled reports whether err means there is no JetStream to ask:
// nobody serves its API to this account (no responders), or it says so.
func notEnabled(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}
