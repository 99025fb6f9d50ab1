package scheduler

import (
	"context"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// Span attributes (sluice.* are ours; messaging.* are OpenTelemetry
// semantic conventions).
const (
	attrQueueID     = attribute.Key("sluice.queue_id")
	attrJobID       = attribute.Key("sluice.job_id")
	attrAttempt     = attribute.Key("sluice.attempt")
	attrPriority    = attribute.Key("sluice.priority")
	attrDomain      = attribute.Key("sluice.destination_domain")
	attrJobs        = attribute.Key("sluice.jobs")
	attrRecipients  = attribute.Key("sluice.recipients")
	attrDeferReason = attribute.Key("sluice.defer_reason")
	attrNextAttempt = attribute.Key("sluice.next_attempt")
	attrDelivered   = attribute.Key("sluice.delivered")
	attrFailed      = attribute.Key("sluice.failed")
	attrDeferred    = attribute.Key("sluice.deferred")
)

// Metric label keys.
const (
	attrClass  = attribute.Key("class")
	attrReason = attribute.Key("reason")
	attrKind   = attribute.Key("kind")
	attrInput  = attribute.Key("input")
)

// consumeAttrs are the semantic-convention attributes of a span that
// processes one message of a durable consumer.
func consumeAttrs(msg jetstream.Msg, consumer string) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName(msg.Subject()),
		semconv.MessagingConsumerGroupName(consumer),
		semconv.MessagingMessageBodySize(len(msg.Data())),
	}
}

// reasonName is the label value and span attribute of a deferral reason:
// the enum name without its prefix, lower case ("dns", "connect").
func reasonName(r sluicev1.Reason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

// kindName is the label value of a bounce kind ("failed", "delivered").
func kindName(k sluicev1.BounceKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "BOUNCE_KIND_"))
}

// newMsg is a NATS message about job with Sluice's headers, the message id
// JetStream deduplicates on, and ctx's trace context.
func newMsg(ctx context.Context, subject, msgID string, job *sluicev1.Job, data []byte) *nats.Msg {
	m := &nats.Msg{Subject: subject, Header: make(nats.Header, 8), Data: data}
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	m.Header.Set(wire.HeaderQueueID, job.GetQueueId())
	m.Header.Set(wire.HeaderJobID, job.GetJobId())
	m.Header.Set(wire.HeaderAttempt, strconv.FormatUint(uint64(job.GetAttempt()), 10))
	telemetry.Inject(ctx, m.Header)
	return m
}

// jobMsgID is the message id of an attempt of a job: "<job id>/<attempt>".
func jobMsgID(job *sluicev1.Job) string {
	return job.GetJobId() + "/" + strconv.FormatUint(uint64(job.GetAttempt()), 10)
}

// waitAll waits for every publish acknowledgement and returns them in
// order, or the first error. A publish refused because its message id is
// "in process" is told to stuck (see streams.InProcess), which may be nil.
func waitAll(ctx context.Context, stuck *streams.InProcess, fs []jetstream.PubAckFuture) ([]*jetstream.PubAck, error) {
	acks := make([]*jetstream.PubAck, len(fs))
	for i, f := range fs {
		select {
		case ack := <-f.Ok():
			acks[i] = ack
		case err := <-f.Err():
			if m := f.Msg(); m != nil {
				stuck.Refused(ctx, m.Subject, m.Header.Get(jetstream.MsgIDHeader), err)
			}
			return nil, err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return acks, nil
}
