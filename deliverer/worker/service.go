// Package worker is the deliverer service: it takes ready jobs from the
// SLUICE_JOBS stream, makes one delivery attempt per job (package courier),
// publishes the attempt's Result to SLUICE_RESULTS and only then
// acknowledges the job.
//
// # Consumers and classes
//
// Every priority class has one durable pull consumer (wire.DelivererConsumer)
// filtered on its subjects, shared by all deliverer processes: JetStream hands
// each job to exactly one of them, and adding processes adds throughput.
//
// One dispatcher goroutine per Service fetches and a fixed pool of delivery
// goroutines (Settings.Concurrency) work. The pool lives as long as the
// service: a goroutine per job would start on a small stack and grow it
// through the SMTP, protobuf and tracing calls of every job, which cost the
// deliverer a tenth of its CPU. Whenever slots are free the
// dispatcher picks a class by smooth weighted round robin (see cycle;
// default weights high 8, normal 3, bulk 1) and asks that consumer for up to
// as many jobs as there are free slots (at most maxBatch) without waiting
// (FetchNoWait). An empty class hands its turn to the next class of the
// cycle and gets a long-poll (Fetch with idleWait) in a free slot; while it
// is pending the class is left out of the cycle, because the poll takes its
// next job the moment it arrives. A class whose last fetched job said
// nothing was pending behind it (the job's NumPending metadata) goes straight
// to its long-poll, without the FetchNoWait that would only come back empty:
// under light load that saves two round trips per job. When every class is
// empty the dispatcher sleeps until a poll ends, so it waits on the server
// instead of spinning.
// High mail is therefore served first while bulk mail still gets one turn in
// twelve under full load, and an empty class costs one request per idleWait
// rather than one per job of the others.
//
// # Operators
//
// Before an attempt the service looks up the job's operator mark (see
// steer): a held job is parked and a deleted one dropped instead of
// attempted. Then it sends an "attempt" event to SLUICE_EVENTS and attempts
// while JetStream stores it, so the job's history shows every attempt, even
// one cut short by a crash; the event's PubAck is awaited before the result
// is published.
//
// # Acknowledgement
//
// A delivered, deferred or failed attempt is acknowledged only after its
// Result is stored (PubAck). Retrying is the scheduler's business (message
// schedules); this service never holds a job back for later. Jobs are Naked
// with a short delay only for infrastructure trouble: the Result could not be
// stored, the body could not be read from JetStream, or the process is
// stopping. Undecodable jobs are terminated. A panic while handling a job
// becomes a temporary REASON_INTERNAL result.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/deliverer/courier"
	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/deliverer/smtpclient"
	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlsrpt"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/marks"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

const (
	// maxBatch is the most jobs one fetch asks for: small, so a class
	// cannot grab many slots in one turn.
	maxBatch = 8
	// idleWait is how long an idle dispatcher's long-poll waits.
	idleWait = 500 * time.Millisecond
	// infraRetry is the Nak delay after trouble with our own infrastructure.
	infraRetry = 2 * time.Second
	// movedRetry is the Nak delay of a job copy an operator moved to
	// another class (see claimAttempt): the scheduler removes it within
	// milliseconds; it comes back only if the move failed half way.
	movedRetry = 30 * time.Second
	// maxAckPending lets many deliverers hold many jobs at once.
	maxAckPending = 20000
	// fetchBackoffMax bounds the pause between fetches while JetStream
	// does not answer them (no responders during an election, a node
	// down): from 100 ms, doubling.
	fetchBackoffMax = 2 * time.Second
	// resultBudget is how long a stored attempt's result is tried again
	// (with the same message id, so JetStream stores it once) before the
	// job is given back: giving it back delivers the mail a second time,
	// and an election takes seconds. In-progress acks hold the job meanwhile.
	resultBudget = time.Minute
)

// Deps are the service's collaborators.
type Deps struct {
	JS     jetstream.JetStream
	Tracer trace.Tracer
	Meter  metric.Meter
	Logger *slog.Logger
	// Shuffle orders MX hosts of equal preference; nil is random.
	Shuffle func(n int, swap func(i, j int))
	// TLSPolicy carries what the configuration cannot: tests' roots and
	// the dial of MTA-STS policy fetches (see tls.go).
	TLSPolicy tlspolicy.Options
}

