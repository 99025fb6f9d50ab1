// Package service is the bouncer: it consumes DSN requests (sluicev1.Bounce)
// from SLUICE_BOUNCES, writes the RFC 3464 report with package dsn, and
// enqueues it as a new message on SLUICE_MSGS exactly as the ingress would,
// so the DSN is scheduled, delivered, retried and traced like any other mail.
//
// It refuses to create backscatter or bounce loops: no DSN goes to the null
// reverse-path, none is written about a DSN, and none goes to a recipient
// whose NOTIFY parameter did not ask for it (RFC 3461 §4.1, package notify).
//
// Acknowledgement discipline: a request is acknowledged only after its DSN is
// stored (the PubAck of SLUICE_MSGS) or after deciding that no DSN is due.
// The DSN is published with Nats-Msg-Id "dsn-<job id>-<attempt>-<kind>", so a
// request delivered twice (a crash between publish and ack) is stored once.
// Problems with our own infrastructure are Nak'ed with a delay; a request
// that can never produce a DSN is terminated, logged and counted.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/bouncer/dsn"
	"github.com/sluice-mta/sluice/bouncer/notify"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Delays before a request is redelivered after a problem of our own.
const (
	// retryDelay follows an unreachable or slow JetStream.
	retryDelay = 2 * time.Second
	// fullDelay follows a full message stream: the ingress is refusing mail
	// for the same reason, and space frees up only as mail is delivered.
	fullDelay = 30 * time.Second
	// handleTimeout bounds the work on one request.
	handleTimeout = time.Minute
)

// Service consumes bounce requests. Create it with New, then Start; Close
// stops it.
type Service struct {
	settings Settings
	queue    config.Queue
	js       jetstream.JetStream
	tracer   trace.Tracer
	log      *slog.Logger
	policy   notify.Policy
	now      func() time.Time
	// stuck turns a DSN's message id refused as "in process" for too long
	// into a leader change of SLUICE_MSGS (streams.InProcess).
	stuck *streams.InProcess

	generated  metric.Int64Counter
	suppressed metric.Int64Counter
	duplicates metric.Int64Counter
	invalid    metric.Int64Counter
	failures   metric.Int64Counter

	consumeMetrics *consume.Metrics

	mu     sync.Mutex
	loop   *consume.Loop
	closed bool
}

// New returns a bouncer for the settings and queue layout. It registers its
// instruments on meter; nothing runs until Start.
func New(s Settings, q config.Queue, js jetstream.JetStream, tracer trace.Tracer, meter metric.Meter, log *slog.Logger) (*Service, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	svc := &Service{
		settings: s, queue: q, js: js, tracer: tracer, log: log,
		policy: notify.Policy{DelayByDefault: s.NotifyDelayByDefault},
		now:    time.Now,
		stuck:  streams.NewInProcess(js, log),
	}
	var err error
	// kind: failed, delayed or delivered.
	if svc.generated, err = meter.Int64Counter("sluice_bouncer_dsn_generated_total",
		metric.WithDescription("DSNs written and stored on SLUICE_MSGS, by kind (failed, delayed, delivered).")); err != nil {
		return nil, err
	}
	// why: null_sender (the original sender was <>), dsn (the original was
	// itself a DSN), notify (no recipient's NOTIFY asked for this kind).
	if svc.suppressed, err = meter.Int64Counter("sluice_bouncer_suppressed_total",
		metric.WithDescription("Bounce requests that produced no DSN, by why (null_sender, dsn, notify).")); err != nil {
		return nil, err
	}
	// kind: failed, delayed or delivered.
	if svc.duplicates, err = meter.Int64Counter("sluice_bouncer_dsn_duplicates_total",
		metric.WithDescription("Redelivered bounce requests whose DSN was already stored (deduplicated by Nats-Msg-Id), by kind.")); err != nil {
		return nil, err
	}
	if svc.invalid, err = meter.Int64Counter("sluice_bouncer_requests_invalid_total",
		metric.WithDescription("Bounce requests terminated because they cannot produce a DSN (undecodable, no job, unknown kind).")); err != nil {
		return nil, err
	}
	// why: publish (SLUICE_MSGS unreachable), full (SLUICE_MSGS over its
	// limits), body (object store write failed).
	if svc.consumeMetrics, err = consume.NewMetrics(meter, "bouncer"); err != nil {
		return nil, err
	}
	if svc.failures, err = meter.Int64Counter("sluice_bouncer_enqueue_failures_total",
		metric.WithDescription("DSNs not stored because of our own infrastructure; the request is retried. By why (publish, full, body).")); err != nil {
		return nil, err
	}
	return svc, nil
}

