package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/deliverer/courier"
	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Traffic shaping (package shaping) puts two steps on a job's way between
// finding its route and connecting, and one after the attempt:
//
//   - admit: a job of a suspended site, or of a site whose connection slots
//     are all taken across the fleet, is not attempted. It is handed back to
//     JetStream with a delay (Nak with delay: until the suspension ends, at
//     most shaping.max_wait; or busy_delay with as much again of jitter when
//     the site is busy; a wait of parkAfter or more is a message schedule
//     instead, see park), which frees this deliverer's slot at once and
//     records no attempt, so the wait does not count against the job's
//     attempts; its lifetime runs on, as it does for any queued mail. The
//     wait is a "throttled" event in the job's history (once per attempt
//     and reason) and a span event on its trace. Otherwise the job gets a
//     ticket: an idle session of its site, or a new slot. One exception
//     keeps a busy site's mail flowing: when this deliverer itself holds
//     connections to the site, the job waits up to busy_delay for one of
//     them to finish its transaction and takes it over, at most one job
//     per connection (a pipeline of one; it holds a delivery slot while it
//     waits). Only jobs of a suspended site never hold one.
//   - adapt: the attempt's outcome feeds the site's concurrency: a delivery
//     raises it (slow start), a failure to reach any server lowers it by
//     one, a reply that asks us to slow down halves it and suspends the
//     site. A lowering or a suspension is recorded on the job that caused
//     it, like a wait.

// gatedSlot holds back the release of a new connection's slot until the
// attempt's outcome has been fed to the site (settle): a connection refused
// with "slow down" must suspend the site before its slot is free for
// another deliverer's next try.
type gatedSlot struct {
	lease   *shaping.Lease
	mu      sync.Mutex
	open    bool
	pending bool
}

func (g *gatedSlot) Release() {
	g.mu.Lock()
	if !g.open {
		g.pending = true
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.lease.Release()
}

// settle lets releases through, and makes one that came meanwhile.
func (g *gatedSlot) settle() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.open = true
	p := g.pending
	g.pending = false
	g.mu.Unlock()
	if p {
		g.lease.Release()
	}
}

// admit returns the ticket the job's attempt may use, with the gate of its
// new slot (nil for an idle session), or false and what becomes of the job
// (a wait, or parked).
func (s *Service) admit(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, site shaping.Site, log *slog.Logger) (*courier.Ticket, *gatedSlot, consume.Outcome, bool) {
	t, gate, o, ok := s.take(ctx, msg, job, site, log)
	if ok && gate != nil {
		// The site may have been suspended while the slot was taken (by the
		// attempt that had it): look again before connecting.
		if _, _, suspended := s.shaper.Suspended(site); suspended {
			gate.settle()
			t.Release()
			if t, gate, o, ok = s.take(ctx, msg, job, site, log); !ok {
				return nil, nil, o, false
			}
		}
	}
	if !ok {
		return nil, nil, o, false
	}
	// The site's message rate, counted last: a message counted is a
	// message sent.
	wait, err := s.shaper.Take(ctx, site)
	if err == nil && wait == 0 {
		return t, gate, consume.Outcome{}, true
	}
	gate.settle()
	s.courier.Unused(t)
	if err != nil {
		log.WarnContext(ctx, "cannot count the message against its site's rate; job returned to the queue", "site", site.Name, "err", err)
		return nil, nil, consume.RetryAfter(infraRetry), false
	}
	r := site.Rate()
	why := fmt.Sprintf("throttled by site %s: its rate of %d messages per %s is used up for now", site.Name, r.N, r.Per)
	return nil, nil, s.wait(ctx, job, site, "rate", "", why, wait, log), false
}

// unshaped is admit with shaping disabled: an idle session of the site,
// or a new connection that no slot covers.
func (s *Service) unshaped(site shaping.Site) *courier.Ticket {
	if t := s.courier.Idle(site.Name); t != nil {
		return t
	}
	return courier.NewTicket(site.Name, nil, site.Policy.MaxMessagesPerConnection)
}