// Service is a running deliverer.
type Service struct {
	cfg     Settings
	js      jetstream.JetStream
	tracer  trace.Tracer
	log     *slog.Logger
	courier *courier.Courier
	m       instruments
	// stuck turns a result's message id refused as "in process" for too
	// long into a leader change of SLUICE_RESULTS (streams.InProcess).
	stuck *streams.InProcess

	// consumers are the classes' consumers, in wire.Classes order; one
	// found lost is provisioned again and replaced (reopenIfLost).
	consMu    sync.RWMutex
	consumers []jetstream.Consumer
	msgs      jetstream.Stream
	bodies    jetstream.ObjectStore
	// bodyStream is the bodies bucket's stream, read chunk by chunk (see
	// streams.ObjectReader).
	bodyStream jetstream.Stream
	// marks are operators' hold and delete marks (see steer).
	marks *marks.Cache
	// steered counts jobs not attempted because of an operator's mark;
	// action: hold, delete.
	steered metric.Int64Counter
	// shaper holds this deliverer's connection slots and its view of every
	// site's limits (see shape.go).
	shaper *shaping.Shaper
	// parkAfter is parkAfter; tests shorten it.
	parkAfter time.Duration
	meter     metric.Meter
	// siteMetrics observes the shaper (see registerSiteMetrics).
	siteMetrics metric.Registration
	// tlsPolicy decides each destination's TLS (see tls.go).
	tlsPolicy *tlspolicy.Engine
	// tlsReports counts TLS sessions for TLS-RPT (see tls.go).
	tlsReports *tlsrpt.Recorder
	// stopTLSFlush ends the recorder's flushes, the last of which has
	// happened when tlsFlushed is closed.
	stopTLSFlush context.CancelFunc
	tlsFlushed   chan struct{}

	slots      chan struct{}
	work       chan fetched
	stopFetch  context.CancelFunc
	workCtx    context.Context
	cancelWork context.CancelFunc
	dispatcher sync.WaitGroup
	polls      sync.WaitGroup
	polling    [3]atomic.Bool
	// drained[i]: class i's last fetched job had nothing pending behind it.
	drained  [3]atomic.Bool
	pollDone chan struct{}
	// fetchFail paces fetches while they fail (see collect).
	fetchFail backoff
	jobs      sync.WaitGroup
	inFlight  atomic.Int64
	closeOnce sync.Once
	started   atomic.Bool

	// runner runs each job as every consumer of every service runs its
	// inputs, with the same metrics (sluice_deliverer_inputs_settled_total,
	// sluice_deliverer_panics_total).
	runner consume.Runner
	// strikes counts unfinished deliveries per job attempt (poison.go).
	strikes jetstream.KeyValue
	// live are the job attempts running here, and liveSub answers other
	// deliverers' questions about them (live.go).
	live    liveJobs
	liveSub *nats.Subscription
	// beforeAttempt, when set (by tests), runs just before each attempt.
	beforeAttempt func(*sluicev1.Job)
	// claimRenew is how often a running attempt renews its claim
	// (renewClaim): a quarter of wire.ClaimTTL; tests shorten it.
	claimRenew time.Duration
	// noProgress, when set (by tests), sends no in-progress acks: a job's
	// AckWait runs out while its delivery runs, as when they are lost.
	noProgress atomic.Bool
}

// New builds a service. s.DNSServer must be set (main reads resolv.conf).
func New(s Settings, d Deps) (*Service, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.DNSServer == "" {
		return nil, errors.New("deliverer.dns_server: empty (main fills it from /etc/resolv.conf)")
	}
	if d.JS == nil || d.Tracer == nil || d.Meter == nil || d.Logger == nil {
		return nil, errors.New("worker: JS, Tracer, Meter and Logger are required")
	}
	res, err := mx.New(mx.Config{Server: s.DNSServer, Timeout: s.DNSTimeout, Port: s.SMTPPort, Routes: s.Routes, Shuffle: d.Shuffle, Meter: d.Meter})
	if err != nil {
		return nil, err
	}
	var source netip.Addr
	if s.SourceAddress != "" {
		source, _ = netip.ParseAddr(s.SourceAddress) // validated
	}
	dialer, err := smtpclient.New(smtpclient.Config{Hostname: s.Hostname, ConnectTimeout: s.ConnectTimeout,
		CommandTimeout: s.CommandTimeout, DataTimeout: s.DataTimeout, Meter: d.Meter, Source: source})
	if err != nil {
		return nil, err
	}
	cm, err := consume.NewMetrics(d.Meter, "deliverer")
	if err != nil {
		return nil, err
	}
	m, err := newInstruments(d.Meter)
	if err != nil {
		return nil, err
	}
	signer, err := s.DKIMSigner()
	if err != nil {
		return nil, err
	}
	if s.Instance == "" {
		s.Instance = s.Hostname
	}
	steered, err := d.Meter.Int64Counter("sluice_deliverer_jobs_steered_total",
		metric.WithDescription("Jobs not attempted because an operator held, deleted or reprioritised them, or because another delivery of them still runs or has finished (still_running, finished), by action."))
	if err != nil {
		return nil, err
	}
	tlsPolicy, err := newTLSPolicy(s, d.TLSPolicy)
	if err != nil {
		return nil, err
	}
	tlsReports := tlsrpt.NewRecorder(d.TLSPolicy.Now)
	log := d.Logger.With("instance", s.Instance)
	return &Service{
		steered: steered,
		cfg:     s,
		js:      d.JS,
		tracer:  d.Tracer,
		log:     log,
		stuck:   streams.NewInProcess(d.JS, log),
		courier: courier.New(res, dialer, d.Tracer, courier.WithSigner(signer),
			courier.WithConnectionReuse(courier.CacheConfig{TTL: s.ConnectionCacheTime, MaxUses: s.ConnectionReuseLimit, MaxIdle: s.Concurrency}),
			courier.WithTLSPolicy(tlsPolicy, d.Meter), courier.WithTLSReports(tlsReports)),
		tlsPolicy:  tlsPolicy,
		tlsReports: tlsReports,
		m:          m,
		runner:     consume.Runner{Input: "jobs", KeepAlive: s.AckWait / 3, RetryDelay: infraRetry, Log: log, Metrics: cm},
		parkAfter:  parkAfter,
		claimRenew: claimRenew,
		meter:      d.Meter,
		slots:      make(chan struct{}, s.Concurrency),
		pollDone:   make(chan struct{}, 1),
	}, nil
}

