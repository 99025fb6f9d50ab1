package index

import (
	"slices"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
)

// reservoir keeps the most recent delivery delays in a ring, so that
// percentiles over a recent window cost bounded memory whatever the
// traffic: at high rates the window is effectively the last len(ring)
// deliveries.
type reservoir struct {
	at     []int64 // Unix nanoseconds of the delivery
	delay  []int64 // nanoseconds from acceptance
	next   int
	full   bool
	window time.Duration
}

func newReservoir(n int, window time.Duration) *reservoir {
	return &reservoir{at: make([]int64, n), delay: make([]int64, n), window: window}
}

func (r *reservoir) add(at, delay int64) {
	if delay < 0 {
		delay = 0
	}
	r.at[r.next], r.delay[r.next] = at, delay
	r.next++
	if r.next == len(r.at) {
		r.next, r.full = 0, true
	}
}

func (r *reservoir) percentiles(now int64) admin.QueueDelay {
	n := r.next
	if r.full {
		n = len(r.at)
	}
	from := now - int64(r.window)
	var ds []int64
	for i := 0; i < n; i++ {
		if r.at[i] >= from {
			ds = append(ds, r.delay[i])
		}
	}
	out := admin.QueueDelay{Window: r.window.String(), Count: len(ds)}
	if len(ds) == 0 {
		return out
	}
	slices.Sort(ds)
	q := func(p float64) float64 {
		i := int(p*float64(len(ds))+0.999999) - 1
		i = max(0, min(i, len(ds)-1))
		return time.Duration(ds[i]).Seconds()
	}
	out.P50, out.P90, out.P99 = q(0.50), q(0.90), q(0.99)
	out.Max = time.Duration(ds[len(ds)-1]).Seconds()
	return out
}
