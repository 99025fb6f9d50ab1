package streams

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestLeaderReads reads messages and objects from the stream's leader and
// tells present, deleted and never stored apart.
func TestLeaderReads(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	q := config.DefaultQueue()
	if err := Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(wire.MessageSubject("Q1"))
	m.Header.Set("X-Test", "yes")
	m.Data = []byte("body one")
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LeaderMsg(ctx, js, wire.StreamMessages, ack.Sequence, "")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data) != "body one" || got.Subject != wire.MessageSubject("Q1") || got.Sequence != ack.Sequence || got.Header.Get("X-Test") != "yes" {
		t.Fatalf("leader read %q %q seq %d headers %v", got.Data, got.Subject, got.Sequence, got.Header)
	}
	last, err := LeaderMsg(ctx, js, wire.StreamMessages, 0, wire.MessageSubject("Q1"))
	if err != nil || last.Sequence != ack.Sequence {
		t.Fatalf("last by subject: %v, %v", last, err)
	}
	if _, err := LeaderMsg(ctx, js, wire.StreamMessages, ack.Sequence+10, ""); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a sequence never stored: %v, want ErrMsgNotFound", err)
	}
	if _, err := LeaderMsg(ctx, js, "NO_SUCH_STREAM", 1, ""); err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("an absent stream: %v, want another error than not found", err)
	}

	st, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	if deleted, err := DeleteMsg(ctx, st, ack.Sequence); !deleted || err != nil {
		t.Fatalf("first delete: %v, %v", deleted, err)
	}
	// The second try of a delete whose answer was lost finds nothing.
	if deleted, err := DeleteMsg(ctx, st, ack.Sequence); deleted || err != nil {
		t.Fatalf("second delete: %v, %v; want false, nil", deleted, err)
	}
	if _, err := LeaderMsg(ctx, js, wire.StreamMessages, ack.Sequence, ""); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a deleted message: %v, want ErrMsgNotFound", err)
	}

	bodies, err := Bodies(ctx, js, q)
	if err != nil {
		t.Fatal(err)
	}
	const name = "00363N6M91B92D35QHEDS4RF/body"
	if _, err := bodies.Put(ctx, jetstream.ObjectMeta{Name: name}, strings.NewReader("large body")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		want bool
	}{{name, false}, {"never-stored", true}} {
		gone, err := ObjectGone(ctx, js, wire.BucketBodies, c.name)
		if err != nil || gone != c.want {
			t.Fatalf("ObjectGone(%s) = %v, %v; want %v", c.name, gone, err, c.want)
		}
	}
	if err := bodies.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if gone, err := ObjectGone(ctx, js, wire.BucketBodies, name); err != nil || !gone {
		t.Fatalf("a deleted object: %v, %v; want gone", gone, err)
	}
}

// TestRefsReadFromLeader: the bucket that decides when a split message is
// finished has no direct gets, so nats.go reads it through the leader, and
// provisioning again (every service does on start) keeps it so.
func TestRefsReadFromLeader(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.Connect(t)
	ctx := context.Background()
	for range 2 {
		if err := Provision(ctx, js, config.DefaultQueue()); err != nil {
			t.Fatal(err)
		}
		str, err := js.Stream(ctx, "KV_"+wire.BucketRefs)
		if err != nil {
			t.Fatal(err)
		}
		if str.CachedInfo().Config.AllowDirect {
			t.Fatal("KV_sluice_refs allows direct gets")
		}
	}
	kv, err := js.KeyValue(ctx, wire.BucketRefs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "Q1", []byte("Q1-0\nQ1-1")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "Q1")
	if err != nil || string(e.Value()) != "Q1-0\nQ1-1" {
		t.Fatalf("get through the leader: %v, %v", e, err)
	}
}