// ConsumerConfig is the shared durable consumer of one class.
func ConsumerConfig(class sluicev1.Priority, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       wire.DelivererConsumer(class),
		Description:   "Sluice deliverers: " + wire.ClassName(class) + " jobs",
		FilterSubject: wire.JobFilter(class),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: maxAckPending,
		// A job is never dropped by redelivery count: the scheduler's
		// expiry is what ends a message's life.
		MaxDeliver: -1,
	}
}

// Start creates or updates the consumers and starts fetching. The streams
// must exist (streams.Provision).
func (s *Service) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("worker: started twice")
	}
	for _, c := range wire.Classes {
		cons, err := s.js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, ConsumerConfig(c, s.cfg.AckWait))
		if err != nil {
			return fmt.Errorf("deliverer consumer %s: %w", wire.DelivererConsumer(c), err)
		}
		s.consumers = append(s.consumers, cons)
	}
	var err error
	if s.msgs, err = s.js.Stream(ctx, wire.StreamMessages); err != nil {
		return fmt.Errorf("stream %s: %w", wire.StreamMessages, err)
	}
	if s.bodies, err = s.js.ObjectStore(ctx, wire.BucketBodies); err != nil {
		return fmt.Errorf("object store %s: %w", wire.BucketBodies, err)
	}
	if s.bodyStream, err = s.js.Stream(ctx, streams.ObjectStream(wire.BucketBodies)); err != nil {
		return fmt.Errorf("stream of object store %s: %w", wire.BucketBodies, err)
	}
	held, err := s.js.KeyValue(ctx, wire.BucketHeld)
	if err != nil {
		return fmt.Errorf("key-value %s: %w", wire.BucketHeld, err)
	}
	if s.marks, err = marks.Watch(ctx, s.js, held, s.log); err != nil {
		return err
	}
	if s.strikes, err = s.js.KeyValue(ctx, wire.BucketStrikes); err != nil {
		s.marks.Stop()
		return fmt.Errorf("key-value %s: %w", wire.BucketStrikes, err)
	}
	if s.liveSub, err = s.serveLive(); err != nil {
		s.marks.Stop()
		return fmt.Errorf("subscribe %s: %w", liveSubject, err)
	}
	shapingKV, err := s.js.KeyValue(ctx, wire.BucketShaping)
	if err != nil {
		s.marks.Stop()
		return fmt.Errorf("key-value %s: %w", wire.BucketShaping, err)
	}
	if s.shaper, err = shaping.New(s.js, shapingKV, s.cfg.Shaping, s.cfg.Instance, s.log); err == nil {
		err = s.shaper.Start(ctx)
	}
	if err == nil {
		s.siteMetrics, err = registerSiteMetrics(s.meter, s.shaper, s.m.sites)
	}
	if err == nil {
		err = s.startTLSPolicy(ctx)
	}
	if err != nil {
		if s.shaper != nil {
			s.shaper.Stop()
		}
		s.marks.Stop()
		return err
	}
	// TLS-RPT counts are written every tlsrpt.FlushInterval and at Close.
	flushCtx, stopFlush := context.WithCancel(context.Background())
	s.stopTLSFlush, s.tlsFlushed = stopFlush, make(chan struct{})
	go func() {
		defer close(s.tlsFlushed)
		s.tlsReports.Run(flushCtx, tlsrpt.FlushInterval, s.log)
	}()
	s.workCtx, s.cancelWork = context.WithCancel(context.Background())
	s.work = make(chan fetched)
	for range s.cfg.Concurrency {
		go s.worker()
	}
	fetchCtx, stop := context.WithCancel(context.Background())
	s.stopFetch = stop
	s.dispatcher.Add(1)
	go s.dispatch(fetchCtx)
	return nil
}

