package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/natsconn"
)

// Handler processes one input and says what became of it.
type Handler func(ctx context.Context, msg jetstream.Msg) Outcome

// LoopConfig describes a Loop.
type LoopConfig struct {
	// Input names the loop in logs and metrics ("messages", "results").
	Input string
	// Batch is how many inputs one pull request asks for, Workers how
	// many are handled at once.
	Batch, Workers int
	// Reopen provisions the consumer again after it was lost.
	Reopen func(context.Context) (jetstream.Consumer, error)
	// KeepAlive is the interval of in-progress acknowledgements while a
	// handler runs (a third of the consumer's AckWait).
	KeepAlive time.Duration
	// Timeout bounds one handler run (its context).
	Timeout time.Duration
	// RetryDelay is the delay of a retry after a panic.
	RetryDelay time.Duration
	Log        *slog.Logger
	Metrics    *Metrics
}

// Loop pulls from one durable consumer and hands each input to a fixed
// pool of workers, which run it through a Runner (a panic is counted,
// logged once and retried; an input that panics on every delivery is
// terminated), keep the input alive with in-progress acknowledgements, and
// Settle its outcome. Pulling is batched (one pull request asks for up to
// Batch inputs) and the workers overlap their JetStream round trips, which
// is where the throughput comes from.
//
// If the consumer goes away under it (deleted by an operator, or lost with
// its replicas), the loop provisions it again with Reopen and goes on, and
// reports itself broken (Err) until it has. Stop drains: inputs already
// pulled are handled before Wait returns.
type Loop struct {
	cfg      LoopConfig
	runner   Runner
	work     chan jetstream.Msg
	done     chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}

	mu     sync.Mutex
	cons   jetstream.Consumer
	it     jetstream.MessagesContext
	broken error
}

// StartLoop starts consuming cons with h.
func StartLoop(ctx context.Context, cons jetstream.Consumer, cfg LoopConfig, h Handler) (*Loop, error) {
	it, err := messages(cons, cfg.Batch)
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", cfg.Input, err)
	}
	l := &Loop{
		cfg: cfg, cons: cons, it: it,
		runner: Runner{Input: cfg.Input, KeepAlive: cfg.KeepAlive, Timeout: cfg.Timeout, RetryDelay: cfg.RetryDelay,
			PanicsArePoison: true, Log: cfg.Log, Metrics: cfg.Metrics},
		work:    make(chan jetstream.Msg),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	var wg sync.WaitGroup
	for range max(cfg.Workers, 1) {
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
func (l *Loop) dispatch() {
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
			// Closed, and not by Stop: the consumer is gone.
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
			l.cfg.Log.Warn("consumer error", "input", l.cfg.Input, "err", err)
			select {
			case <-l.stopped:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		l.work <- msg
	}
}

func (l *Loop) handle(ctx context.Context, h Handler, msg jetstream.Msg) {
	_, _ = l.runner.Run(ctx, msg, h)
}

// recover provisions the consumer again and opens a new iterator on it,
// retrying with backoff until it succeeds (true) or the loop is stopped
// (false).
func (l *Loop) recover(cause error) bool {
	l.mu.Lock()
	l.broken = fmt.Errorf("consumer of %s lost: %w", l.cfg.Input, cause)
	l.mu.Unlock()
	l.cfg.Log.Error("consumer lost; provisioning it again", "input", l.cfg.Input, "err", cause)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := natsconn.Retry(ctx, l.cfg.Log, "provision the "+l.cfg.Input+" consumer again", func(ctx context.Context) error {
		cons, err := l.cfg.Reopen(ctx)
		if err != nil {
			return err
		}
		it, err := messages(cons, l.cfg.Batch)
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
	l.cfg.Log.Info("consumer provisioned again", "input", l.cfg.Input)
	return true
}

// messages opens the loop's iterator on cons. Pull requests expire every
// 5 s and missed heartbeats are reported, so a consumer that went away
// without a word is noticed within seconds.
func messages(cons jetstream.Consumer, batch int) (jetstream.MessagesContext, error) {
	return cons.Messages(jetstream.PullMaxMessages(max(batch, 1)), jetstream.PullExpiry(5*time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
}

// stopIfLost stops it when the loop's consumer no longer exists, so that
// dispatch provisions it again.
func (l *Loop) stopIfLost(it jetstream.MessagesContext) {
	l.mu.Lock()
	cons := l.cons
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cons.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
		it.Stop()
	}
}

// Err is why the loop is not consuming, or nil.
func (l *Loop) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broken
}

// Stop stops pulling; inputs already pulled are still handled.
func (l *Loop) Stop() {
	l.stopOnce.Do(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		close(l.stopped)
		l.it.Drain()
	})
}

// Wait waits up to d for the loop to finish and reports whether it did;
// d <= 0 only looks.
func (l *Loop) Wait(d time.Duration) bool {
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
