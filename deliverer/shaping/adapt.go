package shaping

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Change is what an outcome changed about a site, for the job's history and
// trace.
type Change struct {
	Site string
	// From and To are the concurrency before and after.
	From, To int
	// Until is the end of a suspension this outcome started.
	Until  time.Time
	Reason string
}

// String describes the change for a person.
func (c Change) String() string {
	s := fmt.Sprintf("site %s: concurrency %d -> %d", c.Site, c.From, c.To)
	if !c.Until.IsZero() {
		s += ", suspended until " + c.Until.UTC().Format(time.RFC3339)
	}
	if c.Reason != "" {
		s += " after " + c.Reason
	}
	return s
}

// refreshAfter is how old an unchanged concurrency at its maximum gets
// before a success writes it again, so that a busy site does not fall back
// to slow start when its key's TTL ends.
const refreshAfter = limitTTL / 4

// Delivered records a delivery to the site: its concurrency rises by one up
// to its maximum (slow start). Several deliverers raising at once may count
// one raise; the next delivery makes up for it.
func (s *Shaper) Delivered(ctx context.Context, site Site) {
	s.mu.Lock()
	cur := s.limit(site)
	st := s.state(site.Key)
	stale := st.limitRev > 0 && time.Since(st.changed) > refreshAfter
	s.mu.Unlock()
	if cur >= site.Policy.MaxConnections && !stale {
		return
	}
	_, _, _ = s.setLimit(ctx, site, func(n int) int { return min(n+1, site.Policy.MaxConnections) }, 1, stale)
}

// ConnectFailed records that no server of the site could be reached or
// greeted us: its concurrency falls by one, to no less than one.
func (s *Shaper) ConnectFailed(ctx context.Context, site Site, reply string) *Change {
	from, to, err := s.setLimit(ctx, site, func(n int) int { return max(n-1, 1) }, 3, false)
	if err != nil {
		s.log.Warn("cannot lower the concurrency of a site", "site", site.Name, "err", err)
		return nil
	}
	if from == to {
		return nil
	}
	return &Change{Site: site.Name, From: from, To: to, Reason: reply}
}

// SlowDown records a reply asking us to slow down: the site's concurrency
// halves, and the site is suspended for its SuspendFor, across the fleet.
func (s *Shaper) SlowDown(ctx context.Context, site Site, reply string) *Change {
	from, to, err := s.setLimit(ctx, site, func(n int) int { return max(n/2, 1) }, 3, false)
	if err != nil {
		s.log.Warn("cannot lower the concurrency of a site", "site", site.Name, "err", err)
		from = s.Limit(site)
		to = from
	}
	c := &Change{Site: site.Name, From: from, To: to, Reason: reply}
	if site.Policy.SuspendFor > 0 {
		until := time.Now().Add(site.Policy.SuspendFor)
		if err := s.Suspend(ctx, site, until, reply); err != nil {
			s.log.Warn("cannot suspend a site", "site", site.Name, "err", err)
		} else {
			c.Until = until
		}
	}
	return c
}

// Suspend stops every deliverer from connecting to the site until then. A
// suspension already running until later is kept.
func (s *Shaper) Suspend(ctx context.Context, site Site, until time.Time, reason string) error {
	s.mu.Lock()
	st := s.state(site.Key)
	if !st.until.Before(until) {
		s.mu.Unlock()
		return nil
	}
	// This deliverer stops at once; the others when the watch brings them
	// the key, a millisecond or so later.
	st.until, st.reason = until, reason
	s.mu.Unlock()
	ttl := max(time.Until(until), time.Second)
	val, _ := json.Marshal(Value{Site: site.Name, Instance: s.instance, Since: time.Now().UTC(), Until: until.UTC(), Reason: reason})
	_, err := s.publish(ctx, wire.ShapingSuspendKey(site.Key), val, 0, ttl+time.Second)
	return err
}

// Resume ends the site's suspension.
func (s *Shaper) Resume(ctx context.Context, site Site) error {
	err := s.kv.Purge(ctx, wire.ShapingSuspendKey(site.Key), jetstream.PurgeTTL(time.Minute))
	if err != nil {
		return err
	}
	s.mu.Lock()
	st := s.state(site.Key)
	st.until, st.reason = time.Time{}, ""
	s.mu.Unlock()
	return nil
}

// setLimit changes the site's concurrency by compare-and-set, trying up to
// tries times when another deliverer changed it meanwhile, and returns the
// values before and after. force writes even an unchanged value (to renew
// its TTL).
func (s *Shaper) setLimit(ctx context.Context, site Site, f func(int) int, tries int, force bool) (from, to int, err error) {
	key := wire.ShapingLimitKey(site.Key)
	s.mu.Lock()
	cur, rev := s.limit(site), s.state(site.Key).limitRev
	s.mu.Unlock()
	for range tries {
		next := f(cur)
		if next == cur && !force {
			return cur, cur, nil
		}
		val, _ := json.Marshal(Value{Site: site.Name, Instance: s.instance, Since: time.Now().UTC(), Limit: next})
		var newRev uint64
		if rev == 0 {
			newRev, err = s.kv.Create(ctx, key, val, jetstream.KeyTTL(limitTTL))
		} else {
			var ack *jetstream.PubAck
			if ack, err = s.publish(ctx, key, val, rev, limitTTL); err == nil {
				newRev = ack.Sequence
			}
		}
		if err == nil {
			s.mu.Lock()
			st := s.state(site.Key)
			if st.limitRev < newRev {
				st.limit, st.limitRev, st.changed = next, newRev, time.Now()
			}
			s.mu.Unlock()
			return cur, next, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSeq(err) {
			return cur, cur, err
		}
		// Someone else changed it: start again from what is stored.
		e, gerr := s.kv.Get(ctx, key)
		switch {
		case gerr == nil:
			var v Value
			_ = json.Unmarshal(e.Value(), &v)
			cur, rev = min(max(v.Limit, 1), site.Policy.MaxConnections), e.Revision()
		case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
			cur, rev = site.Policy.InitialConnections, 0
		default:
			return cur, cur, gerr
		}
	}
	return cur, cur, err
}
