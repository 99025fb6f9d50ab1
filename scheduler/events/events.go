// Package events records queue events: one admin.QueueEvent per state
// change of a job in SLUICE_EVENTS, under wire.EventSubject(queue id, type, time),
// in its stored form (protobuf sluice.v1.QueueEvent, admin.MarshalQueueEvent).
// The scheduler's index is a fold of these events and `sluice queue log`
// prints them, so every state change the scheduler makes is published
// together with the change itself (its PubAck is awaited before the input
// that caused it is acknowledged), and a replayed input republishes it with
// the same message id, which JetStream drops as a duplicate.
package events

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Publisher publishes events.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// Msg is the NATS message of ev, with the message id JetStream
// deduplicates on and ctx's trace context.
func Msg(ctx context.Context, ev *admin.QueueEvent, msgID string) (*nats.Msg, error) {
	m := &nats.Msg{Subject: wire.EventSubject(ev.QueueID, ev.Type, ev.Time), Header: make(nats.Header, 4), Data: admin.MarshalQueueEvent(ev)}
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	m.Header.Set(wire.HeaderJobID, ev.JobID)
	telemetry.Inject(ctx, m.Header)
	return m, nil
}

// Async publishes ev without waiting; the caller waits for the future.
func (p *Publisher) Async(ctx context.Context, ev *admin.QueueEvent, msgID string) (jetstream.PubAckFuture, error) {
	m, err := Msg(ctx, ev, msgID)
	if err != nil {
		return nil, err
	}
	return p.js.PublishMsgAsync(m, jetstream.WithExpectStream(wire.StreamEvents))
}

// Publish publishes ev and waits for its PubAck.
func (p *Publisher) Publish(ctx context.Context, ev *admin.QueueEvent, msgID string) (*jetstream.PubAck, error) {
	m, err := Msg(ctx, ev, msgID)
	if err != nil {
		return nil, err
	}
	return p.js.PublishMsg(ctx, m, jetstream.WithExpectStream(wire.StreamEvents))
}

// Decode parses a stored event: protobuf, or the JSON of older events.
func Decode(data []byte) (*admin.QueueEvent, error) {
	var ev admin.QueueEvent
	if err := admin.UnmarshalQueueEvent(data, &ev); err != nil {
		return nil, fmt.Errorf("events: decode: %w", err)
	}
	return &ev, nil
}

// MsgID is the message id of an event about an attempt of a job:
// "<job id>/<attempt>/<type>", plus suffix parts when one attempt can have
// several events of the type (operator actions).
func MsgID(job *sluicev1.Job, typ string, suffix ...string) string {
	id := job.GetJobId() + "/" + strconv.FormatUint(uint64(job.GetAttempt()), 10) + "/ev/" + typ
	for _, s := range suffix {
		id += "/" + s
	}
	return id
}

// TraceID is the trace id of ctx's span, or "" when there is none.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.TraceID().IsValid() {
		return ""
	}
	return sc.TraceID().String()
}

// New returns an event of type typ about job, with the fields every event
// has.
func New(ctx context.Context, typ string, job *sluicev1.Job, state string, now time.Time) *admin.QueueEvent {
	return &admin.QueueEvent{
		Type: typ, Time: now.UTC(), QueueID: job.GetQueueId(), JobID: job.GetJobId(), State: state,
		Attempt: job.GetAttempt(), Priority: wire.ClassName(job.GetPriority()), TraceID: TraceID(ctx),
	}
}

// Received is the event of a job made from an accepted message.
func Received(ctx context.Context, job *sluicev1.Job, now time.Time) *admin.QueueEvent {
	ev := New(ctx, wire.EventReceived, job, admin.StateReady, now)
	ev.Envelope = Envelope(job)
	return ev
}

// Envelope describes job for a received event.
func Envelope(job *sluicev1.Job) *admin.QueueEnvelope {
	rcpts := make([]string, len(job.GetRecipients()))
	for i, r := range job.GetRecipients() {
		rcpts[i] = r.GetAddress()
	}
	env := &admin.QueueEnvelope{
		Sender: job.GetMailFrom(), Recipients: rcpts, Domain: job.GetDomain(), Size: job.GetBodySize(),
		Received: time.Unix(0, job.GetReceivedUnixNano()).UTC(), JobsTotal: job.GetJobsTotal(),
		ENVID: job.GetEnvid(), RET: job.GetRet(), RequireTLS: job.GetRequireTls(), SMTPUTF8: job.GetSmtputf8(),
		IsDSN: job.GetIsDsn(),
	}
	if e := job.GetExpiresUnixNano(); e != 0 {
		env.Expires = time.Unix(0, e).UTC()
	}
	return env
}

// ReasonName is the name of a deferral reason in events, filters and
// metrics: the enum name without its prefix, lower case ("dns").
func ReasonName(r sluicev1.Reason) string {
	if r == sluicev1.Reason_REASON_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

// OutcomeName is the name of a recipient outcome in events.
func OutcomeName(o sluicev1.Outcome) string {
	switch o {
	case sluicev1.Outcome_OUTCOME_DELIVERED:
		return "delivered"
	case sluicev1.Outcome_OUTCOME_PERMANENT:
		return "failed"
	}
	return "deferred"
}

// Reply renders a recipient result's reply as one line: "451 4.7.1 try
// later", or just the text when no server replied.
func Reply(rr *sluicev1.RecipientResult) string {
	s := rr.GetText()
	if ec := rr.GetEnhancedCode(); ec != "" {
		s = ec + " " + s
	}
	if c := rr.GetCode(); c != 0 {
		s = strconv.FormatUint(uint64(c), 10) + " " + s
	}
	return strings.TrimSpace(s)
}

// Recipients converts recipient results for an outcome event.
func Recipients(rrs []*sluicev1.RecipientResult) []admin.QueueRecipientResult {
	out := make([]admin.QueueRecipientResult, len(rrs))
	for i, rr := range rrs {
		out[i] = admin.QueueRecipientResult{
			Address: rr.GetAddress(), Outcome: OutcomeName(rr.GetOutcome()), Reason: ReasonName(rr.GetReason()),
			Reply: Reply(rr), RemoteHost: rr.GetRemoteHost(),
		}
		if t := rr.GetTls(); t != nil {
			out[i].TLS = admin.QueueTLS{
				Policy: t.GetPolicy(), Version: t.GetVersion(), Cipher: t.GetCipher(),
				VerifiedBy: t.GetVerifiedBy(), Reported: t.GetReported(),
			}
		}
	}
	return out
}
