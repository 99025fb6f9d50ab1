package index

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/natstest"
)

// eventsStream makes SLUICE_EVENTS on a fresh server and publishes the
// received and deferred events of n jobs, the first old JSON ones in the
// form events had before protobuf.
func eventsStream(tb testing.TB, n, oldJSON int) jetstream.JetStream {
	srv := natstest.Start(tb)
	_, js := srv.Connect(tb)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: wire.StreamEvents, Subjects: []string{wire.SubjectEvents + ".>"}}); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		qid := fmt.Sprintf("%024d", i)
		d := fmt.Sprintf("d%04d.example", i%100)
		at := t0.Add(-time.Duration(i%2000) * time.Minute)
		for _, ev := range []*admin.QueueEvent{
			received(qid, 0, d, fmt.Sprintf("sender%d@origin.example", i%50), at, "user@"+d),
			deferred(wire.JobID(qid, 0), 1, at, t0.Add(time.Hour), "connect", "connection refused by "+d, "user@"+d),
		} {
			data := admin.MarshalQueueEvent(ev)
			if i < oldJSON {
				data, _ = json.Marshal(ev)
			}
			if _, err := js.PublishAsync(wire.EventSubject(qid, ev.Type, ev.Time), data); err != nil {
				tb.Fatal(err)
			}
		}
		if i%1000 == 999 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	return js
}

// follow starts a follower and waits until it has read the whole stream.
func follow(tb testing.TB, js jetstream.JetStream) (*Index, *Follower) {
	x := New(time.Hour)
	f, err := Follow(context.Background(), js, x, time.Hour, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if done, _, _ := f.Loaded(); done {
			return x, f
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFollowMixedEncodings rebuilds an index from a stream whose older
// events are JSON and newer ones protobuf, as a stream written across the
// upgrade holds.
func TestFollowMixedEncodings(t *testing.T) {
	const n = 300
	js := eventsStream(t, n, n/2)
	x, f := follow(t, js)
	defer f.Stop()
	if x.Len() != n || f.Undecodable() != 0 {
		t.Fatalf("index has %d jobs (want %d), %d undecodable events", x.Len(), n, f.Undecodable())
	}
	m, _ := Compile(admin.QueueFilter{States: []string{"deferred"}, Reasons: []string{"connect"}, Domain: "d0007.example"}, t0)
	if refs := x.Select(m); len(refs) != n/100 {
		t.Errorf("deferred jobs of d0007.example: %d, want %d", len(refs), n/100)
	}
	for _, id := range []string{wire.JobID(fmt.Sprintf("%024d", 0), 0), wire.JobID(fmt.Sprintf("%024d", n-1), 0)} {
		j, ok := x.Get(id)
		if !ok || j.State != Deferred || j.LastError == "" || len(j.Recipients) != 1 || j.Sender == "" {
			t.Errorf("%s: %+v", id, j)
		}
	}
}

// BenchmarkRebuild is the index rebuild a scheduler restart makes: every
// event of a stream of 100,000 deferred jobs (two events each) read and
// folded, reported as seconds per million jobs; "json" is a stream of
// events as they were stored before protobuf.
func BenchmarkRebuild(b *testing.B) {
	const n = 100000
	for _, enc := range []string{"protobuf", "json"} {
		b.Run(enc, func(b *testing.B) {
			old := 0
			if enc == "json" {
				old = n
			}
			js := eventsStream(b, n, old)
			for b.Loop() {
				_, f := follow(b, js)
				f.Stop()
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N)*1e6/n, "s/Mjobs")
		})
	}
}

func TestStreamSeq(t *testing.T) {
	for reply, want := range map[string]uint64{
		"$JS.ACK.SLUICE_EVENTS.OC_abc.1.4711.4700.1733300000000000000.12":                  4711,
		"$JS.ACK.hub.ACCHASH.SLUICE_EVENTS.OC_abc.1.42.40.1733300000000000000.0":           42,
		"$JS.ACK.hub.ACCHASH.SLUICE_EVENTS.OC_abc.1.43.40.1733300000000000000.0.RANDOMTOK": 43,
	} {
		if got, ok := streamSeq(reply); !ok || got != want {
			t.Errorf("%s: %d %v, want %d", reply, got, ok, want)
		}
	}
	for _, bad := range []string{"", "_INBOX.x", "$JS.ACK.S.C.1.2", "$JS.ACK.S.C.1.x.2.3.4"} {
		if _, ok := streamSeq(bad); ok {
			t.Errorf("%q: accepted", bad)
		}
	}
}
