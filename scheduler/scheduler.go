// Package scheduler is Sluice's queue manager. It owns queue policy and
// applies it at the two points where mail changes state:
//
//   - The splitter consumes accepted messages from SLUICE_MSGS, splits their
//     recipients by destination domain into jobs, gives each job a priority
//     class and publishes it to that class's subject in SLUICE_JOBS.
//   - The result processor consumes deliverers' reports from SLUICE_RESULTS
//     and decides, per recipient, between done, bounce and retry. Retries are
//     JetStream message schedules on the job's schedule subject, so a pending
//     retry is as durable as the queue itself and survives any restart.
//     When every job of a message is final, the message and its body are
//     deleted.
//
// Both consumers acknowledge an input only after everything it produced is
// durably published, and every publish carries a Nats-Msg-Id derived from the
// input, so a redelivered input after a crash produces no duplicates within
// JetStream's duplicate window. The policy itself (backoff, expiry, classes,
// splitting) lives in package policy, without I/O.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/admin"
	"github.com/sluice-mta/sluice/scheduler/events"
	"github.com/sluice-mta/sluice/scheduler/index"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/marks"
	"github.com/sluice-mta/sluice/services/streams"
)

// Consumer settings shared by both durable consumers.
const (
	// ackWait is how long JetStream waits for an acknowledgement before
	// redelivering: how long the inputs of a scheduler that died wait for
	// another instance. A live instance tells JetStream every keepAlive
	// that it still works on an input (from the moment it takes it), so a
	// slow input is not handed to a second instance meanwhile.
	ackWait = 10 * time.Second
	// keepAlive is the interval of in-progress acknowledgements.
	keepAlive = ackWait / 3
	// maxAckPending bounds the inputs in flight across all scheduler
	// instances sharing a consumer.
	maxAckPending = 4096
	// handleTimeout bounds the work on one input.
	handleTimeout = 20 * time.Second
	// infraRetryDelay is the redelivery delay after a failure of our own
	// infrastructure (JetStream unavailable, a publish not acknowledged).
	infraRetryDelay = 2 * time.Second
)

// Option changes how a Service reads time and randomness; tests use them.
type Option func(*Service)

// WithClock makes the service read the time from now.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithRandom makes the service draw retry jitter from random, which returns
// values in [0, 1).
func WithRandom(random func() float64) Option { return func(s *Service) { s.random = random } }

// Service is one scheduler instance. Any number of instances may run; they
// share the two durable consumers.
type Service struct {
	cfg    Config
	js     jetstream.JetStream
	tracer trace.Tracer
	log    *slog.Logger
	m      *instruments
	// consumeMetrics are the counters every consumer reports (package consume).
	consumeMetrics *consume.Metrics
	now            func() time.Time
	random         func() float64

	msgs   jetstream.Stream
	jobs   jetstream.Stream
	refs   jetstream.KeyValue
	held   jetstream.KeyValue
	marks  *marks.Cache
	bodies jetstream.ObjectStore
	events *events.Publisher
	meter  metric.Meter
	// stuck turns a message id refused as "in process" for too long into
	// a leader change of its stream (streams.InProcess).
	stuck *streams.InProcess

	// index is the queue index the admin API answers from, fed by follower.
	index    *index.Index
	follower *index.Follower
	admin    *admin.Server

	// handled counts the inputs the two loops began to handle: the keeper
	// places markers only while it moves (keeper.go).
	handled atomic.Uint64
	keeper  *keeper

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	loops   []*consume.Loop
}

