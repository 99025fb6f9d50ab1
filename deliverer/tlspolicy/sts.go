package tlspolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/deliverer/mtasts"
)

// stsEntry is a domain's MTA-STS policy as cached in the key-value bucket
// wire.BucketMTASTS, shared by every deliverer, under the domain's name.
type stsEntry struct {
	ID      string        `json:"id"`
	Policy  mtasts.Policy `json:"policy"`
	Fetched time.Time     `json:"fetched"`
	Expires time.Time     `json:"expires"`
}

func (s *stsEntry) valid(now time.Time) bool { return s != nil && now.Before(s.Expires) }

// stale reports whether more than half of the policy's max_age has passed:
// it is fetched again then, while the cached one still serves if the
// fetch fails (RFC 8461 §10.2 advises refreshing before expiry).
func (s *stsEntry) stale(now time.Time) bool {
	return now.After(s.Fetched.Add(s.Expires.Sub(s.Fetched) / 2))
}

// stsState is what a deliverer knows of a domain's MTA-STS for now.
type stsState struct {
	// entry is the policy in force, nil when there is none (or it is
	// expired).
	entry *stsEntry
	// note says where the policy came from or why there is none, for
	// spans and the doctor: "fetched", "cached (id ...)", "no
	// _mta-sts record", "fetch failed: ...".
	note    string
	checked time.Time
}

// policy is the policy in force for delivery, nil when none is (mode none
// included).
func (s *stsState) policy() *mtasts.Policy {
	if s.entry == nil || s.entry.Policy.Mode == mtasts.None {
		return nil
	}
	return &s.entry.Policy
}

// stsKey is the bucket key of a domain: its lower-case name, a valid key
// (letters, digits, '-', '_' and dots).
func stsKey(domain string) string { return strings.ToLower(strings.TrimSuffix(domain, ".")) }

// STS returns the MTA-STS state of domain (RFC 8461 §5.1): the TXT record's
// id is compared with the cached policy's; a new id, or an expired or
// half-aged policy, is fetched again; when the record is gone or the fetch
// fails, a cached policy that has not expired still applies. The state is
// kept in memory for Config.Recheck, and policies are shared through the
// bucket, so a restarted deliverer (or another one) enforces them without
// fetching.
func (e *Engine) sts(ctx context.Context, domain string) *stsState {
	domain = stsKey(domain)
	now := e.now()
	e.mu.Lock()
	if m, ok := e.memo[domain]; ok && now.Sub(m.checked) < e.cfg.Recheck && (m.entry == nil || m.entry.valid(now)) {
		e.mu.Unlock()
		return m
	}
	// One lookup per domain at a time: the others wait for its result.
	if f, ok := e.flights[domain]; ok {
		e.mu.Unlock()
		select {
		case <-f.done:
			return f.state
		case <-ctx.Done():
			return &stsState{note: "interrupted: " + ctx.Err().Error()}
		}
	}
	f := &flight{done: make(chan struct{})}
	e.flights[domain] = f
	e.mu.Unlock()

	f.state = e.lookupSTS(ctx, domain, now)
	e.mu.Lock()
	delete(e.flights, domain)
	if ctx.Err() == nil {
		if len(e.memo) >= maxMemo {
			e.prune(now)
		}
		e.memo[domain] = f.state
	}
	e.mu.Unlock()
	close(f.done)
	return f.state
}

// maxMemo bounds the domains a deliverer remembers in memory; the shared
// bucket keeps the policies themselves.
const maxMemo = 50000

// prune forgets the domains due for a recheck, or all of them if that is
// not enough. e.mu is held.
func (e *Engine) prune(now time.Time) {
	for d, m := range e.memo {
		if now.Sub(m.checked) >= e.cfg.Recheck {
			delete(e.memo, d)
		}
	}
	if len(e.memo) >= maxMemo {
		clear(e.memo)
	}
}

type flight struct {
	done  chan struct{}
	state *stsState
}

func (e *Engine) lookupSTS(ctx context.Context, domain string, now time.Time) *stsState {
	st := &stsState{checked: now}
	cached, cacheErr := e.loadSTS(ctx, domain)
	if !cached.valid(now) {
		cached = nil
	}
	rec, txtErr := e.stsRecord(ctx, domain)
	switch {
	case rec == nil && cached != nil:
		// RFC 8461 §5.1: a valid cached policy applies even when the
		// record is gone or cannot be read.
		st.entry = cached
		st.note = fmt.Sprintf("cached policy id %s (record: %s)", cached.ID, txtErr)
		return st
	case rec == nil:
		st.note = txtErr.Error()
		if cacheErr != nil {
			st.note += "; cache: " + cacheErr.Error()
		}
		return st
	case cached != nil && cached.ID == rec.ID && !cached.stale(now):
		st.entry = cached
		st.note = "cached policy id " + cached.ID
		return st
	}
	p, err := e.fetcher.Fetch(ctx, domain)
	if err != nil {
		if cached != nil {
			st.entry = cached
			st.note = fmt.Sprintf("cached policy id %s (refresh to id %s failed: %v)", cached.ID, rec.ID, err)
			return st
		}
		st.note = "policy fetch failed: " + err.Error()
		return st
	}
	entry := &stsEntry{ID: rec.ID, Policy: *p, Fetched: now, Expires: now.Add(time.Duration(p.MaxAge) * time.Second)}
	st.entry = entry
	st.note = "fetched policy id " + rec.ID
	if err := e.storeSTS(ctx, domain, entry); err != nil {
		st.note += " (not cached: " + err.Error() + ")"
	}
	if !entry.valid(now) {
		// max_age 0: applies to this attempt, and is not kept.
		st.checked = time.Time{}
	}
	return st
}

// stsRecord reads _mta-sts.<domain>. A missing record, several STSv1
// records (RFC 8461 §3.1: treated as none) and lookup failures are errors
// that say which.
func (e *Engine) stsRecord(ctx context.Context, domain string) (*mtasts.Record, error) {
	name := "_mta-sts." + domain
	txts, err := e.res.txt(ctx, name)
	if err != nil {
		return nil, err
	}
	var found []*mtasts.Record
	var bad error
	for _, t := range txts {
		if !strings.HasPrefix(t, "v=STSv1") {
			continue
		}
		r, err := mtasts.ParseRecord(t)
		if err != nil {
			bad = err
			continue
		}
		found = append(found, r)
	}
	switch {
	case len(found) == 1 && bad == nil:
		return found[0], nil
	case len(found)+btoi(bad != nil) > 1:
		return nil, fmt.Errorf("%s has several STSv1 records, which counts as none", name)
	case bad != nil:
		return nil, bad
	}
	return nil, fmt.Errorf("no %s record", name)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (e *Engine) loadSTS(ctx context.Context, domain string) (*stsEntry, error) {
	kv := e.kv.Load()
	if kv == nil {
		return nil, nil
	}
	ent, err := (*kv).Get(ctx, stsKey(domain))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s stsEntry
	if err := json.Unmarshal(ent.Value(), &s); err != nil {
		return nil, fmt.Errorf("cached policy of %s: %v", domain, err)
	}
	return &s, nil
}

func (e *Engine) storeSTS(ctx context.Context, domain string, s *stsEntry) error {
	kv := e.kv.Load()
	if kv == nil {
		return nil
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = (*kv).Put(ctx, stsKey(domain), data)
	return err
}
