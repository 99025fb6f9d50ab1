package shaping

import (
	"context"
	"encoding/json"
	"fmt"
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
			if kind == "rate" || json.Unmarshal(e.Value(), &v) != nil {
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
