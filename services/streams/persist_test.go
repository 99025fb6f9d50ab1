package streams

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

func persistMode(t *testing.T, js jetstream.JetStream, name string) jetstream.PersistModeType {
	t.Helper()
	st, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().Config.PersistMode
}

// TestEventsPersistMode checks that on a single node the events stream is
// flushed asynchronously while the mail streams are not, that the mode can
// be chosen, and that provisioning keeps the mode of an existing stream
// (JetStream refuses to change it) instead of failing.
func TestEventsPersistMode(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Start(t).Connect(t)
	if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	if got := persistMode(t, js, wire.StreamEvents); got != jetstream.AsyncPersistMode {
		t.Fatalf("events: persist mode %v, want async", got)
	}
	for _, name := range []string{wire.StreamMessages, wire.StreamJobs, wire.StreamResults, wire.StreamBounces} {
		if got := persistMode(t, js, name); got != jetstream.DefaultPersistMode {
			t.Fatalf("%s: persist mode %v, want default", name, got)
		}
	}
	q := config.DefaultQueue()
	q.EventsPersist = config.PersistDefault
	if err := Provision(ctx, js, q); err != nil {
		t.Fatalf("provision over an async events stream with events_persist default: %v", err)
	}
	if got := persistMode(t, js, wire.StreamEvents); got != jetstream.AsyncPersistMode {
		t.Fatalf("events after re-provisioning: persist mode %v, want the original async", got)
	}

	_, js2 := natstest.Start(t).Connect(t)
	if err := Provision(ctx, js2, q); err != nil {
		t.Fatal(err)
	}
	if got := persistMode(t, js2, wire.StreamEvents); got != jetstream.DefaultPersistMode {
		t.Fatalf("events with events_persist default: persist mode %v, want default", got)
	}
}