// ackWait is how long JetStream waits for a request's acknowledgement:
// how long the requests of a bouncer that died wait for another instance.
// The request being handled is kept in progress meanwhile.
const ackWait = 10 * time.Second

// ConsumerConfig is the durable consumer the bouncer reads SLUICE_BOUNCES
// with. It is exported so tests and operators can see what is provisioned.
func ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       wire.ConsumerBouncer,
		Description:   "Sluice bouncer: writes delivery status notifications",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: 256,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Start creates or updates the durable consumer and starts consuming. The
// context bounds only the setup; Close stops consumption. Should the
// consumer go away later (deleted by an operator, or lost with its
// replicas), the bouncer provisions it again and goes on (consume.Loop);
// Ready reports the loss meanwhile.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loop != nil || s.closed {
		return errors.New("bouncer: already started")
	}
	provision := func(ctx context.Context) (jetstream.Consumer, error) {
		cons, err := s.js.CreateOrUpdateConsumer(ctx, wire.StreamBounces, ConsumerConfig())
		if err != nil {
			return nil, fmt.Errorf("bouncer: consumer %s on %s: %w", wire.ConsumerBouncer, wire.StreamBounces, err)
		}
		return cons, nil
	}
	cons, err := provision(ctx)
	if err != nil {
		return err
	}
	// Requests are handled one at a time: a small prefetch keeps the ones
	// waiting in this process well within AckWait.
	l, err := consume.StartLoop(context.Background(), cons, consume.LoopConfig{
		Input: "bounces", Batch: 32, Workers: 1, Reopen: provision,
		KeepAlive: ackWait / 3, Timeout: handleTimeout, RetryDelay: retryDelay,
		Log: s.log, Metrics: s.consumeMetrics,
	}, s.handle)
	if err != nil {
		return fmt.Errorf("bouncer: %w", err)
	}
	s.loop = l
	return nil
}

// Ready reports whether the bouncer is consuming.
func (s *Service) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.loop == nil {
		return errors.New("bouncer not running")
	}
	return s.loop.Err()
}

// Close stops taking new requests and waits, until ctx ends, for the ones
// already received to finish. It is safe to call more than once.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	l := s.loop
	s.closed = true
	s.mu.Unlock()
	if l == nil {
		return nil
	}
	l.Stop()
	wait := time.Minute
	if d, ok := ctx.Deadline(); ok {
		wait = time.Until(d)
	}
	if !l.Wait(wait) {
		return fmt.Errorf("bouncer: close: %w", context.DeadlineExceeded)
	}
	return nil
}

// handle processes one request (consume.Loop settles it with the outcome).
func (s *Service) handle(ctx context.Context, m jetstream.Msg) consume.Outcome {
	ctx = telemetry.Extract(ctx, m.Headers())
	ctx, span := s.tracer.Start(ctx, "bouncer.dsn",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", m.Subject()),
			attribute.String("messaging.consumer.group.name", wire.ConsumerBouncer),
		))
	defer span.End()
	o := s.process(ctx, span, m.Data())
	span.SetAttributes(attribute.String("sluice.settlement", o.Name()))
	return o
}

