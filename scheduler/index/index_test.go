package index

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func received(qid string, n int, domain, from string, at time.Time, rcpts ...string) *admin.QueueEvent {
	return &admin.QueueEvent{
		Type: wire.EventReceived, Time: at, QueueID: qid, JobID: wire.JobID(qid, n), State: admin.StateReady, Attempt: 1,
		Priority: "normal", Envelope: &admin.QueueEnvelope{Sender: from, Recipients: rcpts, Domain: domain, Size: 1000,
			Received: at, Expires: at.Add(120 * time.Hour), JobsTotal: 1},
	}
}

func deferred(jobID string, attempt uint32, at, next time.Time, reason, reply string, rcpts ...string) *admin.QueueEvent {
	ev := &admin.QueueEvent{Type: wire.EventDeferred, Time: at, QueueID: wire.QueueIDOf(jobID), JobID: jobID,
		State: admin.StateDeferred, Attempt: attempt, Priority: "normal", NextAttempt: next, Reason: reason, Error: reply}
	for _, r := range rcpts {
		ev.Recipients = append(ev.Recipients, admin.QueueRecipientResult{Address: r, Outcome: "deferred", Reason: reason, Reply: reply})
	}
	return ev
}

func TestFold(t *testing.T) {
	x := New(time.Hour)
	seq := uint64(0)
	apply := func(ev *admin.QueueEvent) { seq++; x.Apply(ev, seq) }

	// The attempt event may be stored before the received event.
	apply(&admin.QueueEvent{Type: wire.EventAttempt, Time: t0, QueueID: "Q1", JobID: "Q1-0", State: admin.StateActive, Attempt: 1, Priority: "normal"})
	apply(received("Q1", 0, "Dest.Test", "a@o.test", t0, "x@dest.test", "y@dest.test"))
	j, ok := x.Get("Q1-0")
	if !ok || j.State != Active || j.Domain != "dest.test" || j.Attempts != 1 || len(j.Recipients) != 2 {
		t.Fatalf("after attempt+received: %+v", j)
	}
	apply(deferred("Q1-0", 1, t0.Add(time.Second), t0.Add(10*time.Minute), "remote", "451 4.2.1 busy", "y@dest.test"))
	j, _ = x.Get("Q1-0")
	if j.State != Deferred || !j.NextAttempt.Equal(t0.Add(10*time.Minute)) || j.LastError != "451 4.2.1 busy" ||
		len(j.Recipients) != 1 || j.Recipients[0] != "y@dest.test" || reasonName(j.Reason) != "remote" {
		t.Fatalf("after deferred: %+v", j)
	}
	apply(&admin.QueueEvent{Type: wire.EventHeld, JobID: "Q1-0", QueueID: "Q1", State: admin.StateHeld, Attempt: 2})
	j, _ = x.Get("Q1-0")
	if j.State != Held || j.Prev != Deferred || j.Attempts != 1 {
		t.Fatalf("after held: %+v", j)
	}
	// A release without a state restores the previous one.
	apply(&admin.QueueEvent{Type: wire.EventReleased, JobID: "Q1-0", QueueID: "Q1", Attempt: 2, NextAttempt: t0.Add(10 * time.Minute)})
	if j, _ = x.Get("Q1-0"); j.State != Deferred {
		t.Fatalf("after release: %+v", j)
	}
	apply(&admin.QueueEvent{Type: wire.EventReprioritised, JobID: "Q1-0", QueueID: "Q1", Attempt: 2, Priority: "high"})
	if j, _ = x.Get("Q1-0"); j.Class.String() != "PRIORITY_HIGH" {
		t.Fatalf("after reprioritised: %+v", j)
	}
	apply(&admin.QueueEvent{Type: wire.EventDelivered, Time: t0.Add(11 * time.Minute), JobID: "Q1-0", QueueID: "Q1", Attempt: 2,
		Recipients: []admin.QueueRecipientResult{{Address: "y@dest.test", Outcome: "delivered"}}})
	if _, ok := x.Get("Q1-0"); ok || x.Len() != 0 {
		t.Fatal("delivered job still indexed")
	}
	if d := x.Delays(t0.Add(12 * time.Minute)); d.Count != 1 || d.P50 != 660 {
		t.Fatalf("delays = %+v", d)
	}
	// Late operator news about a finished job does not resurrect it.
	apply(&admin.QueueEvent{Type: wire.EventHeld, JobID: "Q1-0", QueueID: "Q1", State: admin.StateHeld})
	if x.Len() != 0 {
		t.Fatal("held event recreated a finished job")
	}
	// The interned strings went with the job.
	if _, ok := x.domains.lookup("dest.test"); ok {
		t.Error("domain of the finished job still interned")
	}
	if x.Seq() != seq {
		t.Errorf("seq = %d, want %d", x.Seq(), seq)
	}
}