// Close stops fetching, lets running deliveries finish until ctx ends, then
// interrupts the rest (their jobs go back to the queue) and returns. It is
// safe to call twice.
func (s *Service) Close(ctx context.Context) error {
	if !s.started.Load() {
		return nil
	}
	if s.stopFetch == nil { // Start failed before fetching began
		return nil
	}
	var err error
	s.closeOnce.Do(func() {
		s.stopFetch()
		s.dispatcher.Wait()
		s.polls.Wait()
		done := make(chan struct{})
		go func() { s.jobs.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("deliverer: %d deliveries interrupted at shutdown", s.inFlight.Load())
			s.cancelWork()
			<-done
		}
		close(s.work)
		s.cancelWork()
		// Closing the idle sessions releases their connection slots, before
		// the shaper stops renewing them.
		s.courier.Close()
		s.tlsPolicy.Close()
		// Every session has ended: the last counts are written.
		s.stopTLSFlush()
		<-s.tlsFlushed
		_ = s.siteMetrics.Unregister()
		s.shaper.Stop()
		if s.marks != nil {
			s.marks.Stop()
		}
		_ = s.liveSub.Unsubscribe()
	})
	return err
}

// ReloadShaping puts a new deliverer.shaping section in force for the jobs
// that come next (see shaping.Shaper.SetConfig). The service must be
// started.
func (s *Service) ReloadShaping(cfg shaping.Config) error {
	if s.shaper == nil {
		return errors.New("worker: not started")
	}
	return s.shaper.SetConfig(cfg)
}

// InFlight is the number of jobs being worked on.
func (s *Service) InFlight() int { return int(s.inFlight.Load()) }

type fetched struct {
	msg   jetstream.Msg
	class int
}

// dispatch is the fetch loop described in the package documentation.
func (s *Service) dispatch(ctx context.Context) {
	defer s.dispatcher.Done()
	cyc := newCycle(s.cfg.Weights.High, s.cfg.Weights.Normal, s.cfg.Weights.Bulk)
	for {
		// Wait for one free slot, then take what else is free.
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		free := 1
		for free < maxBatch {
			select {
			case s.slots <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		got, empty := s.fetchRound(ctx, cyc, free)
		for _, f := range got {
			s.start(f)
		}
		used := len(got)
		used += s.idle(ctx, empty, free-used)
		for i := used; i < free; i++ {
			<-s.slots
		}
		if len(got) == 0 && used == 0 {
			// Every class is empty and already long-polled: sleep until
			// a poll ends.
			select {
			case <-s.pollDone:
			case <-ctx.Done():
				return
			}
		}
	}
}

// fetchRound returns up to free jobs from the first class, in cycle order,
// that has any, and the classes it found empty on the way, in the order it
// tried them. A class with a long-poll pending is skipped: it was empty when
// the poll started, and the poll takes its next job the moment it arrives,
// so asking again would only cost a round trip per job for nothing. A
// drained class is counted empty without asking (see Service).
func (s *Service) fetchRound(ctx context.Context, cyc *cycle, free int) ([]fetched, []int) {
	var empty [3]bool
	var order []int
	for {
		i := cyc.next(func(i int) bool { return empty[i] || s.polling[i].Load() })
		if i < 0 || ctx.Err() != nil {
			return nil, order
		}
		if !s.drained[i].Load() {
			b, err := s.consumer(i).FetchNoWait(free)
			if got := s.collect(b, err, i); len(got) > 0 {
				return got, order
			}
		}
		empty[i] = true
		order = append(order, i)
	}
}

// idle starts a long-poll on each empty class that has none yet, one free
// slot each, and returns how many slots it gave to polls. A poll that gets
// a job starts it in its slot; one that times out frees the slot. There is
// at most one poll per class, so an idle class costs one request every
// idleWait, and its first job starts as soon as it arrives.
func (s *Service) idle(ctx context.Context, empty []int, free int) int {
	used := 0
	for _, i := range empty {
		if used >= free || ctx.Err() != nil {
			break
		}
		if !s.polling[i].CompareAndSwap(false, true) {
			continue
		}
		used++
		s.polls.Add(1)
		go s.poll(i)
	}
	return used
}

func (s *Service) poll(class int) {
	defer s.polls.Done()
	b, err := s.consumer(class).Fetch(1, jetstream.FetchMaxWait(idleWait))
	got := s.collect(b, err, class)
	s.polling[class].Store(false)
	if len(got) > 0 {
		s.start(got[0])
		for _, f := range got[1:] { // Fetch(1) returns at most one
			_ = f.msg.Nak()
		}
	} else {
		<-s.slots
	}
	select {
	case s.pollDone <- struct{}{}:
	default:
	}
}

func (s *Service) collect(b jetstream.MessageBatch, err error, class int) []fetched {
	var out []fetched
	if err == nil {
		for m := range b.Messages() {
			out = append(out, fetched{msg: m, class: class})
		}
		if n := len(out); n > 0 {
			md, err := out[n-1].msg.Metadata()
			s.drained[class].Store(err == nil && md.NumPending == 0)
		}
		if err = b.Error(); errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			err = nil
		}
	}
	if err != nil && len(out) == 0 {
		// JetStream is unreachable or electing (no responders, timeouts):
		// pause, longer each time, and log the first failure and then one
		// line every 10 s.
		pause, failures, report := s.fetchFail.fail(time.Now())
		if report {
			s.log.Warn("fetch jobs", "class", wire.ClassName(wire.Classes[class]), "err", err, "failures", failures, "pause", pause)
		}
		s.reopenIfLost(class)
		time.Sleep(pause)
		return nil
	}
	if n := s.fetchFail.reset(); n > 0 {
		s.log.Info("fetching jobs again", "failures", n)
	}
	return out
}

// consumer is class's consumer.
func (s *Service) consumer(class int) jetstream.Consumer {
	s.consMu.RLock()
	defer s.consMu.RUnlock()
	return s.consumers[class]
}

// reopenIfLost provisions class's consumer again when a fetch failed
// because it no longer exists: deleted by an operator, or lost with its
// replicas. A deliverer goes on without a restart, as the services on
// package consume do; the jobs it held were handed back when the consumer
// went.
func (s *Service) reopenIfLost(class int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.consumer(class).Info(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return
	}
	p := wire.Classes[class]
	cons, err := s.js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, ConsumerConfig(p, s.cfg.AckWait))
	if err != nil {
		s.log.Warn("consumer lost; cannot provision it again yet", "consumer", wire.DelivererConsumer(p), "err", err)
		return
	}
	s.consMu.Lock()
	s.consumers[class] = cons
	s.consMu.Unlock()
	s.drained[class].Store(false)
	s.log.Error("consumer lost; provisioned again", "consumer", wire.DelivererConsumer(p))
}