// process decides what one request becomes.
func (s *Service) process(ctx context.Context, span trace.Span, payload []byte) consume.Outcome {
	var b sluicev1.Bounce
	if err := proto.Unmarshal(payload, &b); err != nil {
		s.invalid.Add(ctx, 1)
		span.SetStatus(codes.Error, "undecodable bounce request")
		s.log.ErrorContext(ctx, "undecodable bounce request", "err", err, "bytes", len(payload))
		return consume.Poison("bouncer: undecodable sluicev1.Bounce")
	}
	job := b.GetJob()
	if job == nil || kindName(b.GetKind()) == "" {
		s.invalid.Add(ctx, 1)
		span.SetStatus(codes.Error, "bounce request without job or kind")
		s.log.ErrorContext(ctx, "bounce request without job or kind", "kind", b.GetKind().String())
		return consume.Poison("bouncer: bounce without job or kind")
	}
	kind := kindName(b.GetKind())
	span.SetAttributes(
		attribute.String("sluice.queue_id", job.GetQueueId()),
		attribute.String("sluice.job_id", job.GetJobId()),
		attribute.Int("sluice.attempt", int(job.GetAttempt())),
		attribute.String("sluice.destination_domain", job.GetDomain()),
		attribute.String("sluice.bounce_kind", kind),
	)
	log := s.log.With("queue_id", job.GetQueueId(), "job_id", job.GetJobId(), "attempt", job.GetAttempt(), "kind", kind)

	// Never bounce to the null reverse-path (RFC 5321 §4.5.5) and never
	// about a DSN: either would start a bounce loop or send backscatter.
	// The scheduler should not ask, but this is the last line.
	switch {
	case job.GetMailFrom() == "":
		return s.suppress(ctx, span, log, "null_sender")
	case job.GetIsDsn():
		return s.suppress(ctx, span, log, "dsn")
	}
	rcpts := s.policy.Select(&b)
	if len(rcpts) == 0 {
		return s.suppress(ctx, span, log, "notify")
	}
	req := proto.Clone(&b).(*sluicev1.Bounce)
	req.Recipients = rcpts

	now := s.now()
	qid := wire.NewQueueID(now)
	span.SetAttributes(attribute.String("sluice.dsn_queue_id", qid))
	received := receivedField(s.settings.Hostname, qid, now)
	body, err := dsn.Write(req, dsn.Params{
		Hostname:   s.settings.Hostname,
		Postmaster: s.settings.Postmaster,
		Date:       now,
		MessageID:  qid + "@" + s.settings.Hostname,
		Boundary:   "=_sluice-dsn-" + qid,
		MaxBytes:   s.queue.InlineBodyLimit - len(received),
	})
	if err != nil {
		// Write fails only on requests no retry can fix.
		s.invalid.Add(ctx, 1)
		span.SetStatus(codes.Error, "cannot write DSN")
		log.ErrorContext(ctx, "cannot write DSN", "err", err)
		return consume.Poison("bouncer: " + err.Error())
	}
	content := append([]byte(received), body...)

	sender := job.GetMailFrom()
	utf8Sender := !isASCII(sender)
	msg := &sluicev1.Message{
		Schema:           wire.SchemaVersion,
		QueueId:          qid,
		MailFrom:         "",
		Recipients:       []*sluicev1.Recipient{{Address: sender, Notify: uint32(sluicev1.Notify_NOTIFY_NEVER)}},
		ReceivedUnixNano: now.UnixNano(),
		Helo:             s.settings.Hostname,
		BodyType:         "7BIT",
		Smtputf8:         utf8Sender,
		BodySize:         int64(len(content)),
		IsDsn:            true,
	}
	if utf8Sender {
		// The To field then holds the UTF-8 address (RFC 6532).
		msg.BodyType = "8BITMIME"
	}

	// The DSN is a new message with a trace of its own; its root span links
	// to the bounced message's span so Jaeger shows where it came from, and
	// this span links forward to it.
	dctx, dspan := s.tracer.Start(context.Background(), "bouncer.dsn_message",
		trace.WithNewRoot(),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(trace.LinkFromContext(ctx, attribute.String("sluice.link", "bounced_message"))),
		trace.WithAttributes(
			attribute.String("sluice.queue_id", qid),
			attribute.String("sluice.bounced_queue_id", job.GetQueueId()),
			attribute.String("sluice.bounce_kind", kind),
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", wire.MessageSubject(qid)),
		))
	defer dspan.End()
	span.AddLink(trace.LinkFromContext(dctx, attribute.String("sluice.link", "dsn_message")))

	var objectStored bool
	if len(content) > s.queue.InlineBodyLimit {
		// Only a request with very many recipients gets here: the quoted
		// headers were already dropped. Store the body like the ingress
		// stores a large one.
		bodies, err := streams.Bodies(ctx, s.js, s.queue)
		var info *jetstream.ObjectInfo
		if err == nil {
			info, err = bodies.PutBytes(ctx, qid, content)
		}
		if err != nil {
			s.failures.Add(ctx, 1, metric.WithAttributes(attribute.String("why", "body")))
			dspan.SetStatus(codes.Error, "store DSN body")
			log.WarnContext(ctx, "storing the DSN body", "err", err)
			return consume.RetryAfter(retryDelay)
		}
		msg.BodyObject, msg.BodyNuid = qid, info.NUID
		objectStored = true
	} else {
		msg.Body = content
	}
	data, err := proto.Marshal(msg)
	if err != nil {
		s.invalid.Add(ctx, 1)
		log.ErrorContext(ctx, "encoding the DSN message", "err", err)
		return consume.Poison("bouncer: cannot encode DSN message")
	}
	out := nats.NewMsg(wire.MessageSubject(qid))
	out.Data = data
	out.Header.Set(wire.HeaderQueueID, qid)
	telemetry.Inject(dctx, out.Header)

	msgID := "dsn-" + job.GetJobId() + "-" + strconv.FormatUint(uint64(job.GetAttempt()), 10) + "-" + kind
	pa, err := s.js.PublishMsg(ctx, out, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(wire.StreamMessages))
	if err != nil {
		s.stuck.Refused(ctx, out.Subject, msgID, err)
		why, delay := "publish", retryDelay
		if streams.IsStorageFull(err) {
			why, delay = "full", fullDelay
		}
		s.failures.Add(ctx, 1, metric.WithAttributes(attribute.String("why", why)))
		dspan.SetStatus(codes.Error, "publish DSN")
		log.WarnContext(ctx, "publishing the DSN", "dsn_queue_id", qid, "err", err)
		return consume.RetryAfter(delay)
	}
	if pa.Duplicate {
		// An earlier delivery of this request stored its DSN and crashed
		// (or timed out) before acknowledging.
		if objectStored {
			if bodies, err := streams.Bodies(ctx, s.js, s.queue); err == nil {
				_ = bodies.Delete(ctx, qid)
			}
		}
		s.duplicates.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
		dspan.SetAttributes(attribute.Bool("sluice.duplicate", true))
		log.InfoContext(ctx, "DSN already stored for this request", "nats_msg_id", msgID)
		return consume.Done()
	}
	s.generated.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
	log.InfoContext(ctx, "DSN enqueued", "dsn_queue_id", qid, "recipients", len(rcpts), "bytes", len(content), "seq", pa.Sequence)
	return consume.Done()
}