// New returns a service for a validated configuration. It does no I/O.
func New(cfg Config, js jetstream.JetStream, tracer trace.Tracer, meter metric.Meter, log *slog.Logger, opts ...Option) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newInstruments(meter)
	if err != nil {
		return nil, err
	}
	cm, err := consume.NewMetrics(meter, "scheduler")
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg: cfg, js: js, tracer: tracer, log: log, m: m, meter: meter, consumeMetrics: cm,
		now: time.Now, random: rand.Float64,
		events: events.NewPublisher(js),
		stuck:  streams.NewInProcess(js, log),
		index:  index.New(cfg.Scheduler.StatsWindow),
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Start binds to the streams, creates or updates the two durable consumers
// and starts consuming. The streams must exist (streams.Provision).
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return errors.New("scheduler: Start called twice or after Close")
	}
	var err error
	if s.msgs, err = s.js.Stream(ctx, wire.StreamMessages); err != nil {
		return fmt.Errorf("scheduler: stream %s: %w", wire.StreamMessages, err)
	}
	if s.refs, err = s.js.KeyValue(ctx, wire.BucketRefs); err != nil {
		return fmt.Errorf("scheduler: bucket %s: %w", wire.BucketRefs, err)
	}
	if s.bodies, err = streams.Bodies(ctx, s.js, s.cfg.Queue); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if s.jobs, err = s.js.Stream(ctx, wire.StreamJobs); err != nil {
		return fmt.Errorf("scheduler: stream %s: %w", wire.StreamJobs, err)
	}
	if s.held, err = streams.Held(ctx, s.js, s.cfg.Queue); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if s.marks, err = marks.Watch(ctx, s.js, s.held, s.log); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	defer func() {
		if !s.started {
			s.marks.Stop()
		}
	}()
	const (
		msgDesc = "Sluice scheduler: splits accepted messages into delivery jobs"
		resDesc = "Sluice scheduler: applies delivery results (done, bounce, retry)"
	)
	msgCons, err := s.consumer(ctx, wire.StreamMessages, wire.ConsumerScheduler, msgDesc, wire.SubjectMessages)
	if err != nil {
		return err
	}
	resCons, err := s.consumer(ctx, wire.StreamResults, wire.ConsumerResults, resDesc, wire.SubjectResults)
	if err != nil {
		return err
	}
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	set := s.cfg.Scheduler
	msgReopen := func(ctx context.Context) (jetstream.Consumer, error) {
		return s.consumer(ctx, wire.StreamMessages, wire.ConsumerScheduler, msgDesc, wire.SubjectMessages)
	}
	resReopen := func(ctx context.Context) (jetstream.Consumer, error) {
		return s.consumer(ctx, wire.StreamResults, wire.ConsumerResults, resDesc, wire.SubjectResults)
	}
	loopConfig := func(input string, reopen func(context.Context) (jetstream.Consumer, error)) consume.LoopConfig {
		return consume.LoopConfig{
			Input: input, Batch: set.Batch, Workers: set.Concurrency, Reopen: reopen,
			KeepAlive: keepAlive, Timeout: handleTimeout, RetryDelay: infraRetryDelay,
			Log: s.log, Metrics: s.consumeMetrics,
		}
	}
	splitLoop, err := consume.StartLoop(base, msgCons, loopConfig("messages", msgReopen), s.split)
	if err != nil {
		cancel()
		return fmt.Errorf("scheduler: %w", err)
	}
	resLoop, err := consume.StartLoop(base, resCons, loopConfig("results", resReopen), s.result)
	if err != nil {
		splitLoop.Stop()
		splitLoop.Wait(time.Second)
		cancel()
		return fmt.Errorf("scheduler: %w", err)
	}
	s.loops = []*consume.Loop{splitLoop, resLoop}
	s.keeper = &keeper{js: s.js, handled: &s.handled, interval: keepEvery, log: s.log, done: make(chan struct{})}
	go s.keeper.run(base)
	s.cancel = cancel
	s.started = true
	if err := s.startAdmin(ctx); err != nil {
		s.mu.Unlock()
		_ = s.Close()
		s.mu.Lock()
		return err
	}
	return nil
}

// startAdmin starts following the events into the queue index and serves
// the queue admin API from it.
func (s *Service) startAdmin(ctx context.Context) error {
	snaps, err := streams.IndexSnapshots(ctx, s.js, s.cfg.Queue)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	f, err := index.Follow(ctx, s.js, s.index, streams.LifetimeGrace, snaps, s.log)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	s.follower = f
	instance := s.cfg.Scheduler.Instance
	if instance == "" {
		instance = "scheduler"
	}
	a, err := admin.Start(ctx, admin.Deps{
		JS: s.js, Index: s.index, Loader: f, Events: s.events, Held: s.held,
		Complete: func(ctx context.Context, job *sluicev1.Job) error {
			return s.complete(ctx, job, s.log.With("queue_id", job.GetQueueId(), "job_id", job.GetJobId()))
		},
		Tracer: s.tracer, Meter: s.meter, Log: s.log, Now: s.now, Instance: instance,
	})
	if err != nil {
		return err
	}
	s.admin = a
	return nil
}

// consumer creates or updates the durable consumer name on stream, reading
// the subjects under prefix (not the stream's marker, see keeper.go).
func (s *Service) consumer(ctx context.Context, stream, name, desc, prefix string) (jetstream.Consumer, error) {
	c, err := s.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   desc,
		FilterSubject: prefix + ".>",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: maxAckPending,
		MaxDeliver:    -1,
	})
	if err != nil {
		return nil, fmt.Errorf("scheduler: consumer %s on %s: %w", name, stream, err)
	}
	return c, nil
}

// Ready reports whether the service is consuming, for /healthz.
func (s *Service) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.closed {
		return errors.New("scheduler not running")
	}
	for _, l := range s.loops {
		if err := l.Err(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops pulling new inputs, lets the ones already pulled finish for up
// to the configured shutdown timeout, then abandons the rest (JetStream
// redelivers them to another instance after the ack wait). It is safe to call
// twice and before Start.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	loops, cancel, kp := s.loops, s.cancel, s.keeper
	adm, fol := s.admin, s.follower
	s.mu.Unlock()
	if adm != nil {
		adm.Close()
	}
	for _, l := range loops {
		l.Stop()
	}
	deadline := time.Now().Add(s.cfg.Scheduler.ShutdownTimeout)
	clean := true
	for _, l := range loops {
		if !l.Wait(time.Until(deadline)) {
			clean = false
		}
	}
	if cancel != nil {
		cancel()
	}
	for _, l := range loops {
		l.Wait(time.Minute)
	}
	if kp != nil {
		<-kp.done
	}
	if fol != nil {
		fol.Stop()
	}
	if s.marks != nil {
		s.marks.Stop()
	}
	if !clean {
		return errors.New("scheduler: in-flight work abandoned at shutdown")
	}
	return nil
}
