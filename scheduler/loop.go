package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/services/consume"
	"github.com/sluice-mta/sluice/services/natsconn"
)

// handler processes one input and settles it (ack, nak or term) itself.
type handler func(ctx context.Context, msg jetstream.Msg)

// loop pulls from one durable consumer and hands each message to a fixed
// pool of workers. Pulling is batched (one pull request asks for up to batch
// messages) and the workers overlap their JetStream round trips, which is
// where the throughput comes from.
//
// If the consumer goes away under it (deleted by an operator, or lost with
// its replicas), the loop provisions it again with reopen and goes on, and
// reports itself broken (Service.Ready) until it has.
type loop struct {
	name     string
	batch    int
	reopen   func(context.Context) (jetstream.Consumer, error)
	log      *slog.Logger
	m        *instruments
	work     chan jetstream.Msg
	done     chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}

	mu     sync.Mutex
	cons   jetstream.Consumer
	it     jetstream.MessagesContext
	broken error
}

func startLoop(ctx context.Context, name string, cons jetstream.Consumer, reopen func(context.Context) (jetstream.Consumer, error),
	batch, workers int, log *slog.Logger, m *instruments, h handler) (*loop, error) {
	it, err := messages(cons, batch)
	if err != nil {
		return nil, fmt.Errorf("scheduler: consume %s: %w", name, err)
	}
	l := &loop{
		name: name, batch: batch, reopen: reopen, cons: cons, it: it, log: log, m: m,
		work:    make(chan jetstream.Msg),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for msg := range l.work {
				l.handle(ctx, h, msg)
			}
		}()
	}
	go func() {
		defer close(l.done)
		l.dispatch()
		close(l.work)
		wg.Wait()
	}()
	return l, nil
}

// dispatch feeds the workers until the loop is stopped and its iterator
// drained.
func (l *loop) dispatch() {
	for {
		l.mu.Lock()
		it := l.it
		l.mu.Unlock()
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			select {
			case <-l.stopped:
				return
			default:
			}
			// Closed, and not by stop: the consumer is gone.
			if !l.recover(err) {
				return
			}
			continue
		}
		if errors.Is(err, jetstream.ErrNoHeartbeat) {
			// Silence: the server may have lost the consumer without a
			// word to this pull. Look, and start over if it is gone.
			l.stopIfLost(it)
		}
		if err != nil {
			// Missed heartbeats and similar are reported here; the
			// iterator keeps pulling after them.
			l.log.Warn("consumer error", "input", l.name, "err", err)
			select {
			case <-l.stopped:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		l.work <- msg
	}
}

// handle runs h on msg, turning a panic into a logged, delayed redelivery so
// that one bad input cannot take the consumer down; an input that panics
// repeatedly is terminated.
func (l *loop) handle(ctx context.Context, h handler, msg jetstream.Msg) {
	defer func() {
		if r := recover(); r != nil {
			l.log.Error("panic handling input", "input", l.name, "subject", msg.Subject(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			if md, err := msg.Metadata(); err == nil && md.NumDelivered >= maxPanics {
				_ = msg.TermWithReason("scheduler panicked repeatedly")
				l.m.terminated.Add(ctx, 1, metric.WithAttributes(attrInput.String(l.name), attrReason.String("panic")))
				return
			}
			_ = msg.NakWithDelay(infraRetryDelay)
		}
	}()
	hctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	defer consume.KeepInProgress(msg, keepAlive)()
	h(hctx, msg)
}

// maxPanics is how many deliveries of an input may panic before it is
// terminated.
const maxPanics = 5

// recover provisions the consumer again and opens a new iterator on it,
// retrying with backoff until it succeeds (true) or the loop is stopped
// (false).
func (l *loop) recover(cause error) bool {
	l.mu.Lock()
	l.broken = fmt.Errorf("consumer of %s lost: %w", l.name, cause)
	l.mu.Unlock()
	l.log.Error("consumer lost; provisioning it again", "input", l.name, "err", cause)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := natsconn.Retry(ctx, l.log, "provision the "+l.name+" consumer again", func(ctx context.Context) error {
		cons, err := l.reopen(ctx)
		if err != nil {
			return err
		}
		it, err := messages(cons, l.batch)
		if err != nil {
			return err
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		select {
		case <-l.stopped:
			it.Stop()
			return context.Canceled
		default:
		}
		l.cons, l.it, l.broken = cons, it, nil
		return nil
	})
	if err != nil {
		return false
	}
	l.log.Info("consumer provisioned again", "input", l.name)
	return true
}

// messages opens the loop's iterator on cons. Pull requests expire every
// 5 s and missed heartbeats are reported, so a consumer that went away
// without a word is noticed within seconds.
func messages(cons jetstream.Consumer, batch int) (jetstream.MessagesContext, error) {
	return cons.Messages(jetstream.PullMaxMessages(batch), jetstream.PullExpiry(5*time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
}

// stopIfLost stops it when the loop's consumer no longer exists, so that
// dispatch provisions it again.
func (l *loop) stopIfLost(it jetstream.MessagesContext) {
	l.mu.Lock()
	cons := l.cons
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cons.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
		it.Stop()
	}
}

// err is why the loop is not consuming, or nil.
func (l *loop) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// stop stops pulling; messages already pulled are still handled.
func (l *loop) stop() {
	l.stopOnce.Do(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		close(l.stopped)
		l.it.Drain()
	})
}

// wait waits up to d for the loop to finish and reports whether it did.
func (l *loop) wait(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-l.done:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.done:
		return true
	case <-t.C:
		return false
	}
}
