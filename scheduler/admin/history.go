package admin

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// maxEvents bounds the events returned for one id; maxScanned those
// kept from one read.
const (
	maxEvents  = 2000
	maxScanned = 10000
)

// clockSlack is how much earlier than its queue id's time a message's
// first event is looked for: the ingress that named it and the scheduler
// that recorded it may run on machines whose clocks differ.
// doneSlack is how long after the end of a message's last job its events
// are still looked for: an event published just before the end may be
// stored just after it.
const (
	clockSlack = 5 * time.Minute
	doneSlack  = time.Minute
)

// history reads the events of a message (id is a queue id) or of one job,
// oldest first, from SLUICE_EVENTS.
func (s *Server) history(ctx context.Context, id string) ([]api.QueueEvent, error) {
	if !wire.ValidToken(id) {
		return nil, errorf(400, "bad id %q", id)
	}
	qid, jobID := id, ""
	if q := wire.QueueIDOf(id); q != "" {
		qid, jobID = q, id
	}
	evs, err := s.readEvents(ctx, qid, jobID)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 && jobID != "" {
		// A queue id never contains "-", but be lenient with ids that do.
		if evs, err = s.readEvents(ctx, id, ""); err != nil {
			return nil, err
		}
	}
	if len(evs) == 0 {
		return nil, errorf(404, "unknown id %s: no message or job with this id in the queue or its history", id)
	}
	return evs, nil
}

// readEvents reads the events of qid (of jobID alone when it is not ""),
// in the order they were stored: those on its shard's subjects, from a
// little before qid was accepted to a little after the end of
// wire.ShardWindow, and those on subjects of its own (wire.OwnEventFilter).
// The shard is read only as far as it must be: it stops early once every
// job it saw has ended and the stream has moved on past that by doneSlack.
func (s *Server) readEvents(ctx context.Context, qid, jobID string) ([]api.QueueEvent, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var evs []seqEvent
	if t, ok := wire.QueueIDTime(qid); ok {
		start := t.Add(-clockSlack)
		shard, err := s.scan(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{wire.ShardFilter(qid)},
			DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
			OptStartTime:   &start,
		}, qid, t.Add(wire.ShardWindow+clockSlack))
		if err != nil {
			return nil, err
		}
		evs = shard
	}
	own, err := s.scan(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{wire.OwnEventFilter(qid)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}, qid, time.Time{})
	if err != nil {
		return nil, err
	}
	evs = append(evs, own...)
	slices.SortFunc(evs, func(a, b seqEvent) int { return cmp.Compare(a.seq, b.seq) })
	var out []api.QueueEvent
	for _, e := range evs {
		if (jobID == "" || e.ev.JobID == jobID) && len(out) < maxEvents {
			out = append(out, e.ev)
		}
	}
	return out, nil
}

// seqEvent is an event and its sequence in SLUICE_EVENTS.
type seqEvent struct {
	seq uint64
	ev  api.QueueEvent
}

