package shaping

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/natstest"
)

func TestParseRateAndWindows(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Rate
		bad  bool
	}{
		{"600/1m", Rate{600, time.Minute}, false},
		{" 15 / 1m ", Rate{15, time.Minute}, false},
		{"", Rate{}, false},
		{"0/1m", Rate{}, true},
		{"10/100ms", Rate{}, true},
		{"10", Rate{}, true},
	} {
		got, err := ParseRate(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseRate(%q) = %v, %v", c.in, got, err)
		}
	}
	// The windows of a period allow exactly N, spread evenly.
	for _, r := range []Rate{{600, time.Minute}, {15, time.Minute}, {3, time.Hour}, {7, 2 * time.Second}} {
		k := min(10, r.N)
		w := r.Per / time.Duration(k)
		// A period's worth of windows from a window number divisible by k.
		start := time.Unix(0, int64(w)*int64(k)*1000)
		total, lo, hi := 0, r.N, 0
		for i := range k {
			_, q, end := r.window(start.Add(time.Duration(i)*w + w/2))
			if !end.Equal(start.Add(time.Duration(i+1) * w)) {
				t.Errorf("%v window %d ends %v", r, i, end)
			}
			total += q
			lo, hi = min(lo, q), max(hi, q)
		}
		if total != r.N || hi-lo > 1 {
			t.Errorf("%v: windows allow %d in a period (quotas %d..%d), want exactly %d, evenly", r, total, lo, hi, r.N)
		}
	}
}

// TestTakeAcrossDeliverers: two deliverers share a site's rate: together
// they get exactly its quota per window.
func TestTakeAcrossDeliverers(t *testing.T) {
	ns := natstest.Start(t)
	cfg := testConfig()
	cfg.Default.MaxMessageRate = "20/2s" // windows of 200 ms, 2 messages each
	a, _ := deliverer(t, ns, cfg, "a")
	b, _ := deliverer(t, ns, cfg, "b")
	site := a.Rules().Site("rate.test", "mx.rate.test")
	ctx := context.Background()
	// Start at the beginning of a window, so that the test does not cross one.
	_, _, end := site.Rate().window(time.Now())
	time.Sleep(time.Until(end) + 10*time.Millisecond)
	granted := 0
	var waits []time.Duration
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		w, err := s.Take(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		if w == 0 {
			granted++
		} else {
			waits = append(waits, w)
		}
	}
	if granted != 2 {
		t.Errorf("%d messages granted in one 200 ms window of a 20/2s rate, want 2", granted)
	}
	for _, w := range waits {
		if w <= 0 || w > 400*time.Millisecond {
			t.Errorf("wait %s, want until the next window (at most 200 ms) plus up to one window of jitter", w)
		}
	}
}

// TestRetryAfterEndedWindow: a job told to wait for a window that ended
// while the bucket answered still waits; a zero wait would let it through
// uncounted (seen as 24 connections in 2 s against a rate of 10/2s on a
// loaded machine).
func TestRetryAfterEndedWindow(t *testing.T) {
	r := Rate{N: 10, Per: 2 * time.Second}
	now := time.Now()
	for _, end := range []time.Time{now.Add(-time.Second), now.Add(-time.Millisecond), now, now.Add(150 * time.Millisecond)} {
		for range 1000 {
			d := r.retryAfter(end, now)
			if d <= 0 || d < end.Sub(now) || d > max(end.Sub(now), 0)+time.Millisecond+r.Per/10 {
				t.Fatalf("window ending %s from now: wait %s, want positive, past the window's end, within one window after it", end.Sub(now), d)
			}
		}
	}
}

// TestRateSent: what show reports as sent against a rate counts the windows
// of the last period only, as two deliverers took them in the bucket; a
// window of the period before is not counted.
func TestRateSent(t *testing.T) {
	r := Rate{N: 600, Per: time.Minute} // ten windows of 6 s
	now := time.Unix(0, 1_000*int64(6*time.Second)+int64(time.Second))
	windows := map[int64]int{1000: 7, 999: 50, 991: 3, 990: 40, 1001: 9}
	if got := r.Sent(windows, now); got != 60 {
		t.Errorf("Sent = %d, want 60 (windows 991..1000; 990 is the period before, 1001 not begun)", got)
	}
	if got := (Rate{}).Sent(windows, now); got != 0 {
		t.Errorf("no rate: Sent = %d", got)
	}

	ns := natstest.Start(t)
	cfg := testConfig()
	cfg.Default.MaxMessageRate = "100/1m"
	a, _ := deliverer(t, ns, cfg, "a")
	b, _ := deliverer(t, ns, cfg, "b")
	ctx := context.Background()
	site := a.Rules().Site("rated.test", "mx.rated.test")
	taken := 0
	for i := range 6 {
		d := a
		if i%2 == 1 {
			d = b
		}
		wait, err := d.Take(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		if wait == 0 {
			taken++
		}
	}
	snap, err := b.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := snap[site.Key]
	if st == nil {
		t.Fatalf("snapshot %v has no state for %s", snap, site.Key)
	}
	if got := site.Rate().Sent(st.Windows, time.Now()); taken == 0 || got != taken {
		t.Errorf("sent %d (windows %v), want the %d messages taken", got, st.Windows, taken)
	}
}
