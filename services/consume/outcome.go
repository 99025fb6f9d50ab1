package consume

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Outcome is what a handler decided about its input; Settle tells
// JetStream. Every service maps its handlers' results to inputs' fates
// here and nowhere else.
type Outcome struct {
	kind   kind
	delay  time.Duration
	reason string
}

type kind int

const (
	kindDone      kind = iota // Ack
	kindRetry                 // Nak with delay: our own infrastructure failed
	kindPoison                // Term: the input can never be processed
	kindSettled               // the handler settled the input itself
	kindConfirmed             // Ack, confirmed by JetStream
)

// Done acknowledges the input: it was processed.
func Done() Outcome { return Outcome{kind: kindDone} }

// RetryAfter hands the input back to be delivered again after d: what it
// needs is unavailable for now (NATS electing, a store refusing writes).
func RetryAfter(d time.Duration) Outcome { return Outcome{kind: kindRetry, delay: d} }

// Poison terminates the input: it can never be processed (undecodable,
// invalid, or it made the handler panic on every delivery).
func Poison(reason string) Outcome { return Outcome{kind: kindPoison, reason: reason} }

// Confirmed acknowledges the input and waits for JetStream to confirm it,
// asking again for up to within: for an input whose second handling would
// be visible (a mail delivered twice), where an ack lost while the
// stream's leader changes must not hand it out again after AckWait.
func Confirmed(within time.Duration) Outcome { return Outcome{kind: kindConfirmed, delay: within} }

// Settled says the handler already told JetStream (e.g. a confirmed
// acknowledgement, or the input moved to a schedule).
func Settled() Outcome { return Outcome{kind: kindSettled} }

// Name is the settlement's name in metrics and spans: ack, nak, term or
// settled.
func (o Outcome) Name() string {
	switch o.kind {
	case kindRetry:
		return "nak"
	case kindPoison:
		return "term"
	case kindSettled:
		return "settled"
	}
	return "ack"
}

// Delay is a retry's delay, and Reason a poison's reason.
func (o Outcome) Delay() time.Duration { return o.delay }
func (o Outcome) Reason() string       { return o.reason }

// Metrics are the counters every consumer of every service reports, named
// after the service (component) as every Sluice metric is, by input (the
// consumer's name in the service: "messages", "results", "bounces",
// "jobs"):
//
//	sluice_<component>_inputs_settled_total{input, settlement}  ack, nak, term
//	sluice_<component>_panics_total{input}                       handlers' recovered panics
type Metrics struct {
	settled metric.Int64Counter
	panics  metric.Int64Counter
}

// NewMetrics registers the counters of component ("scheduler",
// "deliverer", "bouncer") with m.
func NewMetrics(m metric.Meter, component string) (*Metrics, error) {
	var x Metrics
	var err error
	if x.settled, err = m.Int64Counter("sluice_"+component+"_inputs_settled_total",
		metric.WithDescription("Inputs settled by a consumer, by input and settlement (ack, nak, term, settled).")); err != nil {
		return nil, err
	}
	if x.panics, err = m.Int64Counter("sluice_"+component+"_panics_total",
		metric.WithDescription("Panics recovered while handling an input, by input; the service keeps running.")); err != nil {
		return nil, err
	}
	return &x, nil
}

// Settle tells JetStream o about msg and counts it (a Settled input was
// counted where it was settled: see counted). A failure to settle is
// returned: the input comes back after AckWait, which every handler must
// tolerate.
func (x *Metrics) Settle(ctx context.Context, input string, msg jetstream.Msg, o Outcome) error {
	var err error
	switch o.kind {
	case kindDone:
		err = msg.Ack()
	case kindRetry:
		err = msg.NakWithDelay(o.delay)
	case kindPoison:
		err = msg.TermWithReason(o.reason)
	case kindConfirmed:
		err = confirmAck(ctx, msg, o.delay)
	case kindSettled:
		return nil
	}
	x.count(ctx, input, o.Name())
	return err
}

// confirmAck acknowledges msg and waits for JetStream's confirmation,
// asking again every 250 ms for up to within.
func confirmAck(ctx context.Context, msg jetstream.Msg, within time.Duration) error {
	ctx = context.WithoutCancel(ctx)
	deadline := time.Now().Add(within)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := msg.DoubleAck(actx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return nil
		}
		if time.Now().Add(250 * time.Millisecond).After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (x *Metrics) count(ctx context.Context, input, settlement string) {
	x.settled.Add(ctx, 1, metric.WithAttributes(attribute.String("input", input), attribute.String("settlement", settlement)))
}

// counted returns msg with its settlements counted as Settle counts them,
// for a handler that settles an input itself and says Settled.
func (x *Metrics) counted(input string, msg jetstream.Msg) jetstream.Msg {
	return countedMsg{Msg: msg, x: x, input: input}
}

type countedMsg struct {
	jetstream.Msg
	x     *Metrics
	input string
}

func (m countedMsg) Ack() error {
	m.x.count(context.Background(), m.input, "ack")
	return m.Msg.Ack()
}

func (m countedMsg) DoubleAck(ctx context.Context) error {
	m.x.count(ctx, m.input, "ack")
	return m.Msg.DoubleAck(ctx)
}

func (m countedMsg) Nak() error {
	m.x.count(context.Background(), m.input, "nak")
	return m.Msg.Nak()
}

func (m countedMsg) NakWithDelay(d time.Duration) error {
	m.x.count(context.Background(), m.input, "nak")
	return m.Msg.NakWithDelay(d)
}

func (m countedMsg) Term() error {
	m.x.count(context.Background(), m.input, "term")
	return m.Msg.Term()
}

func (m countedMsg) TermWithReason(reason string) error {
	m.x.count(context.Background(), m.input, "term")
	return m.Msg.TermWithReason(reason)
}

// MaxPanics is how many deliveries of one input may panic before it is
// poison (Runner.PanicsArePoison).
const MaxPanics = 5

// Confirms reports whether o is a Confirmed acknowledgement.
func (o Outcome) Confirms() bool { return o.kind == kindConfirmed }
