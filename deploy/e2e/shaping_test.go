package e2e

import (
	"testing"
	"time"
)

// TestFleetRateAcrossProcesses: four deliverer processes share one
// receiving site limited to 600 messages a minute (deliverer.shaping, the
// issue's figure). A backlog larger than the minute can carry is queued,
// and the destination counts what arrives in 60 s made of whole rate
// windows (a 1m rate is counted in ten 6 s windows aligned on the clock),
// from the second window after the load: 600 within 5%, and no window over
// its 60 by more than one message per deliverer (a message counted at a
// window's end may arrive in the next).
func TestFleetRateAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of paced delivery")
	}
	const (
		fleet  = 4
		perMin = 600
		window = 6 * time.Second
	)
	w := newWorld(t, worldOpts{deliverers: fleet, config: map[string]map[string]any{
		"deliverer": {"shaping": map[string]any{
			"default":    map[string]any{"max_message_rate": "600/1m"},
			"busy_delay": "50ms",
		}},
	}})
	l := &load{w: w, n: 900, sessions: 10}
	l.run()
	l.wait()
	if got := int(l.accepted.Load()); got != l.n {
		t.Fatalf("%d of %d messages accepted", got, l.n)
	}
	// One whole window is let pass first: messages counted just before a
	// window's end are delivered in the next one, and right after the
	// load, with the services still busy with it, that tail was 8 (68 in
	// the first window in one run).
	start := time.Now().Truncate(window).Add(2 * window)
	end := start.Add(time.Minute)
	time.Sleep(time.Until(end) + 2*time.Second)
	var counts [10]int
	total := 0
	for _, m := range w.dest.Messages() {
		if m.Received.Before(start) || !m.Received.Before(end) {
			continue
		}
		counts[m.Received.Sub(start)/window]++
		total++
	}
	t.Logf("a minute at %d/1m over %d deliverers: %d messages, per 6 s window %v (%d delivered in all of %d)",
		perMin, fleet, total, counts, len(w.dest.Messages()), l.n)
	if total < perMin*95/100 || total > perMin*105/100 {
		t.Errorf("%d messages in one minute, want %d within 5%%", total, perMin)
	}
	for i, c := range counts {
		if c > perMin/10+fleet {
			t.Errorf("window %d: %d messages, want at most %d", i, c, perMin/10)
		}
	}
	if len(w.dest.Messages()) >= l.n {
		t.Errorf("the whole backlog (%d) was delivered within the minute: the rate did not hold it back", l.n)
	}
}