// start hands one job to the pool; its slot is already taken, so a worker
// is free or about to be.
func (s *Service) start(f fetched) {
	s.jobs.Add(1)
	s.inFlight.Add(1)
	s.m.inFlight.Add(context.Background(), 1)
	s.work <- f
}

// worker runs jobs until Close.
func (s *Service) worker() {
	for f := range s.work {
		s.run(f)
	}
}

// run works on one job through the consumer runner every service uses
// (in-progress acknowledgements, panics recovered and counted, the
// handler's outcome settled) and then gives back its slot. A panic is a
// retry here, never poison: a job that panics every time ends as poison
// by its strikes (poison.go), as a failure the scheduler bounces.
func (s *Service) run(f fetched) {
	defer func() {
		s.m.inFlight.Add(context.Background(), -1)
		s.inFlight.Add(-1)
		<-s.slots
		s.jobs.Done()
	}()
	r := s.runner
	if s.noProgress.Load() {
		r.KeepAlive = time.Hour
	}
	var key string
	o, err := r.Run(s.workCtx, f.msg, func(ctx context.Context, msg jetstream.Msg) consume.Outcome {
		return s.handle(ctx, msg, &key)
	})
	if key != "" {
		// Still "running" to other deliverers until the outcome is
		// settled; "finished" for a while if its ack was not confirmed.
		s.live.end(key, o.Confirms() && err != nil)
	}
}

