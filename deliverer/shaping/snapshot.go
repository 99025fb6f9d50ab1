package shaping

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// State is the fleet-wide state of a site as the bucket holds it.
type State struct {
	Site string
	Key  string
	// Connections are the slots held, Holders by deliverer instance.
	Connections int
	Holders     map[string]int
	// Limit is the stored concurrency; 0 when none is stored (the
	// policy's initial concurrency applies).
	Limit          int
	SuspendedUntil time.Time
	Reason         string
}

// Snapshot reads the state of every site that has any, by site key.
func (s *Shaper) Snapshot(ctx context.Context) (map[string]*State, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.WatchAll(wctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("shaping: read %s: %w", wire.BucketShaping, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]*State{}
	now := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				return out, nil
			}
			kind, rest, _ := strings.Cut(e.Key(), ".")
			key, _, _ := strings.Cut(rest, ".")
			var v Value
			if kind == "rate" || kind == "crate" || json.Unmarshal(e.Value(), &v) != nil {
				continue // rate windows hold a bare count
			}
			st := out[key]
			if st == nil {
				st = &State{Site: v.Site, Key: key, Holders: map[string]int{}}
				out[key] = st
			}
			switch kind {
			case "conn":
				st.Connections++
				st.Holders[v.Instance]++
			case "limit":
				st.Limit = v.Limit
			case "susp":
				if v.Until.After(now) {
					st.SuspendedUntil, st.Reason = v.Until, v.Reason
				}
			}
		}
	}
}

// SiteCount is a number about one site.
type SiteCount struct {
	Site string
	N    int
}

// Top returns the n sites this deliverer holds the most connections to,
// most first, and the connections it holds to all the others: metric
// labels stay bounded however many sites there are.
func (s *Shaper) Top(n int) (top []SiteCount, other int) {
	s.mu.Lock()
	names := map[string]string{}
	for l := range s.leases {
		names[l.site.Key] = l.site.Name
	}
	for key, c := range s.bySite {
		top = append(top, SiteCount{Site: names[key], N: c})
	}
	s.mu.Unlock()
	sort.Slice(top, func(i, j int) bool {
		if top[i].N != top[j].N {
			return top[i].N > top[j].N
		}
		return top[i].Site < top[j].Site
	})
	if len(top) > n {
		for _, c := range top[n:] {
			other += c.N
		}
		top = top[:n]
	}
	return top, other
}

// SuspendedSites counts the sites suspended now, as this deliverer knows them.
func (s *Shaper) SuspendedSites() int {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.sites {
		if now.Before(st.until) {
			n++
		}
	}
	return n
}
