package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/claim"
	"github.com/sluice-mta/sluice/services/consume"
)

// A job is handed out again when its acknowledgement wait runs out: the
// deliverer holding it died or froze, or its in-progress acknowledgements
// were lost while the stream's leader changed, or its final ack was. Only
// the first case calls for a new attempt; in the others the delivery is
// still running, or has finished, and a second attempt is a second copy of
// the mail. So a job handed out again is not attempted before the
// deliverer that recorded its latest attempt (the attempt event of its
// copy, see claimAttempt) is asked about it on liveSubject: "running"
// parks the job, "finished" acknowledges it, and "unknown" or no answer
// within liveAsk (the deliverer is gone, or frozen) lets it be attempted.
// A first delivery, the common case, costs nothing; this is what lets the
// consumers' AckWait be short (10 s), so that the jobs of a dead deliverer
// are taken over within seconds.

// liveSubject carries the questions; every deliverer listens, the one
// named in a question answers.
const liveSubject = "_SLUICE.deliverer.live"

// liveAsk bounds the wait for an answer.
const liveAsk = 2 * time.Second

// finishedFor is how long a deliverer remembers a job whose result it
// stored but whose ack JetStream did not confirm.
const finishedFor = 10 * time.Minute

// claimRenew is how often a running attempt records its claim again
// (renewClaim). A claim is then at most claimRenew old when its attempt
// ends and must still be there for finishedFor: wire.ClaimTTL covers both.
const claimRenew = wire.ClaimTTL / 4

const (
	liveRunning  = "running"
	liveFinished = "finished"
	liveUnknown  = "unknown"
)

type liveQuestion struct {
	Instance string `json:"instance"`
	Key      string `json:"key"`
}

// liveJobs are the job attempts this deliverer is running, and those it
// finished without a confirmed ack (until their time).
type liveJobs struct {
	mu       sync.Mutex
	running  map[string]int
	finished map[string]time.Time
}

func liveKey(job *sluicev1.Job) string {
	return job.JobId + "/" + strconv.FormatUint(uint64(job.Attempt), 10)
}

func (l *liveJobs) start(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running == nil {
		l.running = map[string]int{}
	}
	l.running[key]++
}

// end ends a run; unconfirmed marks it finished for finishedFor.
func (l *liveJobs) end(key string, unconfirmed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running[key]--; l.running[key] <= 0 {
		delete(l.running, key)
	}
	now := time.Now()
	for k, until := range l.finished {
		if now.After(until) {
			delete(l.finished, k)
		}
	}
	if unconfirmed {
		if l.finished == nil {
			l.finished = map[string]time.Time{}
		}
		l.finished[key] = now.Add(finishedFor)
	}
}

func (l *liveJobs) state(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running[key] > 0 {
		return liveRunning
	}
	if until, ok := l.finished[key]; ok && time.Now().Before(until) {
		return liveFinished
	}
	return liveUnknown
}

// serveLive answers the questions about this deliverer's jobs.
func (s *Service) serveLive() (*nats.Subscription, error) {
	return s.js.Conn().Subscribe(liveSubject, func(m *nats.Msg) {
		var q liveQuestion
		if json.Unmarshal(m.Data, &q) != nil || q.Instance != s.cfg.Instance || m.Reply == "" {
			return
		}
		_ = m.Respond([]byte(s.live.state(q.Key)))
	})
}

// latestAttempt is the instance that recorded the latest attempt of msg's
// copy of job, or "" when none did.
func (s *Service) latestAttempt(ctx context.Context, job *sluicev1.Job, seq uint64) (string, error) {
	m, err := claim.Latest(ctx, s.js, job.QueueId, seq)
	if m == nil || err != nil {
		return "", err
	}
	if wire.ClaimType(m.Subject) != wire.EventAttempt {
		return "", nil // moved by an operator: claimAttempt decides
	}
	var ev admin.QueueEvent
	if err := admin.UnmarshalQueueEvent(m.Data, &ev); err != nil {
		return "", err
	}
	return ev.Instance, nil
}

// askLive is the state of key at instance; no answer is liveUnknown.
func (s *Service) askLive(ctx context.Context, instance, key string) string {
	if instance == s.cfg.Instance {
		return s.live.state(key)
	}
	data, _ := json.Marshal(liveQuestion{Instance: instance, Key: key})
	ctx, cancel := context.WithTimeout(ctx, liveAsk)
	defer cancel()
	reply, err := s.js.Conn().RequestWithContext(ctx, liveSubject, data)
	if err != nil {
		return liveUnknown
	}
	return string(reply.Data)
}

// checkLive reports whether job, handed out again, must not be attempted
// (the deliverer of its latest attempt still runs it or has finished it),
// and then what becomes of it. A first delivery passes at once.
func (s *Service) checkLive(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, log *slog.Logger) (consume.Outcome, bool) {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered <= 1 {
		return consume.Outcome{}, false
	}
	instance, err := s.latestAttempt(ctx, job, md.Sequence.Stream)
	if err != nil {
		// Cannot tell: waiting is safe, a second copy of the mail is not.
		log.WarnContext(ctx, "cannot look up the job's latest attempt; job returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry), true
	}
	if instance == "" {
		return consume.Outcome{}, false
	}
	switch state := s.askLive(ctx, instance, liveKey(job)); state {
	case liveRunning:
		trace.SpanFromContext(ctx).AddEvent("sluice.still_running", trace.WithAttributes(attribute.String("sluice.deliverer", instance)))
		log.InfoContext(ctx, "job handed out again while its delivery still runs; it waits", "deliverer", instance)
		s.steered.Add(context.Background(), 1, metric.WithAttributes(attribute.String("action", "still_running")))
		return consume.RetryAfter(s.cfg.AckWait), true
	case liveFinished:
		log.InfoContext(ctx, "job handed out again after its delivery finished; acknowledged", "deliverer", instance)
		s.steered.Add(context.Background(), 1, metric.WithAttributes(attribute.String("action", "finished")))
		return s.confirmed(), true
	}
	return consume.Outcome{}, false
}