// handle works on one job and says what becomes of it; key is set to the
// job attempt's key once it counts as running here (live.go).
func (s *Service) handle(ctx context.Context, msg jetstream.Msg, key *string) consume.Outcome {
	job := &sluicev1.Job{}
	if err := proto.Unmarshal(msg.Data(), job); err != nil || job.JobId == "" || len(job.Recipients) == 0 {
		why := "invalid"
		if err != nil {
			why = "undecodable"
		}
		s.log.Error("terminating bad job", "subject", msg.Subject(), "why", why, "err", err)
		s.m.terminated.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", why)))
		return consume.Poison(why + " job")
	}
	ctx = telemetry.Extract(ctx, msg.Headers())
	s.queueWaitSpan(ctx, job)

	started := time.Now()
	ctx, span := s.tracer.Start(ctx, "deliverer.attempt", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("sluice.queue_id", job.QueueId),
			attribute.String("sluice.job_id", job.JobId),
			attribute.Int("sluice.attempt", int(job.Attempt)),
			attribute.String("sluice.priority", wire.ClassName(job.Priority)),
			attribute.String("sluice.destination_domain", job.Domain),
			attribute.Int("sluice.recipients", len(job.Recipients)),
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject()),
			attribute.String("messaging.consumer.group.name", wire.DelivererConsumer(job.Priority)),
		))
	defer span.End()
	log := s.log.With("queue_id", job.QueueId, "job_id", job.JobId, "attempt", job.Attempt, "domain", job.Domain)

	// An operator may have held or deleted the job since it was queued.
	if o, settled := s.steer(ctx, msg, job, log); settled {
		return o
	}
	// Handed out again: not while another delivery of it runs (live.go).
	if o, stop := s.checkLive(ctx, msg, job, log); stop {
		return o
	}
	*key = liveKey(job)
	s.live.start(*key)
	// Route to a site, and take a connection slot of it or wait.
	route, routeErr := s.courier.Route(ctx, job.Domain)
	var site shaping.Site
	var ticket *courier.Ticket
	var gate *gatedSlot
	if routeErr == nil {
		site = s.shaper.Rules().Site(job.Domain, route.Site)
		if s.shaper.Config().PerSource {
			site = site.From(s.cfg.SourceAddress)
		}
		span.SetAttributes(attribute.String("sluice.site", site.Name))
		if s.shaper.Config().Disabled {
			ticket = s.unshaped(site)
		} else {
			var o consume.Outcome
			var ok bool
			if ticket, gate, o, ok = s.admit(ctx, msg, job, site, log); !ok {
				return o
			}
		}
	}
	// Whatever happens next, the slot's release is let through.
	defer gate.settle()
	// A job handed out again may be poison (see poison.go).
	o, stop, struck := s.checkStrikes(ctx, msg, job, log)
	if stop {
		if ticket != nil {
			ticket.Release()
		}
		return o
	}
	if s.beforeAttempt != nil {
		func() {
			defer func() {
				if p := recover(); p != nil {
					if ticket != nil {
						ticket.Release()
					}
					panic(p)
				}
			}()
			s.beforeAttempt(job)
		}()
	}
	// The attempt is recorded, and the job copy claimed, before it is made.
	o, renew, stop := s.claimAttempt(ctx, msg, job, struck, log)
	if stop {
		if ticket != nil {
			ticket.Release()
		}
		return o
	}
	stopRenew := renew()
	results, headers, infraErr := s.attempt(ctx, job, route, routeErr, ticket, log)
	stopRenew()
	if infraErr != nil {
		if struck {
			s.unstrike(ctx, job, log) // the body could not be read: nothing was sent
		}
		span.SetStatus(codes.Error, infraErr.Error())
		log.WarnContext(ctx, "job returned to the queue", "err", infraErr)
		return consume.RetryAfter(infraRetry)
	}
	if ctx.Err() != nil && !anyDelivered(results) {
		// Interrupted by shutdown: another deliverer retries at once
		// instead of the scheduler after a backoff.
		span.SetStatus(codes.Error, "interrupted by shutdown")
		return consume.RetryAfter(0)
	}
	if routeErr == nil && !s.shaper.Config().Disabled {
		s.adapt(ctx, job, site, results, log)
	}
	gate.settle()
	finished := time.Now()
	// The result names the job; the body copy has served its purpose and
	// is not sent back (retries read SLUICE_MSGS).
	job.Body = nil
	res := &sluicev1.Result{
		Schema:           wire.SchemaVersion,
		Job:              job,
		Recipients:       results,
		StartedUnixNano:  started.UnixNano(),
		FinishedUnixNano: finished.UnixNano(),
		Deliverer:        s.cfg.Instance,
	}
	if !allDelivered(results) {
		res.OriginalHeaders = headers
	}
	result, reason := summarize(results)
	span.SetAttributes(attribute.String("sluice.result", result), attribute.String("sluice.reason", reason))
	if result != "delivered" {
		span.SetStatus(codes.Error, result+": "+reason)
	}
	if err := s.publish(ctx, job, res); err != nil {
		s.m.publishFailures.Add(context.Background(), 1)
		log.ErrorContext(ctx, "cannot store result; job returned to the queue", "err", err)
		return consume.RetryAfter(infraRetry)
	}
	s.m.attempts.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result), attribute.String("reason", reason)))
	s.m.duration.Record(context.Background(), finished.Sub(started).Seconds(), metric.WithAttributes(attribute.String("result", result)))
	lv := slog.LevelInfo
	if result != "delivered" {
		lv = slog.LevelWarn
	}
	attrs := []any{"result", result, "reason", reason, "duration_ms", finished.Sub(started).Milliseconds()}
	for _, r := range results {
		if r.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			attrs = append(attrs, "first_error", fmt.Sprintf("%d %s %s", r.Code, r.EnhancedCode, r.Text), "remote_host", r.RemoteHost)
			break
		}
		attrs = append(attrs, "remote_host", r.RemoteHost)
		break
	}
	log.Log(ctx, lv, "attempt", attrs...)
	// A confirmed ack, tried again until JetStream confirms it: an ack
	// lost while the stream's leader changes (a node restarting) makes
	// JetStream hand the job out again after AckWait, and the mail is
	// delivered twice. It costs a round trip per job; a rolling restart
	// of three nodes produced over 1% duplicates with a plain ack. Should
	// it not be confirmed, the job handed out again is acknowledged by
	// whoever gets it, once this deliverer says it finished (live.go).
	return s.confirmed()
}

// confirmed is the outcome of a job whose result is stored: an ack
// confirmed by JetStream, asked again for up to half of AckWait (the job
// is handed out again after AckWait, so later tries could only confirm a
// duplicate).
func (s *Service) confirmed() consume.Outcome { return consume.Confirmed(s.cfg.AckWait / 2) }

