package marks_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/marks"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func bucket(t *testing.T) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := config.DefaultQueue()
	if err := streams.Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	kv, err := streams.Held(ctx, js, q)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

// eventually polls f until it returns true or a deadline passes.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCacheFollowsTheBucket(t *testing.T) {
	js, kv := bucket(t)
	ctx := context.Background()
	// A mark written before the watch starts is part of its first content.
	if _, err := kv.Put(ctx, "job-old", []byte(`{"action":"delete","actor":"ops"}`)); err != nil {
		t.Fatal(err)
	}
	c, err := marks.Watch(ctx, js, kv, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	eventually(t, "the watch to be current", c.Current)

	m, ok, err := c.Get(ctx, "job-old")
	if err != nil || !ok || m.Action != admin.MarkDelete || m.Actor != "ops" {
		t.Fatalf("job-old: got %+v %v %v, want a delete mark by ops", m, ok, err)
	}
	if _, ok, _ := c.Get(ctx, "job-none"); ok {
		t.Fatal("job-none: got a mark, want none")
	}

	// Later writes, an unreadable value and a purge all reach the cache.
	if _, err := kv.Put(ctx, "job-new", []byte(`{"action":"hold"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "job-bad", []byte(`not json`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "job-old"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the updates", func() bool {
		_, old, _ := c.Get(ctx, "job-old")
		_, bad, _ := c.Get(ctx, "job-bad")
		return !old && bad
	})
	if m, ok, _ := c.Get(ctx, "job-new"); !ok || m.Action != admin.MarkHold {
		t.Fatalf("job-new: got %+v %v, want a hold mark", m, ok)
	}
	// A mark we cannot read holds the job rather than letting it go.
	if m, _, _ := c.Get(ctx, "job-bad"); m.Action != admin.MarkHold {
		t.Fatalf("job-bad: got action %q, want hold", m.Action)
	}

	// Once stopped, the cache asks the bucket, which still answers.
	c.Stop()
	if c.Current() {
		t.Fatal("a stopped cache says it is current")
	}
	if _, err := kv.Put(ctx, "job-late", []byte(`{"action":"delete"}`)); err != nil {
		t.Fatal(err)
	}
	if m, ok, err := c.Get(ctx, "job-late"); err != nil || !ok || m.Action != admin.MarkDelete {
		t.Fatalf("job-late after Stop: got %+v %v %v, want the bucket's delete mark", m, ok, err)
	}
}

func TestDecode(t *testing.T) {
	for in, want := range map[string]string{
		`{"action":"hold"}`:     admin.MarkHold,
		`{"action":"delete"}`:   admin.MarkDelete,
		`{"action":"release"}`:  admin.MarkHold,
		`{"action":1}`:          admin.MarkHold,
		``:                      admin.MarkHold,
		`{"action":"delete"`:    admin.MarkHold,
		`{"action":"DELETE"}`:   admin.MarkHold,
		`{"action":"delete"} x`: admin.MarkHold,
	} {
		if got := marks.Decode([]byte(in)).Action; got != want {
			t.Errorf("Decode(%q).Action = %q, want %q", in, got, want)
		}
	}
}
