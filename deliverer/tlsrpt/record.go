// Package tlsrpt counts the outcome of the deliverer's TLS sessions for
// TLS reporting (RFC 8460): per UTC day, policy domain and policy type,
// successes and failures by result type, in the key-value bucket
// wire.BucketTLSRPT that every deliverer shares. The bouncer's reporter
// turns a finished day into the reports the domains ask for.
//
// Counts are updated by compare-and-set, so deliverers count at once
// without losing each other's sessions; a key stays small because the
// failure details it keeps are bounded (wire.TLSRPTMaxFailures).
package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
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

// Recorder records sessions. Without a store (UseStore) it records
// nothing. It is safe for concurrent use.
type Recorder struct {
	kv  atomic.Pointer[jetstream.KeyValue]
	now func() time.Time
}

// NewRecorder returns a Recorder whose days follow now (nil: time.Now).
func NewRecorder(now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	return &Recorder{now: now}
}

// UseStore makes kv (wire.BucketTLSRPT) where sessions are counted.
func (r *Recorder) UseStore(kv jetstream.KeyValue) { r.kv.Store(&kv) }

// Record counts one session in the counts of today (UTC).
func (r *Recorder) Record(ctx context.Context, s Session) error {
	p := r.kv.Load()
	if p == nil || s.Domain == "" {
		return nil
	}
	kv := *p
	key := wire.TLSRPTCountKey(wire.TLSRPTDay(r.now()), s.PolicyType, s.Domain)
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
		add(&c, s)
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
	return errors.New("tlsrpt: too many concurrent updates of " + key)
}

// isWrongSequence reports a compare-and-set that lost to another writer.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// add counts s in c.
func add(c *wire.TLSRPTCounts, s Session) {
	c.Domain, c.PolicyType = s.Domain, s.PolicyType
	if len(s.PolicyString) > 0 {
		c.PolicyString = s.PolicyString
	}
	if len(s.MXHosts) > 0 {
		c.MXHosts = s.MXHosts
	}
	if s.Result == "" {
		c.Succeeded++
		return
	}
	c.Failed++
	i := slices.IndexFunc(c.Failures, func(f wire.TLSRPTFailure) bool {
		return f.ResultType == s.Result && f.ReceivingMX == s.MXHost && f.ReceivingIP == s.IP
	})
	switch {
	case i >= 0:
		c.Failures[i].Count++
		c.Failures[i].Detail = s.Detail
	case len(c.Failures) < wire.TLSRPTMaxFailures:
		c.Failures = append(c.Failures, wire.TLSRPTFailure{ResultType: s.Result, ReceivingMX: s.MXHost, ReceivingIP: s.IP, Detail: s.Detail, Count: 1})
	}
}