// attempt reads the body and runs the courier on the route with the ticket
// (or reports the route's error). A non-nil error means our own
// infrastructure failed and the job should be retried soon.
func (s *Service) attempt(ctx context.Context, job *sluicev1.Job, route mx.Route, routeErr error, ticket *courier.Ticket, log *slog.Logger) (res []*sluicev1.RecipientResult, headers []byte, infra error) {
	handed := false
	defer func() {
		if !handed && ticket != nil {
			ticket.Release()
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			log.ErrorContext(ctx, "panic in delivery", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			res = failAll(job, status.Temporary(sluicev1.Reason_REASON_INTERNAL, 451, "4.3.0", "internal error in the deliverer"))
			headers, infra = nil, nil
		}
	}()
	body, closeBody, err := s.openBody(ctx, job)
	if err != nil {
		var se *status.Error
		if errors.As(err, &se) {
			return failAll(job, se), nil, nil
		}
		return nil, nil, err
	}
	defer closeBody()
	tap := newHeaderTap(body)
	if routeErr != nil {
		res = courier.RouteFailed(job, routeErr)
	} else {
		handed = true
		res = s.courier.DeliverVia(ctx, job, route, ticket, tap)
	}
	if !allDelivered(res) {
		headers = tap.Headers()
	}
	return res, headers, nil
}

// openBody returns the message content: the job's own copy when it has one
// (a first attempt of a small message), else inline in the Message at
// job.msg_seq, or streamed from the object store. A body that is gone is a
// permanent failure (*status.Error); other errors are infrastructure trouble.
// bodyReadTime bounds the read of a body object of size bytes as it is
// sent to a destination: 5 minutes, plus a minute per 4 MiB (a destination
// that takes 64 KiB/s), as generous as the SMTP timeouts that bound each
// step of the transfer.
func bodyReadTime(size int64) time.Duration {
	return 5*time.Minute + time.Duration(size/(4<<20))*time.Minute
}

func (s *Service) openBody(ctx context.Context, job *sluicev1.Job) (io.Reader, func(), error) {
	if len(job.Body) > 0 {
		return bytesReader(job.Body), func() {}, nil
	}
	missing := func(what string) error {
		return status.Permanent(sluicev1.Reason_REASON_INTERNAL, 554, "5.3.0",
			fmt.Sprintf("message content is no longer in the queue (%s); it was deleted before delivery", what))
	}
	if job.BodyObject != "" {
		// The object's metadata is asked under the usual bound, so that a
		// lost request (a leader election) fails in seconds, not minutes.
		// The content is then read a chunk at a time (not with the object
		// store's Get: see streams.ObjectReader), each chunk's request
		// bounded on its own, the whole read by the time a transfer to a
		// slow destination may take.
		ictx, icancel := context.WithTimeout(ctx, streams.RequestTimeout)
		info, err := s.bodies.GetInfo(ictx, job.BodyObject)
		icancel()
		if err == nil {
			gctx, cancel := context.WithTimeout(ctx, bodyReadTime(job.BodySize))
			return streams.NewObjectReader(gctx, s.js, s.bodyStream, info, streams.RequestTimeout), cancel, nil
		}
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			// A replica that has not caught up may say so: only the
			// stream's leader may declare the content lost.
			gone, gerr := streams.ObjectGone(ctx, s.js, wire.BucketBodies, job.BodyObject)
			if gerr == nil && gone {
				return nil, nil, missing("object " + job.BodyObject)
			}
			if gerr == nil {
				gerr = errors.New("the stream's leader still holds it")
			}
			return nil, nil, fmt.Errorf("read body object %s: a replica says it is missing: %w", job.BodyObject, gerr)
		}
		return nil, nil, fmt.Errorf("read body object %s: %w", job.BodyObject, err)
	}
	raw, err := s.msgs.GetMsg(ctx, job.MsgSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// As above: a direct get's miss is confirmed by the leader.
		raw, err = streams.LeaderMsg(ctx, s.js, wire.StreamMessages, job.MsgSeq, "")
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil, missing("sequence " + strconv.FormatUint(job.MsgSeq, 10))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read message %d: %w", job.MsgSeq, err)
	}
	m := &sluicev1.Message{}
	if err := proto.Unmarshal(raw.Data, m); err != nil || m.QueueId != job.QueueId {
		// The sequence holds something else: our message is gone.
		return nil, nil, missing("sequence " + strconv.FormatUint(job.MsgSeq, 10) + " holds another message")
	}
	if m.BodyObject != "" {
		job.BodyObject = m.BodyObject
		return s.openBody(ctx, job)
	}
	return bytesReader(m.Body), func() {}, nil
}

