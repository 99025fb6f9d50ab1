package admin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/events"
	"github.com/sluice-mta/sluice/scheduler/hold"
	"github.com/sluice-mta/sluice/scheduler/index"
	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/services/claim"
	"github.com/sluice-mta/sluice/services/marks"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Where a job is in SLUICE_JOBS.
type place int

const (
	placeSchedule place = iota + 1 // a pending retry on its schedule subject
	placeReady                     // in its class's work queue
	placeHeld                      // parked on its held subject
)

// located is a job found in SLUICE_JOBS.
type located struct {
	place place
	msg   *jetstream.RawStreamMsg
	job   *sluicev1.Job
}

// outcome is what an operation did to one job: changed it (or, in a dry
// run, would), or skipped it and why; seq is the stream sequence of the
// event it recorded.
type outcome struct {
	changed bool
	skip    string
	seq     uint64
}

func skipped(why string) (outcome, error) { return outcome{skip: why}, nil }

var changed = outcome{changed: true}

// op works on one live job.
type op func(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error)

// action wraps an op as an endpoint: it resolves the ids or the filter to
// jobs, runs the op on each (workers at a time), and waits until the index
// shows the changes.
func (s *Server) action(name string, fn op) func(context.Context, micro.Request) (any, error) {
	return func(ctx context.Context, req micro.Request) (any, error) {
		var r api.QueueActionRequest
		if err := decode(req, &r); err != nil {
			return nil, err
		}
		if err := s.ready(); err != nil {
			return nil, err
		}
		switch {
		case len(r.IDs) == 0 && r.Filter == nil:
			return nil, errorf(400, "give job or queue ids, or a filter")
		case len(r.IDs) > 0 && r.Filter != nil:
			return nil, errorf(400, "give ids or a filter, not both")
		}
		if name == wire.AdminPrioritize {
			if _, err := wire.ParseClass(r.Priority); err != nil || r.Priority == "" {
				return nil, errorf(400, "priority: %q, want high, normal or bulk", r.Priority)
			}
		}
		resp := &api.QueueActionResponse{Action: name, DryRun: r.DryRun}
		var ids, unknown []string
		if r.Filter != nil {
			m, err := index.Compile(*r.Filter, s.d.Now())
			if err != nil {
				return nil, errorf(400, "%v", err)
			}
			ids = s.d.Index.Matching(m)
			if len(ids) == 0 {
				return nil, errorf(404, "no job matches the filter")
			}
		} else {
			seen := map[string]bool{}
			for _, id := range r.IDs {
				got := s.d.Index.Resolve(id)
				if len(got) == 0 {
					unknown = append(unknown, id)
				}
				for _, g := range got {
					if !seen[g] {
						seen[g] = true
						ids = append(ids, g)
					}
				}
			}
			if len(ids) == 0 {
				return nil, errorf(404, "unknown id %s: no such message or job in the queue", strings.Join(unknown, ", "))
			}
		}
		resp.Matched = len(ids)
		for _, id := range unknown {
			resp.SkippedTotal++
			resp.Skipped = append(resp.Skipped, api.QueueSkip{JobID: id, Reason: "no such message or job in the queue"})
		}

		var (
			mu     sync.Mutex
			maxSeq uint64
			errs   []error
		)
		work := make(chan string)
		var wg sync.WaitGroup
		for range min(workers, len(ids)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range work {
					res, err := s.one(ctx, fn, id, &r)
					mu.Lock()
					switch {
					case err != nil:
						errs = append(errs, fmt.Errorf("%s: %w", id, err))
						res.skip = "error: " + err.Error()
						fallthrough
					case !res.changed:
						resp.SkippedTotal++
						if len(resp.Skipped) < maxSkipped {
							resp.Skipped = append(resp.Skipped, api.QueueSkip{JobID: id, Reason: res.skip})
						}
					default:
						resp.Changed++
					}
					maxSeq = max(maxSeq, res.seq)
					mu.Unlock()
				}
			}()
		}
		for _, id := range ids {
			work <- id
		}
		close(work)
		wg.Wait()
		if len(errs) > 0 {
			s.d.Log.WarnContext(ctx, "queue action failed for some jobs", "action", name, "failed", len(errs), "first", errs[0])
			if resp.Changed == 0 && len(errs) == len(ids) {
				return nil, errorf(500, "%s failed: %v", name, errs[0])
			}
		}
		if maxSeq > 0 {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_ = s.d.Index.WaitSeq(wctx, maxSeq)
			cancel()
		}
		return resp, nil
	}
}