func (s *Service) suppress(ctx context.Context, span trace.Span, log *slog.Logger, why string) consume.Outcome {
	s.suppressed.Add(ctx, 1, metric.WithAttributes(attribute.String("why", why)))
	span.SetAttributes(attribute.String("sluice.suppressed", why))
	log.InfoContext(ctx, "no DSN", "why", why)
	return consume.Done()
}

// kindName is the label value and Nats-Msg-Id part of a kind, empty when the
// kind is not one the bouncer writes.
func kindName(k sluicev1.BounceKind) string {
	switch k {
	case sluicev1.BounceKind_BOUNCE_KIND_FAILED:
		return "failed"
	case sluicev1.BounceKind_BOUNCE_KIND_DELAYED:
		return "delayed"
	case sluicev1.BounceKind_BOUNCE_KIND_DELIVERED:
		return "delivered"
	}
	return ""
}

// receivedField is the trace field of RFC 5321 §4.4 for a locally generated
// message: no "from" clause, our name, and the queue id, as the ingress
// names the queue id in the Received field it adds.
func receivedField(hostname, qid string, now time.Time) string {
	return "Received: by " + hostname + " (Sluice bouncer) id " + qid + ";\r\n\t" +
		now.Format("Mon, 02 Jan 2006 15:04:05 -0700") + "\r\n"
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
