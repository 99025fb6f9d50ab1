package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/cli/internal/human"
)

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
func unanswered(err error, notFound string) Health {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && notFound != "":
		return Health{Verdict: VerdictMissing, Problems: []string{notFound}}
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return Health{Verdict: VerdictNoLeader, Problems: []string{"no answer: no leader, or no replica reachable"}}
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeClusterNotAvailable ||
		apiErr.ErrorCode == errCodeStreamOffline || apiErr.ErrorCode == errCodeConsumerOffline):
		return Health{Verdict: VerdictNoLeader, Problems: []string{apiErr.Description}}
	case errors.As(err, &apiErr):
		return Health{Verdict: VerdictError, Problems: []string{fmt.Sprintf("%s (JetStream error %d)", apiErr.Description, apiErr.ErrorCode)}}
	}
	return Health{Verdict: VerdictError, Problems: []string{err.Error()}}
}

// silentAfter is how long a replica may go unheard before the check calls
// the group degraded while JetStream still says the replica is current. A
// leader hears from each follower at least every heartbeat (1 s in
// nats-server); JetStream itself stops counting a silent replica current
// only after lostQuorumInterval, and offline only once the server's own
// heartbeats stop arriving, so after a kill -9 the verdict would say ok for
// ten seconds without this.
const (
	silentAfter        = 5 * time.Second
	lostQuorumInterval = 10 * time.Second
)

// judge gives the verdict on a stream or consumer from its cluster info and
// its configured replicas. It is pure: the whole policy of the check.
func judge(ci *jetstream.ClusterInfo, replicas int) Health {
	replicas = max(replicas, 1)
	g := Health{Verdict: VerdictOK, Replicas: replicas}
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
		g.Peers = append(g.Peers, Peer{Name: ci.Leader, Leader: true, Current: true})
	}
	online := 0
	for _, p := range ci.Replicas {
		if p == nil {
			continue
		}
		ph := Peer{Name: p.Name, Current: p.Current, Offline: p.Offline, Joining: p.Pending, Lag: p.Lag}
		// JetStream reports zero when the answering server has not heard
		// from the peer since it last took part in an election.
		seen := "not heard from since the last election"
		if p.Active > 0 {
			ms := p.Active.Milliseconds()
			ph.ActiveMS, seen = &ms, "last seen "+Ago(p.Active)+" ago"
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
				p.Name, Ago(p.Active), lostQuorumInterval))
		}
		if !p.Offline {
			online++
		}
	}
	if ci.Leader == "" {
		// Without a leader the answering replica lists itself among the
		// replicas. A leader needs a majority of the configured replicas.
		g.Verdict = VerdictNoLeader
		g.Problems = append(g.Problems, fmt.Sprintf("%d of %d replicas online, %d needed to elect a leader", online, replicas, replicas/2+1))
		return g
	}
	if len(g.Peers) < replicas {
		g.Problems = append(g.Problems, fmt.Sprintf("%d of %d replicas", len(g.Peers), replicas))
	}
	if len(g.Problems) > 0 {
		g.Verdict = VerdictDegraded
	}
	return g
}

// Ago renders the time since a replica was last seen, as Problems say it
// and Peer.ActiveMS is best shown: 312ms, 8.2s, 3m.
func Ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return human.Age(d)
}
