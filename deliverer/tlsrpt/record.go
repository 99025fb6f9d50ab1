// Package tlsrpt counts the outcome of the deliverer's TLS sessions for
// TLS reporting (RFC 8460): per UTC day, policy domain and policy type,
// successes and failures by result type, in the key-value bucket
// wire.BucketTLSRPT that every deliverer shares. The bouncer's reporter
// turns a finished day into the reports the domains ask for.
//
// Each deliverer counts in memory and adds its counts to the bucket every
// FlushInterval and when it stops, by compare-and-set, so deliverers count
// at once without losing each other's sessions; a key stays small because
// the failure details it keeps are bounded (wire.TLSRPTMaxFailures).
package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Policy types (RFC 8460 §4.4).
const (
	PolicySTS      = "sts"
	PolicyTLSA     = "tlsa"
	PolicyNotFound = "no-policy-found"
)

// Session is the outcome of one TLS session, or of one host the policy
// did not let the deliverer use.
type Session struct {
	// Domain is the policy domain: the recipient domain.
	Domain string
	// PolicyType is PolicySTS, PolicyTLSA or PolicyNotFound.
	PolicyType   string
	PolicyString []string
	MXHosts      []string
	// MXHost and IP are the receiving MX host and address.
	MXHost string
	IP     string
	// Result is "" for a successful session, else an RFC 8460 §4.3 result
	// type (see wire.TLSRPTFailure).
	Result string
	// Detail is what the deliverer said about the failure.
	Detail string
}

// maxTries bounds the compare-and-set retries of one update.
const maxTries = 20

// FlushInterval is how often a deliverer writes the sessions it counted
// to the shared counts (Run): a report covers a whole day, so counts may
// wait; what waits is lost if the deliverer is killed (SIGKILL) before
// the next flush.
const FlushInterval = 15 * time.Second

// Recorder counts sessions in memory and adds them to the shared counts
// when flushed, one compare-and-set per day, policy type and domain:
// counting each session in the bucket as it ended cost every delivery two
// replicated round trips on one hot key, lost over and over to the other
// deliverers' updates (on a three-node cluster the NATS servers spent
// three quarters of the machine on it). Without a store (UseStore) it
// records nothing. It is safe for concurrent use.
type Recorder struct {
	kv  atomic.Pointer[jetstream.KeyValue]
	now func() time.Time

	mu      sync.Mutex
	pending map[string]*wire.TLSRPTCounts
	// flushing serialises flushes, so that counts put back after a failed
	// flush are not written twice.
	flushing sync.Mutex
}

// NewRecorder returns a Recorder whose days follow now (nil: time.Now).
func NewRecorder(now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	return &Recorder{now: now, pending: map[string]*wire.TLSRPTCounts{}}
}

// UseStore makes kv (wire.BucketTLSRPT) where sessions are counted.
func (r *Recorder) UseStore(kv jetstream.KeyValue) { r.kv.Store(&kv) }

// Record counts one session in the counts of today (UTC), in memory until
// the next Flush.
func (r *Recorder) Record(s Session) {
	if r.kv.Load() == nil || s.Domain == "" {
		return
	}
	key := wire.TLSRPTCountKey(wire.TLSRPTDay(r.now()), s.PolicyType, s.Domain)
	r.mu.Lock()
	c := r.pending[key]
	if c == nil {
		c = &wire.TLSRPTCounts{}
		r.pending[key] = c
	}
	addCounts(c, counts(s))
	r.mu.Unlock()
}

// Run flushes every interval until ctx ends, then once more (bounded by
// ten seconds) so that a deliverer stopping cleanly loses nothing.
func (r *Recorder) Run(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
				log.Warn("TLS-RPT counts not written; kept for the next try", "err", err)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				log.Warn("TLS-RPT counts lost at shutdown", "err", err)
			}
			return
		}
	}
}

// Flush adds the sessions counted since the last flush to the shared
// counts. The counts of a key it could not write are kept for the next
// flush; the error names the first such key.
func (r *Recorder) Flush(ctx context.Context) error {
	p := r.kv.Load()
	if p == nil {
		return nil
	}
	r.flushing.Lock()
	defer r.flushing.Unlock()
	r.mu.Lock()
	batch := r.pending
	r.pending = map[string]*wire.TLSRPTCounts{}
	r.mu.Unlock()
	var first error
	for key, delta := range batch {
		if err := merge(ctx, *p, key, delta); err != nil {
			if first == nil {
				first = fmt.Errorf("tlsrpt: %s: %w", key, err)
			}
			r.mu.Lock()
			if c := r.pending[key]; c != nil {
				addCounts(delta, c)
			}
			r.pending[key] = delta
			r.mu.Unlock()
		}
	}
	return first
}

// merge adds delta to the counts stored under key, by compare-and-set.
func merge(ctx context.Context, kv jetstream.KeyValue, key string, delta *wire.TLSRPTCounts) error {
	for range maxTries {
		var c wire.TLSRPTCounts
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := json.Unmarshal(e.Value(), &c); err != nil {
				return err
			}
			rev = e.Revision()
		}
		addCounts(&c, delta)
		b, err := json.Marshal(&c)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return err
		}
		// Another deliverer counted meanwhile: read again.
	}
	return errors.New("too many concurrent updates")
}

// addCounts adds the counts of d to c: d's policy (the later) wins, and
// failure kinds beyond wire.TLSRPTMaxFailures are counted in Failed only.
func addCounts(c, d *wire.TLSRPTCounts) {
	c.Domain, c.PolicyType = d.Domain, d.PolicyType
	if len(d.PolicyString) > 0 {
		c.PolicyString = d.PolicyString
	}
	if len(d.MXHosts) > 0 {
		c.MXHosts = d.MXHosts
	}
	c.Succeeded += d.Succeeded
	c.Failed += d.Failed
	for _, f := range d.Failures {
		i := slices.IndexFunc(c.Failures, func(g wire.TLSRPTFailure) bool {
			return g.ResultType == f.ResultType && g.ReceivingMX == f.ReceivingMX && g.ReceivingIP == f.ReceivingIP
		})
		switch {
		case i >= 0:
			c.Failures[i].Count += f.Count
			c.Failures[i].Detail = f.Detail
		case len(c.Failures) < wire.TLSRPTMaxFailures:
			c.Failures = append(c.Failures, f)
		}
	}
}

// isWrongSequence reports a compare-and-set that lost to another writer.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// counts are the counts of the one session s.
func counts(s Session) *wire.TLSRPTCounts {
	c := &wire.TLSRPTCounts{Domain: s.Domain, PolicyType: s.PolicyType, PolicyString: s.PolicyString, MXHosts: s.MXHosts}
	if s.Result == "" {
		c.Succeeded = 1
		return c
	}
	c.Failed = 1
	c.Failures = []wire.TLSRPTFailure{{ResultType: s.Result, ReceivingMX: s.MXHost, ReceivingIP: s.IP, Detail: s.Detail, Count: 1}}
	return c
}