func (s *Server) one(ctx context.Context, fn op, id string, r *api.QueueActionRequest) (outcome, error) {
	j, ok := s.d.Index.Get(id)
	if !ok {
		return skipped("no longer in the queue")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return fn(ctx, j, r)
}

// locate finds a job in SLUICE_JOBS, looking first where its state says it
// is. It returns nil when the job is in none of them: it is with a
// deliverer whose result is not yet applied, or finished.
func (s *Server) locate(ctx context.Context, j index.Job) (*located, error) {
	type cand struct {
		p    place
		subj string
	}
	sched := cand{placeSchedule, wire.ScheduleSubject(j.ID)}
	held := cand{placeHeld, wire.HeldSubject(j.ID)}
	ready := cand{placeReady, wire.JobSubject(j.Class, j.ID)}
	var cands []cand
	switch j.State {
	case index.Deferred:
		cands = []cand{sched, ready, held}
	case index.Held:
		cands = []cand{held, sched, ready}
	default:
		cands = []cand{ready, sched, held}
	}
	for _, c := range wire.Classes {
		if c != j.Class {
			cands = append(cands, cand{placeReady, wire.JobSubject(c, j.ID)})
		}
	}
	for _, c := range cands {
		msg, err := s.jobs.GetLastMsgForSubject(ctx, c.subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", c.subj, err)
		}
		job := &sluicev1.Job{}
		if err := proto.Unmarshal(msg.Data, job); err != nil {
			return nil, fmt.Errorf("decode job at %s: %w", c.subj, err)
		}
		return &located{place: c.p, msg: msg, job: job}, nil
	}
	return nil, nil
}

// record publishes an operator's event about a job and returns its stream
// sequence. job is the located job (nil when it was not found); its trace
// context, when it has one, is the event's.
func (s *Server) record(ctx context.Context, typ string, loc *located, j index.Job, state string, r *api.QueueActionRequest, mut func(*api.QueueEvent)) (uint64, error) {
	job := &sluicev1.Job{JobId: j.ID, QueueId: wire.QueueIDOf(j.ID), Attempt: uint32(j.Attempts + 1), Priority: j.Class}
	if loc != nil {
		job = loc.job
		ctx = telemetry.Extract(ctx, loc.msg.Header)
	}
	ev := events.New(ctx, typ, job, state, s.d.Now())
	ev.Actor = r.Actor
	if mut != nil {
		mut(ev)
	}
	ack, err := s.d.Events.Publish(ctx, ev, events.MsgID(job, typ, nonce()))
	if err != nil {
		return 0, fmt.Errorf("record %s event: %w", typ, err)
	}
	return ack.Sequence, nil
}

func nonce() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// republish stores job on subject with the stored message's headers minus
// JetStream's own (schedule, rollup, message id, expectations: a fired
// job's Nats-Schedule-Next would even purge its schedule subject), plus
// set.
func (s *Server) republish(ctx context.Context, subject string, job *sluicev1.Job, orig nats.Header, msgID string, set map[string]string) (*jetstream.PubAck, error) {
	data, err := proto.Marshal(job)
	if err != nil {
		return nil, err
	}
	m := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: data}
	for k, v := range orig {
		if strings.HasPrefix(k, "Nats-") || k == wire.HeaderHoldMark {
			continue
		}
		m.Header[k] = v
	}
	m.Header.Set(wire.HeaderAttempt, strconv.FormatUint(uint64(job.GetAttempt()), 10))
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	for k, v := range set {
		m.Header.Set(k, v)
	}
	return s.d.JS.PublishMsg(ctx, m)
}