// take is admit's decision.
func (s *Service) take(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, site shaping.Site, log *slog.Logger) (*courier.Ticket, *gatedSlot, consume.Outcome, bool) {
	if until, reason, ok := s.shaper.Suspended(site); ok {
		delay := min(time.Until(until), s.shaper.Config().MaxWait)
		// Spread the jobs of a long suspension over a second, so they do
		// not all come back in the same instant.
		delay += rand.N(time.Second)
		why := fmt.Sprintf("throttled by site %s: suspended until %s after %q", site.Name, until.UTC().Format(time.RFC3339), reason)
		if delay >= s.parkAfter && s.park(ctx, msg, job, time.Now().Add(delay), log) {
			// Parked like a retry: the queue shows the job deferred until
			// then, and `sluice queue retry` finds it.
			s.throttled(ctx, job, site, "parked", strconv.FormatInt(until.Unix(), 10), why, delay, log)
			// Should the ack be lost, the job comes back after AckWait and
			// finds its schedule: the schedule's copy is then a second
			// offer of the same attempt, which the attempt's message ids
			// make harmless to record.
			return nil, nil, consume.Confirmed(10 * time.Second), false
		}
		return nil, nil, s.wait(ctx, job, site, "suspended", strconv.FormatInt(until.Unix(), 10), why, delay, log), false
	}
	if t := s.courier.Idle(site.Name); t != nil {
		return t, nil, consume.Outcome{}, true
	}
	lease, err := s.shaper.Acquire(ctx, site)
	switch {
	case err == nil:
		// A new connection: the site's connection rate decides whether
		// it may be opened now.
		if wait, err := s.shaper.TakeConnection(ctx, site); err != nil || wait > 0 {
			lease.Release()
			if err != nil {
				log.WarnContext(ctx, "cannot count the connection against its site's rate; job returned to the queue", "site", site.Name, "err", err)
				return nil, nil, consume.RetryAfter(infraRetry), false
			}
			r := site.ConnectionRate()
			why := fmt.Sprintf("throttled by site %s: its rate of %d new connections per %s is used up for now", site.Name, r.N, r.Per)
			return nil, nil, s.wait(ctx, job, site, "connection_rate", "", why, wait, log), false
		}
		g := &gatedSlot{lease: lease}
		return courier.NewTicket(site.Name, g, site.Policy.MaxMessagesPerConnection), g, consume.Outcome{}, true
	case errors.Is(err, shaping.ErrBusy):
		// This deliverer's own connections to the site come back one by
		// one as their transactions end: wait a moment for one, at most one
		// waiting job per connection, rather than hand the job back.
		if held := s.shaper.HeldFor(site); held > 0 {
			t, freed := s.courier.AwaitIdle(ctx, site.Name, held, s.shaper.Config().BusyDelay)
			if t != nil {
				return t, nil, consume.Outcome{}, true
			}
			if freed {
				if lease, err := s.shaper.Acquire(ctx, site); err == nil {
					if wait, err := s.shaper.TakeConnection(ctx, site); err == nil && wait == 0 {
						g := &gatedSlot{lease: lease}
						return courier.NewTicket(site.Name, g, site.Policy.MaxMessagesPerConnection), g, consume.Outcome{}, true
					}
					lease.Release()
				}
			}
		}
		n := s.shaper.Limit(site)
		busy := s.shaper.Config().BusyDelay
		delay := busy + rand.N(busy)
		why := fmt.Sprintf("throttled by site %s: all %d connections the fleet may open to it are in use", site.Name, n)
		return nil, nil, s.wait(ctx, job, site, "busy", "", why, delay, log), false
	default:
		log.WarnContext(ctx, "cannot take a connection slot; job returned to the queue", "site", site.Name, "err", err)
		trace.SpanFromContext(ctx).SetAttributes(attribute.String("sluice.result", "returned"))
		return nil, nil, consume.RetryAfter(infraRetry), false
	}
}

// parkAfter is the shortest wait that parks a job on a message schedule
// instead of a delayed Nak.
const parkAfter = 15 * time.Second

// park moves a job of a suspended site out of the work queue until at: it
// stores the job as a one-shot message schedule on its schedule subject
// (where the scheduler keeps retries, so `sluice queue retry`, `hold` and
// `delete` find it the same way), firing into its class subject, and
// has it acknowledged. A delayed Nak would keep the job pending on the shared
// consumer, and enough of them (a suspended large provider) would fill its
// MaxAckPending and stop every other site's mail with it. It reports false,
// having changed nothing, when the schedule could not be stored.
func (s *Service) park(ctx context.Context, msg jetstream.Msg, job *sluicev1.Job, at time.Time, log *slog.Logger) bool {
	at = at.Truncate(time.Second).Add(time.Second) // schedules count whole seconds
	m := &nats.Msg{Subject: wire.ScheduleSubject(job.JobId), Header: nats.Header{}, Data: msg.Data()}
	for k, v := range msg.Headers() {
		if len(k) > 5 && k[:5] == "Nats-" {
			continue
		}
		m.Header[k] = v
	}
	n := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		n = md.NumDelivered
	}
	m.Header.Set(jetstream.MsgIDHeader, job.JobId+"/"+strconv.FormatUint(uint64(job.Attempt), 10)+"/throttled/"+strconv.FormatUint(n, 10))
	m.Header.Set(jetstream.ScheduleHeader, "@at "+at.UTC().Format(time.RFC3339))
	m.Header.Set(jetstream.ScheduleTargetHeader, wire.JobSubject(job.Priority, job.JobId))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := s.js.PublishMsg(pctx, m); err != nil {
		log.WarnContext(ctx, "cannot park a job of a suspended site; it waits in the queue", "err", err)
		return false
	}
	return true
}

// wait records why the job waits, and hands it back to JetStream for
// delay.
func (s *Service) wait(ctx context.Context, job *sluicev1.Job, site shaping.Site, kind, episode, why string, delay time.Duration, log *slog.Logger) consume.Outcome {
	s.throttled(ctx, job, site, kind, episode, why, delay, log)
	return consume.RetryAfter(delay)
}

