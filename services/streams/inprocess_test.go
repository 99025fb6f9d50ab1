package streams

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/natstest"
)

// r3Stream connects to url, creates a replicated stream, waiting for the
// cluster's meta leader, and returns the client.
func r3Stream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	_, js := natstest.ConnectTo(t, url)
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "STUCK", Subjects: []string{"stuck.>"}, Replicas: 3, Duplicates: 2 * time.Minute})
		cancel()
		if err == nil {
			return js
		}
		if i == 50 {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leaderOf waits for the stream to have a leader and returns its name.
func leaderOf(t *testing.T, js jetstream.JetStream) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, "STUCK")
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ctx)
		}
		cancel()
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
			return info.Cluster.Leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("STUCK has no leader: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestInProcessIsWhatJetStreamAnswers makes a real "in process" refusal:
// with both followers gone, the leader proposes a publish it cannot
// commit, and the retry of the same message id is refused with 10158,
// which IsInProcess recognises (and no other error).
func TestInProcessIsWhatJetStreamAnswers(t *testing.T) {
	c := natstest.StartCluster(t)
	js := r3Stream(t, c.URLs())
	leader := c.Server(leaderOf(t, js))
	// A client of the leader alone, which stays connected.
	ljs := r3Stream(t, leader.ClientURL())
	for _, s := range c.Servers {
		if s != leader {
			s.Shutdown()
		}
	}
	publish := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := ljs.Publish(ctx, "stuck.x", []byte("x"), jetstream.WithMsgID("x"))
		return err
	}
	if err := publish(); !errors.Is(err, context.DeadlineExceeded) || IsInProcess(err) {
		t.Fatalf("first publish without a quorum: %v, want a timeout", err)
	}
	err := publish()
	if !IsInProcess(err) {
		t.Fatalf("retried publish while the first is proposed: %v, want 10158", err)
	}
	t.Logf("the leader answered: %v", err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, other := ljs.Publish(ctx, "stuck.y", []byte("y"), jetstream.WithExpectStream("OTHER"))
	if other == nil || IsInProcess(other) {
		t.Fatalf("a publish to the wrong stream: %v, want another error", other)
	}
}

// TestInProcessAsksTheLeaderToStepDown drives InProcess with the refusal
// and a clock of its own on a real cluster: nothing before one id has been
// refused for InProcessAfter, then one step-down (and the leader
// changes), then none for that stream within a minute, whatever the id.
func TestInProcessAsksTheLeaderToStepDown(t *testing.T) {
	c := natstest.StartCluster(t)
	js := r3Stream(t, c.URLs())
	var logs bytes.Buffer // Refused logs on the caller's goroutine
	p := NewInProcess(js, slog.New(slog.NewTextHandler(&logs, nil)))
	t0 := time.Now()
	clock := t0
	p.now = func() time.Time { return clock }
	ctx := context.Background()
	refused := &jetstream.APIError{Code: 409, ErrorCode: codeInProcess, Description: "duplicate message id is in process"}
	at := func(d time.Duration, subject, id string, err error) bool {
		clock = t0.Add(d)
		return p.Refused(ctx, subject, id, err)
	}
	leader := leaderOf(t, js)
	changed := func(from string) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if l := leaderOf(t, js); l != from {
				return l
			}
			if time.Now().After(deadline) {
				t.Fatalf("the leader is still %s", from)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	var none *InProcess
	if none.Refused(ctx, "stuck.x", "x", refused) {
		t.Fatal("a nil InProcess acted")
	}
	for _, step := range []struct {
		d       time.Duration
		subject string
		id      string
		err     error
		want    bool
	}{
		{0, "stuck.x", "x", refused, false},
		{time.Hour, "stuck.x", "x", errors.New("timeout"), false}, // not a refusal: no step-down, whenever
		{InProcessAfter - time.Second, "stuck.x", "x", refused, false},
		{InProcessAfter - time.Second, "stuck.y", "y", refused, false}, // another id starts its own count
	} {
		if got := at(step.d, step.subject, step.id, step.err); got != step.want {
			t.Fatalf("%s refused %v at +%s: %v, want %v", step.id, step.err, step.d, got, step.want)
		}
	}
	if !at(InProcessAfter, "stuck.x", "x", refused) {
		t.Fatalf("x refused for %s: no step-down", InProcessAfter)
	}
	second := changed(leader)
	t.Logf("leader %s stepped down; %s leads", leader, second)
	// y is stuck long enough too, but the stream's leader was asked to
	// step down a moment ago.
	if at(2*InProcessAfter, "stuck.y", "y", refused) {
		t.Fatal("a second step-down of the same stream within a minute")
	}
	if !at(InProcessAfter+inProcessEvery, "stuck.y", "y", refused) {
		t.Fatal("y still refused a minute later: no step-down")
	}
	third := changed(second)
	t.Logf("leader %s stepped down; %s leads", second, third)
	if n := strings.Count(logs.String(), "asking the stream's leader to step down"); n != 2 {
		t.Fatalf("%d step-down warnings, want 2:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "stream=STUCK") || !strings.Contains(logs.String(), "msg_id=y") {
		t.Fatalf("the warning does not name the stream and the id:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "step-down failed") {
		t.Fatalf("a step-down failed:\n%s", logs.String())
	}

	// x refused again long after its first refusals is counted anew.
	if at(InProcessAfter+inProcessEvery+inProcessForget+time.Second, "stuck.x", "x", refused) ||
		at(InProcessAfter+inProcessEvery+inProcessForget+2*time.Second, "stuck.x", "x", refused) {
		t.Fatal("an id refused again long after its first refusal was taken as stuck at once")
	}

	// A subject no stream holds: nothing to step down, said plainly.
	at(0, "nowhere.z", "z", refused)
	if at(InProcessAfter, "nowhere.z", "z", refused) {
		t.Fatal("a step-down for a subject without a stream")
	}
	if !strings.Contains(logs.String(), "its stream is unknown") {
		t.Fatalf("no warning about the unknown stream:\n%s", logs.String())
	}
}

// TestInProcessForgets bounds what InProcess remembers: ids refused
// longer ago than inProcessForget go first, and if all are recent,
// all go.
func TestInProcessForgets(t *testing.T) {
	p := NewInProcess(nil, slog.New(slog.DiscardHandler))
	t0 := time.Now()
	clock := t0
	p.now = func() time.Time { return clock }
	refused := &jetstream.APIError{Code: 409, ErrorCode: codeInProcess}
	for i := range inProcessKeep - 1 {
		p.Refused(context.Background(), "s", fmt.Sprint("old", i), refused)
	}
	clock = t0.Add(inProcessForget + time.Second)
	p.Refused(context.Background(), "s", "recent", refused)
	p.Refused(context.Background(), "s", "new", refused)
	if len(p.first) != 2 {
		t.Fatalf("%d ids remembered after the old ones expired, want 2", len(p.first))
	}
	for i := range inProcessKeep - 2 {
		p.Refused(context.Background(), "s", fmt.Sprint("more", i), refused)
	}
	p.Refused(context.Background(), "s", "last", refused)
	if len(p.first) != 1 {
		t.Fatalf("%d ids remembered after the bound was reached with recent ids, want 1", len(p.first))
	}
}