func TestFilterAndStats(t *testing.T) {
	x := New(time.Hour)
	now := t0.Add(2 * time.Hour)
	var seq uint64
	add := func(qid, domain, from string, age time.Duration, rcpts ...string) {
		seq++
		x.Apply(received(qid, 0, domain, from, now.Add(-age), rcpts...), seq)
	}
	add("A", "big.test", "s@one.test", 3*time.Minute, "a@big.test")
	add("B", "big.test", "S@One.test", 30*time.Minute, "b@big.test")
	add("C", "big.test", "", 2000*time.Minute, "c@big.test")
	add("D", "small.test", "t@two.test", 90*time.Minute, "d@small.test", "e@small.test")
	seq++
	x.Apply(deferred("D-0", 1, now, now.Add(time.Hour), "dns", "no MX"), seq)

	cases := []struct {
		f    admin.QueueFilter
		want string
	}{
		{admin.QueueFilter{}, "C-0 D-0 B-0 A-0"},
		{admin.QueueFilter{Domain: "BIG.test"}, "C-0 B-0 A-0"},
		{admin.QueueFilter{Sender: "s@one.test"}, "B-0 A-0"},
		{admin.QueueFilter{Sender: "@one.test"}, "B-0 A-0"},
		{admin.QueueFilter{Sender: "<>"}, "C-0"},
		{admin.QueueFilter{Recipient: "E@small.test"}, "D-0"},
		{admin.QueueFilter{Recipient: "@small.test"}, "D-0"},
		{admin.QueueFilter{States: []string{"deferred"}}, "D-0"},
		{admin.QueueFilter{Reasons: []string{"dns"}}, "D-0"},
		{admin.QueueFilter{Priorities: []string{"high"}}, ""},
		{admin.QueueFilter{MinAge: "1h"}, "C-0 D-0"},
		{admin.QueueFilter{MaxAge: "1h"}, "B-0 A-0"},
		{admin.QueueFilter{Domain: "nowhere.test"}, ""},
	}
	for _, c := range cases {
		m, err := Compile(c.f, now)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, r := range x.Select(m) {
			got += r.ID + " "
		}
		if len(got) > 0 {
			got = got[:len(got)-1]
		}
		if got != c.want {
			t.Errorf("%+v: got %q, want %q", c.f, got, c.want)
		}
	}
	for _, bad := range []admin.QueueFilter{{States: []string{"frozen"}}, {Reasons: []string{"moon"}}, {MinAge: "old"}, {Priorities: []string{"urgent"}}} {
		if _, err := Compile(bad, now); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}

	m, _ := Compile(admin.QueueFilter{}, now)
	s := x.Stats(m, now, 0)
	if s.Jobs != 4 || len(s.Domains) != 2 || s.Domains[0].Domain != "big.test" || s.Domains[0].Total != 3 {
		t.Fatalf("stats = %+v", s)
	}
	// qshape buckets: <5, <10, <20, <40, <80, <160, ... 1280+.
	want := []int{1, 0, 0, 1, 0, 0, 0, 0, 0, 1}
	if fmt.Sprint(s.Domains[0].Counts) != fmt.Sprint(want) {
		t.Errorf("big.test buckets = %v, want %v", s.Domains[0].Counts, want)
	}
	if s.Domains[1].Counts[5] != 1 || s.Total.Total != 4 || s.ByState["ready"] != 3 || s.ByState["deferred"] != 1 || s.ByReason["dns"] != 1 {
		t.Errorf("stats = %+v", s)
	}
	if top := x.Stats(m, now, 1); len(top.Domains) != 1 || top.Total.Total != 4 {
		t.Errorf("top 1 = %+v", top)
	}
}

// TestMemoryPerJob keeps the index, on the heap and outside it, under a
// kilobyte per job (the figure for a million jobs comes from `make
// bench-queue`).
func TestMemoryPerJob(t *testing.T) {
	const n = 50000
	per := memoryPerJob(n)
	t.Logf("index memory: %.0f bytes per job", per)
	if per > 1024 {
		t.Fatalf("index uses %.0f bytes per job, want < 1024", per)
	}
}

// FillDeferred adds n deferred jobs across domains destinations to x, as
// the benchmark's events would.
func FillDeferred(x *Index, n, domains int, now time.Time) {
	for i := 0; i < n; i++ {
		qid := fmt.Sprintf("%024d", i)
		d := fmt.Sprintf("d%04d.example", i%domains)
		at := now.Add(-time.Duration(i%2000) * time.Minute)
		x.Apply(received(qid, 0, d, fmt.Sprintf("sender%d@origin.example", i%5000), at, fmt.Sprintf("user%d@%s", i, d)), uint64(2*i+1))
		x.Apply(deferred(wire.JobID(qid, 0), 1, at, now.Add(time.Hour), "connect", "connection refused by "+d), uint64(2*i+2))
	}
}

func memoryPerJob(n int) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := New(time.Hour)
	FillDeferred(x, n, 1000, t0)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(x)
	return float64(int(after.HeapAlloc-before.HeapAlloc)+x.StorageBytes()) / float64(n)
}

func BenchmarkIndex(b *testing.B) {
	const n = 1000000
	x := New(time.Hour)
	FillDeferred(x, n, 1000, t0)
	b.Run("stats", func(b *testing.B) {
		m, _ := Compile(admin.QueueFilter{}, t0)
		for b.Loop() {
			x.Stats(m, t0, 0)
		}
	})
	b.Run("select-domain", func(b *testing.B) {
		m, _ := Compile(admin.QueueFilter{Domain: "d0007.example"}, t0)
		for b.Loop() {
			x.Select(m)
		}
	})
}
