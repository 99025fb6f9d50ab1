package shaping

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// State is the fleet-wide state of a site as the bucket holds it.
type State struct {
	// Site is empty for a site the bucket holds only rate windows of,
	// which name it by key alone.
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
	// Windows are the counts of the message rate's windows the bucket
	// still holds, by window number (see Rate.Sent).
	Windows map[int64]int
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
			key, win, _ := strings.Cut(rest, ".")
			st := out[key]
			if st == nil {
				st = &State{Key: key, Holders: map[string]int{}, Windows: map[int64]int{}}
				out[key] = st
			}
			if kind == "rate" {
				// A window holds a bare count, and its site only by key.
				idx, err1 := strconv.ParseInt(win, 10, 64)
				n, err2 := strconv.Atoi(string(e.Value()))
				if err1 == nil && err2 == nil {
					st.Windows[idx] = n
				}
				continue
			}
			var v Value
			if kind == "crate" || json.Unmarshal(e.Value(), &v) != nil {
				continue
			}
			if st.Site == "" {
				st.Site = v.Site
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
