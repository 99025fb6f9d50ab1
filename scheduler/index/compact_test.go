package index

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// model is what the index should know about one job, kept plainly.
type model struct {
	domain, sender, lastErr, reason string
	rcpts                           []string
	state                           State
	received                        time.Time
}

// TestCompactMatchesModel drives the index through a long random history
// of jobs arriving, being deferred, held, released and finishing, sharing a
// few domains, senders and replies (so interned strings are released and
// their ids reused, and dead records are compacted), and checks every job
// and every kind of filter against a plain model of the same history.
func TestCompactMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := New(time.Hour)
	now := t0.Add(100 * time.Hour)
	jobs := map[string]*model{}
	domains := []string{"a.test", "B.test", "c.test", "d.test", "e.test", "f.test"}
	senders := []string{"", "s1@o.test", "S2@O.test", "s3@p.test", "bounce@q.test"}
	replies := []string{"451 4.7.1 greylisted", "421 4.3.2 busy", "connection refused", ""}
	reasons := []string{"remote", "connect", "dns", "tls"}
	var seq uint64
	apply := func(ev *admin.QueueEvent) {
		seq++
		// Through the stored form, as the follower reads it.
		var r admin.EventReader
		got, err := r.Read(admin.MarshalQueueEvent(ev))
		if err != nil {
			t.Fatal(err)
		}
		x.Apply(got, seq)
	}
	ids := make([]string, 400)
	for i := range ids {
		ids[i] = wire.JobID(fmt.Sprintf("%024d", i), i%3)
	}
	maxWaste := 0
	compactions, used := 0, 0
	for step := 0; step < 150000; step++ {
		id := ids[rng.IntN(len(ids))]
		m := jobs[id]
		switch {
		case m == nil:
			d := domains[rng.IntN(len(domains))]
			m = &model{domain: strings.ToLower(d), sender: senders[rng.IntN(len(senders))], state: Ready,
				received: now.Add(-time.Duration(rng.IntN(3000)) * time.Minute)}
			for n := 1 + rng.IntN(3); n > 0; n-- {
				m.rcpts = append(m.rcpts, fmt.Sprintf("user%d-%d@%s", step, n, d))
			}
			jobs[id] = m
			ev := received(wire.QueueIDOf(id), 0, d, m.sender, m.received, m.rcpts...)
			ev.JobID = id
			apply(ev)
		case rng.IntN(4) == 0:
			delete(jobs, id)
			typ := []string{wire.EventDelivered, wire.EventBounced, wire.EventExpired, wire.EventDeleted}[rng.IntN(4)]
			apply(&admin.QueueEvent{Type: typ, Time: now, JobID: id, QueueID: wire.QueueIDOf(id)})
		case m.state == Held:
			m.state = Deferred
			apply(&admin.QueueEvent{Type: wire.EventReleased, JobID: id, QueueID: wire.QueueIDOf(id), State: admin.StateDeferred})
		case rng.IntN(5) == 0:
			m.state = Held
			apply(&admin.QueueEvent{Type: wire.EventHeld, JobID: id, QueueID: wire.QueueIDOf(id), State: admin.StateHeld})
		default:
			m.state, m.lastErr, m.reason = Deferred, replies[rng.IntN(len(replies))], reasons[rng.IntN(len(reasons))]
			left := m.rcpts[:1+rng.IntN(len(m.rcpts))]
			m.rcpts = slices.Clone(left)
			apply(deferred(id, 1, now, now.Add(time.Hour), m.reason, m.lastErr, left...))
		}
		maxWaste = max(maxWaste, x.st.arena.used-x.st.arena.live)
		if x.st.arena.used < used {
			compactions++
		}
		used = x.st.arena.used
	}
	if compactions == 0 {
		t.Error("the arena was never compacted")
	}
	if x.Len() != len(jobs) {
		t.Fatalf("Len = %d, want %d", x.Len(), len(jobs))
	}
	for _, id := range ids {
		m := jobs[id]
		j, ok := x.Get(id)
		if ok != (m != nil) {
			t.Fatalf("%s: indexed %v, want %v", id, ok, m != nil)
		}
		if !ok {
			continue
		}
		if j.ID != id || j.State != m.state || j.Domain != m.domain || j.Sender != m.sender || j.LastError != m.lastErr ||
			reasonName(j.Reason) != m.reason || !slices.Equal(j.Recipients, m.rcpts) || !j.Received.Equal(m.received) {
			t.Fatalf("%s: got %+v, want %+v", id, j, *m)
		}
	}
	// Every kind of filter answers what the model says.
	var filters []admin.QueueFilter
	for _, d := range domains {
		filters = append(filters, admin.QueueFilter{Domain: d}, admin.QueueFilter{Recipient: "@" + d})
	}
	for _, s := range senders[1:] {
		filters = append(filters, admin.QueueFilter{Sender: strings.ToUpper(s)}, admin.QueueFilter{Sender: s[strings.IndexByte(s, '@'):]})
	}
	filters = append(filters, admin.QueueFilter{Sender: "<>"}, admin.QueueFilter{}, admin.QueueFilter{MinAge: "24h"})
	for _, r := range reasons {
		filters = append(filters, admin.QueueFilter{Reasons: []string{r}})
	}
	for _, st := range []string{"ready", "deferred", "held"} {
		filters = append(filters, admin.QueueFilter{States: []string{st}})
	}
	for _, f := range filters {
		mt, err := Compile(f, now)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range x.Select(mt) {
			got = append(got, r.ID)
		}
		want := modelSelect(jobs, f, now)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%+v: got %d jobs, want %d", f, len(got), len(want))
		}
		if rows := x.Rows(x.Select(mt)); len(rows) != len(want) {
			t.Errorf("%+v: %d rows, want %d", f, len(rows), len(want))
		}
		if n := len(x.Matching(mt)); n != len(want) {
			t.Errorf("%+v: Matching %d, want %d", f, n, len(want))
		}
		if s := x.Stats(mt, now, 0); s.Jobs != len(want) {
			t.Errorf("%+v: stats count %d jobs, want %d", f, s.Jobs, len(want))
		}
	}
	t.Logf("arena: %d bytes used, %d live, most dead %d, %d compactions", x.st.arena.used, x.st.arena.live, maxWaste, compactions)
	// Compaction kept dead records bounded.
	if maxWaste > 5<<arenaBits {
		t.Errorf("dead space reached %d bytes (live %d)", maxWaste, x.st.arena.live)
	}
	// Finished jobs took their interned strings with them.
	for id := range jobs {
		apply(&admin.QueueEvent{Type: wire.EventDeleted, JobID: id, QueueID: wire.QueueIDOf(id)})
	}
	if x.Len() != 0 || len(x.domains.ids) != 0 || len(x.senders.ids) != 0 || len(x.errs.ids) != 0 || x.st.table.n != 0 {
		t.Errorf("empty index keeps %d jobs, %d domains, %d senders, %d replies", x.Len(), len(x.domains.ids), len(x.senders.ids), len(x.errs.ids))
	}
}