// scan reads the events of qid that cfg's consumer delivers, up to the
// first stored after until (none when zero) or once every job it saw has
// ended and the stream has moved on past that by doneSlack.
func (s *Server) scan(ctx context.Context, cfg jetstream.OrderedConsumerConfig, qid string, until time.Time) ([]seqEvent, error) {
	cons, err := s.d.JS.OrderedConsumer(ctx, wire.StreamEvents, cfg)
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	pending := info.NumPending
	var out []seqEvent
	open := map[string]bool{} // job id: not ended yet
	var ended time.Time       // when the last job seen ended, once all have
	for pending > 0 && len(out) < maxScanned {
		batch, err := cons.Fetch(int(min(pending, 1024)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n, done := 0, false
		for msg := range batch.Messages() {
			n++
			pending--
			if done {
				continue
			}
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			if (!until.IsZero() && md.Timestamp.After(until)) || (!ended.IsZero() && md.Timestamp.After(ended.Add(doneSlack))) {
				done = true
				continue
			}
			var ev api.QueueEvent
			if api.UnmarshalQueueEvent(msg.Data(), &ev) != nil || ev.QueueID != qid {
				continue
			}
			out = append(out, seqEvent{seq: md.Sequence.Stream, ev: ev})
			switch ev.Type {
			case wire.EventDelivered, wire.EventBounced, wire.EventExpired, wire.EventDeleted:
				delete(open, ev.JobID)
				if len(open) == 0 {
					ended = ev.Time
				}
			default:
				open[ev.JobID] = true
				ended = time.Time{}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, err
		}
		if n == 0 || done {
			break
		}
	}
	return out, nil
}

// fold turns events into the state of each job they are about, in order of
// first appearance.
func fold(evs []api.QueueEvent) []api.QueueJob {
	var order []string
	jobs := map[string]*api.QueueJob{}
	for i := range evs {
		ev := &evs[i]
		j, ok := jobs[ev.JobID]
		if !ok {
			j = &api.QueueJob{JobID: ev.JobID, QueueID: ev.QueueID, Recipients: []api.QueueRecipientStatus{}, Attempts: []api.QueueAttempt{}}
			jobs[ev.JobID] = j
			order = append(order, ev.JobID)
		}
		apply(j, ev)
	}
	out := make([]api.QueueJob, 0, len(order))
	for _, id := range order {
		out = append(out, *jobs[id])
	}
	return out
}

func apply(j *api.QueueJob, ev *api.QueueEvent) {
	if j.TraceID == "" {
		j.TraceID = ev.TraceID
	}
	if ev.Priority != "" {
		j.Priority = ev.Priority
	}
	if ev.State != "" {
		j.State = ev.State
	}
	j.Updated = ev.Time
	attempt := func(n uint32) *api.QueueAttempt {
		for i := range j.Attempts {
			if j.Attempts[i].Attempt == n {
				return &j.Attempts[i]
			}
		}
		j.Attempts = append(j.Attempts, api.QueueAttempt{Attempt: n})
		return &j.Attempts[len(j.Attempts)-1]
	}
	switch ev.Type {
	case wire.EventReceived:
		j.Envelope = ev.Envelope
		if ev.Envelope != nil && len(j.Recipients) == 0 {
			for _, r := range ev.Envelope.Recipients {
				j.Recipients = append(j.Recipients, api.QueueRecipientStatus{Address: r, Status: "pending"})
			}
		}
	case wire.EventAttempt:
		a := attempt(ev.Attempt)
		a.Started, a.Deliverer = ev.Time, ev.Instance
		j.NextAttempt = time.Time{}
		j.Throttled = ""
	case wire.EventThrottled:
		// A deliverer held the job back for its site, or the site slowed
		// down after this job's reply; the job's own state is unchanged.
		j.Throttled = ev.Note
		if !ev.NextAttempt.IsZero() && j.Outcome == "" {
			j.NextAttempt = ev.NextAttempt
		}
	case wire.EventDeferred, wire.EventDelivered, wire.EventBounced, wire.EventExpired:
		a := attempt(ev.Attempt)
		if a.Started.IsZero() {
			a.Started = ev.Started
		}
		if a.Deliverer == "" {
			a.Deliverer = ev.Instance
		}
		a.Finished, a.Result, a.Reason, a.Reply, a.RemoteHost = ev.Time, ev.Type, ev.Reason, ev.Error, ev.RemoteHost
		if a.Reply == "" {
			for _, r := range ev.Recipients {
				if r.Reply != "" {
					a.Reply = r.Reply
					break
				}
			}
		}
		for _, r := range ev.Recipients {
			if r.TLS != (api.QueueTLS{}) {
				a.TLS = r.TLS // one session carried every recipient of a job
				break
			}
		}
		j.NextAttempt = ev.NextAttempt
		if ev.Type != wire.EventDeferred {
			j.Outcome = ev.Type
		}
		for _, r := range ev.Recipients {
			st := "pending"
			switch r.Outcome {
			case "delivered":
				st = "delivered"
			case "failed":
				st = "failed"
			}
			setRecipient(j, api.QueueRecipientStatus{Address: r.Address, Status: st, Reason: r.Reason, Reply: r.Reply})
		}
	case wire.EventDeleted:
		j.Outcome = ev.Type
		j.NextAttempt = time.Time{}
		for i := range j.Recipients {
			if j.Recipients[i].Status == "pending" {
				j.Recipients[i].Status = "deleted"
			}
		}
	case wire.EventScheduled, wire.EventReleased, wire.EventHeld:
		if !ev.NextAttempt.IsZero() || ev.Type != wire.EventHeld {
			j.NextAttempt = ev.NextAttempt
		}
	}
}

func setRecipient(j *api.QueueJob, st api.QueueRecipientStatus) {
	for i := range j.Recipients {
		if j.Recipients[i].Address == st.Address {
			j.Recipients[i] = st
			return
		}
	}
	j.Recipients = append(j.Recipients, st)
}
