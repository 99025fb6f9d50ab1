package config

import (
	"strings"
	"testing"
	"time"
)

// The queue index is rebuilt from events, so events may not be dropped
// before the jobs they describe.
func TestEventsRetentionCoversLifetime(t *testing.T) {
	q := DefaultQueue()
	if q.EventsRetention < q.Lifetime {
		t.Fatalf("defaults invalid: events %s < lifetime %s", q.EventsRetention, q.Lifetime)
	}
	q.Lifetime = 10 * 24 * time.Hour
	err := q.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "queue.events_retention") {
		t.Fatalf("want a queue.events_retention error, got %v", err)
	}
	q.EventsRetention = 10 * 24 * time.Hour
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
}