// modelSelect is the filter's meaning, spelled out over the model.
func modelSelect(jobs map[string]*model, f admin.QueueFilter, now time.Time) []string {
	var out []string
	for id, m := range jobs {
		ok := true
		if f.Domain != "" && m.domain != strings.ToLower(f.Domain) {
			ok = false
		}
		if d, found := strings.CutPrefix(f.Recipient, "@"); found && m.domain != strings.ToLower(d) {
			ok = false
		}
		switch s := strings.ToLower(f.Sender); {
		case s == "<>":
			ok = ok && m.sender == ""
		case strings.HasPrefix(s, "@"):
			ok = ok && strings.HasSuffix(strings.ToLower(m.sender), s)
		case s != "":
			ok = ok && strings.EqualFold(m.sender, s)
		}
		if len(f.Reasons) > 0 && (m.reason != f.Reasons[0] || m.state == Ready) {
			ok = false
		}
		if len(f.States) > 0 && m.state.String() != f.States[0] {
			ok = false
		}
		if f.MinAge != "" && now.Sub(m.received) < 24*time.Hour {
			ok = false
		}
		if ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// TestTableChurn fills the id table to its limit again and again, with
// deletions in between (backward shifts across the end of the table
// included), and checks it against a map.
func TestTableChurn(t *testing.T) {
	x := New(time.Hour)
	rng := rand.New(rand.NewPCG(3, 4))
	want := map[string]int32{}
	for step := 0; step < 60000; step++ {
		id := fmt.Sprintf("job-%d", rng.IntN(3000))
		x.mu.Lock()
		if _, ok := want[id]; ok && rng.IntN(2) == 0 {
			x.remove(id)
			delete(want, id)
		} else if !ok {
			i, created := x.slot(id)
			if !created {
				t.Fatalf("%s: found before it was added", id)
			}
			want[id] = i
		}
		x.mu.Unlock()
		if step%5000 == 0 || step == 59999 {
			for n := 0; n < 3000; n++ {
				id := fmt.Sprintf("job-%d", n)
				i, ok := x.st.lookup(id)
				if w, exp := want[id]; ok != exp || (ok && i != w) {
					t.Fatalf("step %d: %s found %v at %d, want %v at %d", step, id, ok, i, exp, w)
				}
			}
			if x.Len() != len(want) {
				t.Fatalf("Len %d, want %d", x.Len(), len(want))
			}
		}
	}
}