func (s *Service) publish(ctx context.Context, job *sluicev1.Job, res *sluicev1.Result) error {
	data, err := proto.Marshal(res)
	if err != nil {
		return err
	}
	m := nats.NewMsg(wire.ResultSubject(job.JobId))
	m.Data = data
	m.Header.Set(wire.HeaderQueueID, job.QueueId)
	m.Header.Set(wire.HeaderJobID, job.JobId)
	m.Header.Set(wire.HeaderAttempt, strconv.FormatUint(uint64(job.Attempt), 10))
	telemetry.Inject(ctx, m.Header)
	// The attempt is over; a stopping service still stores its result,
	// trying again through an election (see resultBudget).
	ctx = context.WithoutCancel(ctx)
	id := fmt.Sprintf("%s/%d/result", job.JobId, job.Attempt)
	deadline := time.Now().Add(resultBudget)
	pause := 250 * time.Millisecond
	for try := 1; ; try++ {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = s.js.PublishMsg(pctx, m, jetstream.WithMsgID(id), jetstream.WithExpectStream(wire.StreamResults))
		cancel()
		s.stuck.Refused(ctx, m.Subject, id, err)
		if err == nil || time.Now().Add(pause).After(deadline) {
			return err
		}
		if try == 1 {
			s.log.WarnContext(ctx, "store result: trying again", "job_id", job.JobId, "err", err)
		}
		s.m.publishRetries.Add(ctx, 1)
		time.Sleep(pause)
		pause = min(2*pause, 2*time.Second)
	}
}

// queueWaitSpan records the time the job waited, from when it was
// scheduled (or received) until now.
func (s *Service) queueWaitSpan(ctx context.Context, job *sluicev1.Job) {
	from := job.ScheduledUnixNano
	if from == 0 {
		from = job.ReceivedUnixNano
	}
	if from == 0 {
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("sluice.queue_id", job.QueueId),
		attribute.String("sluice.job_id", job.JobId),
		attribute.Int("sluice.attempt", int(job.Attempt)),
		attribute.String("sluice.priority", wire.ClassName(job.Priority)),
	}
	if job.LastReason != sluicev1.Reason_REASON_UNSPECIFIED {
		attrs = append(attrs, attribute.String("sluice.defer_reason", courier.ReasonName(job.LastReason)))
	}
	_, span := s.tracer.Start(ctx, "queue wait", trace.WithTimestamp(time.Unix(0, from)), trace.WithAttributes(attrs...))
	span.End(trace.WithTimestamp(time.Now()))
}

func failAll(job *sluicev1.Job, e *status.Error) []*sluicev1.RecipientResult {
	out := make([]*sluicev1.RecipientResult, len(job.Recipients))
	for i, r := range job.Recipients {
		out[i] = &sluicev1.RecipientResult{Address: r.Address, Outcome: e.Outcome(), Reason: e.Reason,
			Code: uint32(e.Code), EnhancedCode: e.Enhanced, Text: e.Text, RemoteHost: e.RemoteHost,
			Notify: r.Notify, Orcpt: r.Orcpt}
	}
	return out
}

func allDelivered(rs []*sluicev1.RecipientResult) bool {
	for _, r := range rs {
		if r.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			return false
		}
	}
	return true
}

func anyDelivered(rs []*sluicev1.RecipientResult) bool {
	for _, r := range rs {
		if r.Outcome == sluicev1.Outcome_OUTCOME_DELIVERED {
			return true
		}
	}
	return false
}

// summarize gives the attempt's metric labels: result is "deferred" when any
// recipient is deferred, else "failed" when any failed, else "delivered";
// reason is the reason of the first recipient with that outcome, "none" for
// delivered attempts.
func summarize(rs []*sluicev1.RecipientResult) (result, reason string) {
	for _, want := range []sluicev1.Outcome{sluicev1.Outcome_OUTCOME_TEMPORARY, sluicev1.Outcome_OUTCOME_PERMANENT} {
		for _, r := range rs {
			if r.Outcome == want {
				if want == sluicev1.Outcome_OUTCOME_TEMPORARY {
					return "deferred", courier.ReasonName(r.Reason)
				}
				return "failed", courier.ReasonName(r.Reason)
			}
		}
	}
	return "delivered", "none"
}

// backoff paces a loop while what it calls fails: each failure doubles
// the pause, from 100 ms to fetchBackoffMax, and a failure is worth a log
// line when it is the first or 10 s have passed since the last one
// logged. It is safe for concurrent use (the dispatcher and the polls).
type backoff struct {
	mu       sync.Mutex
	failures int
	pause    time.Duration
	logged   time.Time
}

func (b *backoff) fail(now time.Time) (pause time.Duration, failures int, report bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	if b.pause == 0 {
		b.pause = 100 * time.Millisecond
	} else {
		b.pause = min(2*b.pause, fetchBackoffMax)
	}
	report = b.failures == 1 || now.Sub(b.logged) >= 10*time.Second
	if report {
		b.logged = now
	}
	return b.pause, b.failures, report
}

// reset ends a run of failures and returns how long it was.
func (b *backoff) reset() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.failures
	b.failures, b.pause = 0, 0
	return n
}
