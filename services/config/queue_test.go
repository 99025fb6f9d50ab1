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

func TestEventsPersist(t *testing.T) {
	for _, tt := range []struct {
		persist  string
		replicas int
		want     string // effective mode, or the start of the error
	}{
		{"", 1, PersistAsync},
		{"", 3, PersistDefault},
		{PersistDefault, 1, PersistDefault},
		{PersistAsync, 1, PersistAsync},
		{PersistAsync, 3, "queue.events_persist: async needs queue.replicas 1"},
		{"sync", 1, `queue.events_persist: "sync"`},
	} {
		q := DefaultQueue()
		q.EventsPersist, q.Replicas = tt.persist, tt.replicas
		err := q.Validate()
		if strings.HasPrefix(tt.want, "queue.") {
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("%q with %d replicas: error %v, want %q", tt.persist, tt.replicas, err, tt.want)
			}
			continue
		}
		if err != nil || q.EventsPersistMode() != tt.want {
			t.Errorf("%q with %d replicas: mode %q, err %v; want %q", tt.persist, tt.replicas, q.EventsPersistMode(), err, tt.want)
		}
	}
}

// A duplicate window shorter than the deliverer's result retries would
// let a retried result be stored twice.
func TestDuplicateWindow(t *testing.T) {
	q := DefaultQueue()
	if q.DuplicateWindow != 2*time.Minute {
		t.Fatalf("default duplicate window %s, want 2m", q.DuplicateWindow)
	}
	q.DuplicateWindow = 30 * time.Second
	err := q.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "queue.duplicate_window: 30s, want at least 1m0s") {
		t.Fatalf("a 30s window: %v, want a queue.duplicate_window error", err)
	}
	q.DuplicateWindow = MinDuplicateWindow
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
}