// throttled records a wait on the job's trace, history and metrics.
func (s *Service) throttled(ctx context.Context, job *sluicev1.Job, site shaping.Site, kind, episode, why string, delay time.Duration, log *slog.Logger) {
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.String("sluice.result", "throttled"), attribute.String("sluice.site", site.Name))
	span.AddEvent("sluice.throttled", trace.WithAttributes(
		attribute.String("sluice.site", site.Name),
		attribute.String("sluice.throttle", kind),
		attribute.String("sluice.throttle.why", why),
		attribute.Int64("sluice.throttle.delay_ms", delay.Milliseconds())))
	s.m.throttled.Add(context.Background(), 1, metric.WithAttributes(attribute.String("why", kind)))
	s.m.siteThrottled.Add(context.Background(), 1, metric.WithAttributes(attribute.String("site", s.m.sites.label(site)), attribute.String("why", kind)))
	state := ""
	if kind == "parked" {
		state = admin.StateDeferred
	}
	s.recordThrottled(ctx, job, kind+"/"+episode, state, why, time.Now().Add(delay), log)
	log.DebugContext(ctx, "job waits for its site", "site", site.Name, "why", kind, "delay_ms", delay.Milliseconds())
}

// adapt feeds an attempt's outcome to the site's concurrency and marks
// replies that asked us to slow down as REASON_THROTTLED.
func (s *Service) adapt(ctx context.Context, job *sluicev1.Job, site shaping.Site, results []*sluicev1.RecipientResult, log *slog.Logger) {
	var first *sluicev1.RecipientResult
	for _, r := range results {
		if r.Outcome == sluicev1.Outcome_OUTCOME_DELIVERED {
			s.shaper.Delivered(ctx, site)
			return
		}
		if first == nil && r.Outcome == sluicev1.Outcome_OUTCOME_TEMPORARY {
			first = r
		}
	}
	if first == nil {
		return
	}
	reply := fmt.Sprintf("%d %s %s", first.Code, first.EnhancedCode, first.Text)
	var c *shaping.Change
	switch {
	case site.SlowDown(int(first.Code), first.EnhancedCode, first.Text):
		for _, r := range results {
			if r.Outcome == sluicev1.Outcome_OUTCOME_TEMPORARY && site.SlowDown(int(r.Code), r.EnhancedCode, r.Text) {
				r.Reason = sluicev1.Reason_REASON_THROTTLED
			}
		}
		c = s.shaper.SlowDown(ctx, site, reply)
	case first.Reason == sluicev1.Reason_REASON_CONNECT || first.Reason == sluicev1.Reason_REASON_TIMEOUT && first.RemoteHost == "":
		c = s.shaper.ConnectFailed(ctx, site, reply)
	}
	if c == nil {
		return
	}
	label := s.m.sites.label(site) // its concurrency changed: name it for the limit gauge
	if !c.Until.IsZero() {
		s.m.siteSuspensions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("site", label), attribute.String("by", "reply")))
	}
	why := "throttled by site " + c.String()
	trace.SpanFromContext(ctx).AddEvent("sluice.site_slowed", trace.WithAttributes(
		attribute.String("sluice.site", c.Site),
		attribute.Int("sluice.site.concurrency_from", c.From),
		attribute.Int("sluice.site.concurrency_to", c.To),
		attribute.String("sluice.site.suspended_until", formatTime(c.Until)),
		attribute.String("sluice.smtp.reply", c.Reason)))
	log.WarnContext(ctx, "site slowed down", "site", c.Site, "from", c.From, "to", c.To, "until", formatTime(c.Until), "reply", c.Reason)
	s.recordThrottled(ctx, job, "slowed/"+strconv.Itoa(c.To), "", why, c.Until, log)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// recordThrottled sends a "throttled" event without waiting for it: the
// history is an explanation, and a lost one costs no mail. The message id
// makes it once per attempt and episode (a suspension, "busy").
func (s *Service) recordThrottled(ctx context.Context, job *sluicev1.Job, episode, state, why string, next time.Time, log *slog.Logger) {
	ev := &admin.QueueEvent{
		Type: wire.EventThrottled, Time: time.Now().UTC(), QueueID: job.QueueId, JobID: job.JobId, State: state,
		Attempt: job.Attempt, Priority: wire.ClassName(job.Priority), Instance: s.cfg.Instance,
		Reason: "throttled", Note: why, NextAttempt: next.UTC(),
	}
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().IsValid() {
		ev.TraceID = sc.TraceID().String()
	}
	data := admin.MarshalQueueEvent(ev)
	m := nats.NewMsg(wire.EventSubject(job.QueueId, wire.EventThrottled, ev.Time))
	m.Data = data
	m.Header.Set(wire.HeaderJobID, job.JobId)
	telemetry.Inject(ctx, m.Header)
	_, err := s.js.PublishMsgAsync(m, jetstream.WithExpectStream(wire.StreamEvents),
		jetstream.WithMsgID(job.JobId+"/"+strconv.FormatUint(uint64(job.Attempt), 10)+"/ev/throttled/"+episode))
	if err != nil {
		log.DebugContext(ctx, "throttled event not sent", "err", err)
	}
}
