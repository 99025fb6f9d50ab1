package claim_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/claim"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// TestOneClaimWins: a deliverer's attempt and an operator's prioritize
// claim the same job copy at the same instant, many times over; each time
// exactly one claim is stored, and the other names it as the holder.
func TestOneClaimWins(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	contend(t, js, 1, 200)
}

// TestOneClaimWinsR3 is TestOneClaimWins on a three-node cluster with the
// events stream replicated three times, where the leader holds back a
// second check on the same filter while the first claim is replicated.
func TestOneClaimWinsR3(t *testing.T) {
	_, js := natstest.ConnectTo(t, natstest.StartCluster(t).URLs())
	contend(t, js, 3, 100)
}

// contend creates the events stream and races two claims on each of n
// copies.
func contend(t *testing.T, js jetstream.JetStream, replicas, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	for i := 0; i < 30; i++ { // a fresh cluster may have no meta leader yet
		tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = js.CreateStream(tctx, jetstream.StreamConfig{Name: wire.StreamEvents, Subjects: []string{wire.SubjectEvents + ".>"}, Replicas: replicas})
		tcancel()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	// An unrelated event of the same message, and a claim of another
	// copy, claim nothing.
	if _, err := js.Publish(ctx, wire.EventSubject("Q", wire.EventReceived, time.Now()), []byte("r")); err != nil {
		t.Fatal(err)
	}
	types := []string{wire.EventAttempt, wire.EventReprioritised}
	wins := map[string]int{}
	for seq := uint64(1); seq <= uint64(n); seq++ {
		var wg sync.WaitGroup
		outs := make([]claim.Outcome, 2)
		errs := make([]error, 2)
		for i, typ := range types {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := nats.NewMsg(wire.ClaimSubject("Q", typ, seq))
				m.Data = []byte(typ)
				outs[i], errs[i] = claim.Take(ctx, js, m, "Q", seq)
			}()
		}
		wg.Wait()
		for i := range errs {
			if errs[i] != nil {
				t.Fatalf("copy %d: %s claim: %v", seq, types[i], errs[i])
			}
		}
		if outs[0].Won == outs[1].Won {
			t.Fatalf("copy %d: %+v: want exactly one claim stored", seq, outs)
		}
		w, l := 0, 1
		if outs[1].Won {
			w, l = 1, 0
		}
		wins[types[w]]++
		if outs[l].Holder != types[w] || outs[l].Seq != outs[w].Seq {
			t.Fatalf("copy %d: the %s claim lost to %+v, want the %s claim at %d", seq, types[l], outs[l], types[w], outs[w].Seq)
		}
		holder, hseq, err := claim.Holder(ctx, js, "Q", seq)
		if err != nil || holder != types[w] || hseq != outs[w].Seq {
			t.Fatalf("copy %d: Holder = %q at %d (%v), want %s at %d", seq, holder, hseq, err, types[w], outs[w].Seq)
		}
	}
	t.Logf("%d copies: %v", n, wins)
	if holder, _, err := claim.Holder(ctx, js, "Q", uint64(n)+1); err != nil || holder != "" {
		t.Fatalf("an unclaimed copy is held by %q (%v)", holder, err)
	}
}

// TestTakeLeavesTheMessageAlone: a deliverer whose claim is held by an
// earlier attempt (its own before a crash) publishes the same event
// without condition. Take must not leave its condition on the message, or
// that publish is refused too and the job never attempted.
func TestTakeLeavesTheMessageAlone(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: wire.StreamEvents, Subjects: []string{wire.SubjectEvents + ".>"}}); err != nil {
		t.Fatal(err)
	}
	event := func() *nats.Msg {
		m := nats.NewMsg(wire.ClaimSubject("Q", wire.EventAttempt, 7))
		m.Data = []byte("attempt")
		m.Header.Set("X-Kept", "yes")
		return m
	}
	if out, err := claim.Take(ctx, js, event(), "Q", 7); err != nil || !out.Won {
		t.Fatalf("first claim: %+v, %v", out, err)
	}
	m := event()
	out, err := claim.Take(ctx, js, m, "Q", 7)
	if err != nil || out.Won || out.Holder != wire.EventAttempt {
		t.Fatalf("second claim: %+v, %v; want it lost to the attempt", out, err)
	}
	if len(m.Header) != 1 || m.Header.Get("X-Kept") != "yes" {
		t.Fatalf("headers after Take: %v, want only the caller's", m.Header)
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publishing the event without condition after Take: %v", err)
	}
}

// TestAttemptClaimExpires: on the events stream as Sluice provisions it, a
// claim published with a TTL (as a deliverer's attempt is, wire.ClaimTTL)
// goes when it runs out, and the subject it was on with it, while a claim
// without one (an operator's prioritize) stays; the copy is then claimed
// afresh.
func TestAttemptClaimExpires(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	take := func(typ string, seq uint64, ttl string) {
		t.Helper()
		m := nats.NewMsg(wire.ClaimSubject("Q", typ, seq))
		m.Data = []byte(typ)
		if ttl != "" {
			m.Header.Set(jetstream.MsgTTLHeader, ttl)
		}
		if out, err := claim.Take(ctx, js, m, "Q", seq); err != nil || !out.Won {
			t.Fatalf("claim %s of copy %d: %+v, %v", typ, seq, out, err)
		}
	}
	take(wire.EventAttempt, 1, "1s")
	take(wire.EventReprioritised, 2, "")
	st, err := js.Stream(ctx, wire.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := st.Info(ctx); info.State.NumSubjects != 2 {
		t.Fatalf("%d subjects, want 2", info.State.NumSubjects)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		holder, _, err := claim.Holder(ctx, js, "Q", 1)
		if err != nil {
			t.Fatal(err)
		}
		if holder == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the attempt claim with a TTL of 1s is still there after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if info, _ := st.Info(ctx); info.State.NumSubjects != 1 {
		t.Errorf("%d subjects after the attempt claim expired, want 1", info.State.NumSubjects)
	}
	if holder, _, err := claim.Holder(ctx, js, "Q", 2); err != nil || holder != wire.EventReprioritised {
		t.Errorf("the prioritize claim without a TTL: holder %q, %v", holder, err)
	}
	take(wire.EventAttempt, 1, "1s")
}