// schedule stores job as a one-shot message schedule firing at at into its
// class subject. A schedule subject holds one schedule: this replaces any
// pending one atomically (JetStream rolls the subject up).
func (s *Server) schedule(ctx context.Context, job *sluicev1.Job, orig nats.Header, at time.Time, msgID string) error {
	_, err := s.republish(ctx, wire.ScheduleSubject(job.GetJobId()), job, orig, msgID, map[string]string{
		jetstream.ScheduleHeader:       "@at " + at.UTC().Format(time.RFC3339),
		jetstream.ScheduleTargetHeader: wire.JobSubject(job.GetPriority(), job.GetJobId()),
	})
	return err
}

func (s *Server) deleteSeq(ctx context.Context, seq uint64) (bool, error) {
	err := s.jobs.DeleteMsg(ctx, seq)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) || isNotFound(err) {
		return false, nil
	}
	return false, err
}

func isNotFound(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound
}

func (s *Server) purge(ctx context.Context, subject string) error {
	return s.jobs.Purge(ctx, jetstream.WithPurgeSubject(subject))
}

func seqNonce(loc *located) string { return strconv.FormatUint(loc.msg.Sequence, 10) }

func futureOrZero(ns int64, now time.Time) time.Time {
	if ns == 0 || time.Unix(0, ns).Before(now) {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// hold puts a job on hold. The mark comes first: from then on a deliverer
// that fetches the job parks it instead of attempting it. Then the job is
// parked from wherever it waits; a job being attempted is parked by the
// result processor when its attempt ends.
func (s *Server) hold(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error) {
	if j.State == index.Held {
		return skipped("already held")
	}
	if r.DryRun {
		return changed, nil
	}
	now := s.d.Now()
	if err := hold.Put(ctx, s.d.Held, j.ID, api.QueueMark{Action: api.MarkHold, Time: now.UTC(), Actor: r.Actor}); err != nil {
		return outcome{}, err
	}
	loc, err := s.locate(ctx, j)
	if err != nil {
		return outcome{}, err
	}
	note := ""
	if loc == nil {
		note = "being attempted: its retry, if any, waits for a release"
	} else if loc.place != placeHeld {
		park := hold.ParkMsg(loc.job, loc.msg.Data, loc.msg.Header, "admin", "admin-"+seqNonce(loc))
		if _, err := s.d.JS.PublishMsg(ctx, park); err != nil {
			return outcome{}, fmt.Errorf("park: %w", err)
		}
		if loc.place == placeSchedule {
			err = s.purge(ctx, loc.msg.Subject)
		} else if ok, derr := s.deleteSeq(ctx, loc.msg.Sequence); derr != nil {
			err = derr
		} else if !ok {
			note = "being attempted: its retry, if any, waits for a release"
		}
		if err != nil {
			return outcome{}, fmt.Errorf("remove from %s: %w", loc.msg.Subject, err)
		}
	}
	seq, err := s.record(ctx, wire.EventHeld, loc, j, api.StateHeld, r, func(ev *api.QueueEvent) {
		ev.Note = note
		if loc != nil {
			ev.NextAttempt = futureOrZero(loc.job.GetNotBeforeUnixNano(), now)
		}
	})
	return outcome{changed: true, seq: seq}, err
}

// release takes a job off hold and puts it back where it was: a deferred
// job waits for its old next-attempt time when that is still ahead; any
// other job (and one whose time has passed) is ready at once. `retry`
// makes a deferred job due now. The event is recorded before the job is
// requeued, so that it precedes the next attempt in the job's history.
func (s *Server) release(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error) {
	var loc *located
	msg, err := s.jobs.GetLastMsgForSubject(ctx, wire.HeldSubject(j.ID))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return outcome{}, err
	default:
		job := &sluicev1.Job{}
		if err := proto.Unmarshal(msg.Data, job); err != nil {
			return outcome{}, fmt.Errorf("decode held job: %w", err)
		}
		loc = &located{place: placeHeld, msg: msg, job: job}
	}
	_, marked, err := marks.Read(ctx, s.d.Held, j.ID)
	if err != nil {
		return outcome{}, err
	}
	if loc == nil && j.State != index.Held && !marked {
		return skipped("not held")
	}
	if r.DryRun {
		return changed, nil
	}
	now := s.d.Now()
	// The mark goes first, so that the deliverer that fetches the job
	// does not park it again.
	if err := hold.Clear(ctx, s.d.Held, j.ID); err != nil {
		return outcome{}, err
	}
	state, next, note := "", time.Time{}, ""
	if loc == nil {
		note = "was being attempted; nothing was parked"
	} else if r.KeepSchedule {
		if next = futureOrZero(loc.job.GetNotBeforeUnixNano(), now.Add(time.Second)); !next.IsZero() {
			state = api.StateDeferred
		} else {
			state = api.StateReady
		}
	} else {
		// A postmaster who releases mail expects it tried now.
		state = api.StateReady
		if loc.job.GetNotBeforeUnixNano() > now.UnixNano() {
			note = "tried now instead of at its retry time"
			loc.job.NotBeforeUnixNano = now.UnixNano()
		}
	}
	seq, err := s.record(ctx, wire.EventReleased, loc, j, state, r, func(ev *api.QueueEvent) {
		ev.NextAttempt, ev.Note = next, note
	})
	if err != nil || loc == nil {
		return outcome{changed: err == nil, seq: seq}, err
	}
	job := loc.job
	id := job.GetJobId() + "/" + strconv.FormatUint(uint64(job.GetAttempt()), 10) + "/release/" + seqNonce(loc)
	if !next.IsZero() {
		err = s.schedule(ctx, job, msg.Header, next, id)
	} else {
		_, err = s.republish(ctx, wire.JobSubject(job.GetPriority(), job.GetJobId()), job, msg.Header, id, nil)
	}
	if err != nil {
		// The job is still parked; releasing it again finishes the job.
		return outcome{}, fmt.Errorf("requeue: %w", err)
	}
	if _, err := s.deleteSeq(ctx, msg.Sequence); err != nil {
		return outcome{}, fmt.Errorf("remove held copy: %w", err)
	}
	return outcome{changed: true, seq: seq}, nil
}

// retry makes a deferred job due now by replacing its retry schedule with
// one due now, on the same schedule subject: JetStream rolls the subject
// up, so the old schedule can no longer fire and the job is delivered once.
func (s *Server) retry(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error) {
	switch j.State {
	case index.Held:
		return skipped("held: release it first")
	case index.Ready:
		return skipped("already waiting for a deliverer")
	case index.Active:
		return skipped("being attempted now")
	}
	msg, err := s.jobs.GetLastMsgForSubject(ctx, wire.ScheduleSubject(j.ID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return skipped("no pending retry (it may have just become due)")
	}
	if err != nil {
		return outcome{}, err
	}
	if r.DryRun {
		return changed, nil
	}
	job := &sluicev1.Job{}
	if err := proto.Unmarshal(msg.Data, job); err != nil {
		return outcome{}, fmt.Errorf("decode scheduled job: %w", err)
	}
	now := s.d.Now()
	old := job.GetNotBeforeUnixNano()
	job.NotBeforeUnixNano = now.UnixNano()
	loc := &located{place: placeSchedule, msg: msg, job: job}
	// Recorded first, so that it precedes the attempt it causes.
	seq, err := s.record(ctx, wire.EventScheduled, loc, j, api.StateReady, r, func(ev *api.QueueEvent) {
		ev.NextAttempt, ev.Note = now.UTC(), "retry now"
	})
	if err != nil {
		return outcome{}, err
	}
	id := job.GetJobId() + "/" + strconv.FormatUint(uint64(job.GetAttempt()), 10) + "/retry/" + strconv.FormatUint(msg.Sequence, 10)
	if err := s.schedule(ctx, job, msg.Header, now, id); err != nil {
		// The old schedule stands: say so in the history and the index.
		_, _ = s.record(ctx, wire.EventScheduled, loc, j, api.StateDeferred, r, func(ev *api.QueueEvent) {
			ev.NextAttempt, ev.Note = time.Unix(0, old).UTC(), "retry failed; the previous schedule stands"
		})
		return outcome{}, fmt.Errorf("reschedule: %w", err)
	}
	return outcome{changed: true, seq: seq}, nil
}

// prioritize moves a job to another class: a pending retry is rescheduled
// (same time) into the new class's subject, a waiting job is moved, a held
// job is re-parked with its new class.
func (s *Server) prioritize(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error) {
	class, _ := wire.ParseClass(r.Priority)
	if j.Class == class {
		return skipped("already " + wire.ClassName(class))
	}
	if j.State == index.Active {
		return skipped("being attempted now; try again when the attempt ends")
	}
	if r.DryRun {
		return changed, nil
	}
	loc, err := s.locate(ctx, j)
	if err != nil {
		return outcome{}, err
	}
	if loc == nil {
		return skipped("being attempted now; try again when the attempt ends")
	}
	old := wire.ClassName(loc.job.GetPriority())
	job := proto.Clone(loc.job).(*sluicev1.Job)
	job.Priority = class
	id := job.GetJobId() + "/" + strconv.FormatUint(uint64(job.GetAttempt()), 10) + "/prio/" + wire.ClassName(class) + "/" + seqNonce(loc)
	switch loc.place {
	case placeSchedule:
		_, err = s.republish(ctx, wire.ScheduleSubject(j.ID), job, loc.msg.Header, id, map[string]string{
			jetstream.ScheduleHeader:       loc.msg.Header.Get(jetstream.ScheduleHeader),
			jetstream.ScheduleTargetHeader: wire.JobSubject(class, j.ID),
		})
	case placeHeld:
		data, merr := proto.Marshal(job)
		if merr != nil {
			return outcome{}, merr
		}
		_, err = s.d.JS.PublishMsg(ctx, hold.ParkMsg(job, data, loc.msg.Header, "admin", "prio-"+seqNonce(loc)))
	case placeReady:
		return s.moveReady(ctx, j, r, loc, job, old, id)
	}
	if err != nil {
		return outcome{}, fmt.Errorf("move to %s: %w", wire.ClassName(class), err)
	}
	seq, err := s.record(ctx, wire.EventReprioritised, &located{place: loc.place, msg: loc.msg, job: job}, j, "", r, func(ev *api.QueueEvent) {
		ev.Note = "from " + old
	})
	return outcome{changed: true, seq: seq}, err
}

// moveReady moves a job copy waiting in its class's subject, which the
// class's consumer may hand to a deliverer at any moment (and, once handed
// out, deleting it from the stream does not take it back). The copy is
// claimed first (package claim) with the "reprioritised" event, as a
// deliverer claims it with its "attempt" event before attempting it: of
// the two, one is stored.
//   - Lost to an attempt: the job is being attempted; nothing changes.
//   - Won: no deliverer attempts this copy any more (one that fetched it
//     gives it back), so the moved copy is stored and this one removed.
//     Should storing the moved copy fail, the claim is given up and the
//     copy stays where it was, to be attempted as before.
//   - Lost to an earlier prioritize whose copy is still there (it stopped
//     half way): its move is finished now, with the same message id.
func (s *Server) moveReady(ctx context.Context, j index.Job, r *api.QueueActionRequest, loc *located, job *sluicev1.Job, old, id string) (outcome, error) {
	ctx = telemetry.Extract(ctx, loc.msg.Header)
	ev := events.New(ctx, wire.EventReprioritised, job, "", s.d.Now())
	ev.Actor, ev.Note = r.Actor, "from "+old
	m, err := events.Msg(ctx, ev, events.MsgID(job, wire.EventReprioritised, seqNonce(loc)))
	if err != nil {
		return outcome{}, err
	}
	m.Subject = wire.ClaimSubject(job.GetQueueId(), wire.EventReprioritised, loc.msg.Sequence)
	won, err := claim.Take(ctx, s.d.JS, m, job.GetQueueId(), loc.msg.Sequence)
	if err != nil {
		return outcome{}, err
	}
	if !won.Won && won.Holder != wire.EventReprioritised {
		return skipped("being attempted now; try again when the attempt ends")
	}
	if _, err := s.republish(ctx, wire.JobSubject(job.GetPriority(), j.ID), job, loc.msg.Header, id, nil); err != nil {
		if won.Won {
			s.giveUp(ctx, won.Seq, j.ID)
		}
		return outcome{}, fmt.Errorf("move to %s: %w", wire.ClassName(job.GetPriority()), err)
	}
	if _, err := s.deleteSeq(ctx, loc.msg.Sequence); err != nil {
		// The copy stays, claimed: deliverers give it back until it goes
		// with the stream's limits or a prioritize of the job removes it.
		s.d.Log.Warn("prioritize: the moved job's old copy could not be removed", "job_id", j.ID, "err", err)
	}
	if won.Won && !wire.InShard(job.GetQueueId(), s.d.Now()) {
		// The claim is on the shard's subjects, which the log reads only
		// for the message's first wire.ShardWindow: the event is recorded
		// where the log finds it too.
		if _, err := s.record(ctx, wire.EventReprioritised, &located{place: loc.place, msg: loc.msg, job: job}, j, "", r, func(ev *api.QueueEvent) {
			ev.Note = "from " + old
		}); err != nil {
			s.d.Log.Warn("prioritize: the move is done, its event for the log could not be recorded", "job_id", j.ID, "err", err)
		}
	}
	if !won.Won {
		// The claim is the earlier command's event: this one's is recorded.
		seq, err := s.record(ctx, wire.EventReprioritised, &located{place: loc.place, msg: loc.msg, job: job}, j, "", r, func(ev *api.QueueEvent) {
			ev.Note = "from " + old
		})
		return outcome{changed: true, seq: seq}, err
	}
	return outcome{changed: true, seq: won.Seq}, nil
}

// giveUp removes the claim at seq from the events stream, so that the
// copy it claimed is attempted after all.
func (s *Server) giveUp(ctx context.Context, seq uint64, jobID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st, err := s.d.JS.Stream(ctx, wire.StreamEvents)
	if err == nil {
		err = st.DeleteMsg(ctx, seq)
	}
	if err != nil {
		s.d.Log.Error("prioritize: the move failed and its claim could not be removed; `sluice queue prioritize` again finishes the move", "job_id", jobID, "err", err)
	}
}

// DeletedStatus is the RFC 3463 status of recipients of a job deleted with
// a bounce: 5.0.0, other undefined status, permanent.
const (
	DeletedStatus = "5.0.0"
	DeletedText   = "deleted by the postmaster"
)

// delete removes a job. A delete mark comes first, so that no deliverer
// attempts a copy that races the removal and the result of an attempt
// already running schedules no retry. With a bounce, the sender gets a
// failure DSN (never for the null sender or a DSN, and only for recipients
// whose NOTIFY asks for failures). The message body is released through the
// same open-jobs accounting as any finished job.
func (s *Server) delete(ctx context.Context, j index.Job, r *api.QueueActionRequest) (outcome, error) {
	if r.DryRun {
		return changed, nil
	}
	now := s.d.Now()
	if err := hold.Put(ctx, s.d.Held, j.ID, api.QueueMark{Action: api.MarkDelete, Time: now.UTC(), Actor: r.Actor}); err != nil {
		return outcome{}, err
	}
	loc, err := s.locate(ctx, j)
	if err != nil {
		return outcome{}, err
	}
	inFlight := loc == nil
	if loc != nil {
		switch loc.place {
		case placeSchedule, placeHeld:
			err = s.purge(ctx, loc.msg.Subject)
		case placeReady:
			var ok bool
			ok, err = s.deleteSeq(ctx, loc.msg.Sequence)
			inFlight = err == nil && !ok
		}
		if err != nil {
			return outcome{}, fmt.Errorf("remove from %s: %w", loc.msg.Subject, err)
		}
	}
	note := "deleted silently"
	if inFlight {
		// The running attempt's result finishes the job (see the result
		// processor); nothing is left to bounce or free here.
		note = "was being attempted: its result ends the job, with no retry"
	} else {
		if r.Bounce {
			sent, err := s.bounce(ctx, loc)
			if err != nil {
				return outcome{}, err
			}
			note = "deleted; " + sent
		}
		if err := s.d.Complete(ctx, loc.job); err != nil {
			return outcome{}, fmt.Errorf("free the message: %w", err)
		}
	}
	seq, err := s.record(ctx, wire.EventDeleted, loc, j, api.StateDone, r, func(ev *api.QueueEvent) {
		ev.Note = note
		if r.Bounce && !inFlight {
			ev.Reason = "deleted"
			ev.Error = DeletedStatus + " " + DeletedText
		}
	})
	return outcome{changed: true, seq: seq}, err
}

// bounce asks the bouncer for a failure DSN about a deleted job, through
// the same SLUICE_BOUNCES contract as any failure, and says what it did.
func (s *Server) bounce(ctx context.Context, loc *located) (string, error) {
	job := loc.job
	if !policy.MayBounce(job) {
		return "no bounce (null sender or a DSN)", nil
	}
	var rcpts []*sluicev1.RecipientResult
	for _, rc := range job.GetRecipients() {
		if !policy.WantsFailure(rc.GetNotify()) {
			continue
		}
		rcpts = append(rcpts, &sluicev1.RecipientResult{
			Address: rc.GetAddress(), Outcome: sluicev1.Outcome_OUTCOME_PERMANENT,
			EnhancedCode: DeletedStatus, Text: DeletedText, Notify: rc.GetNotify(), Orcpt: rc.GetOrcpt(),
		})
	}
	if len(rcpts) == 0 {
		return "no bounce (NOTIFY=NEVER)", nil
	}
	now := s.d.Now()
	b := &sluicev1.Bounce{
		Schema: wire.SchemaVersion, Job: job, Kind: sluicev1.BounceKind_BOUNCE_KIND_FAILED, Recipients: rcpts,
		OriginalHeaders: s.originalHeaders(ctx, job), CreatedUnixNano: now.UnixNano(),
	}
	data, err := proto.Marshal(b)
	if err != nil {
		return "", err
	}
	m := &nats.Msg{Subject: wire.BounceSubject(job.GetJobId()), Header: nats.Header{}, Data: data}
	for k, v := range loc.msg.Header {
		if !strings.HasPrefix(k, "Nats-") && k != wire.HeaderHoldMark {
			m.Header[k] = v
		}
	}
	m.Header.Set(jetstream.MsgIDHeader, job.GetJobId()+"/"+strconv.FormatUint(uint64(job.GetAttempt()), 10)+"/deleted")
	if _, err := s.d.JS.PublishMsg(ctx, m); err != nil {
		return "", fmt.Errorf("request bounce: %w", err)
	}
	return "bounce sent to " + job.GetMailFrom(), nil
}

// maxHeaderBytes bounds how much of a large body is read to find its
// header section.
const maxHeaderBytes = 64 << 10

// originalHeaders returns the header section of the job's message for the
// DSN (RFC 3462 text/rfc822-headers), or nil when it cannot be read.
func (s *Server) originalHeaders(ctx context.Context, job *sluicev1.Job) []byte {
	var body []byte
	if name := job.GetBodyObject(); name != "" {
		// A chunk at a time: the object store's Get would push up to
		// 32 MiB of the body to this connection for the 64 KiB read here
		// (see streams.ObjectReader).
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		obj, err := streams.OpenObject(rctx, s.d.JS, wire.BucketBodies, name, streams.RequestTimeout)
		if err != nil {
			return nil
		}
		body, _ = io.ReadAll(io.LimitReader(obj, maxHeaderBytes))
	} else {
		raw, err := s.msgs.GetMsg(ctx, job.GetMsgSeq())
		if err != nil {
			return nil
		}
		m := &sluicev1.Message{}
		if proto.Unmarshal(raw.Data, m) != nil || m.GetQueueId() != job.GetQueueId() {
			return nil
		}
		body = m.GetBody()
	}
	if i := bytes.Index(body, []byte("\r\n\r\n")); i >= 0 {
		return body[:i+2]
	}
	if len(body) > maxHeaderBytes {
		return nil
	}
	return body
}
