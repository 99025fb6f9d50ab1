package wire

import (
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

func TestQueueIDsSortAndAreTokens(t *testing.T) {
	now := time.Now()
	a := NewQueueID(now)
	b := NewQueueID(now.Add(time.Millisecond))
	if len(a) != 24 || !ValidToken(a) {
		t.Fatalf("queue id %q: want 24 characters usable as a subject token", a)
	}
	if !(a < b) {
		t.Fatalf("queue ids do not sort by time: %q !< %q", a, b)
	}
	if NewQueueID(now) == NewQueueID(now) {
		t.Fatal("two ids at the same instant are equal")
	}
}

func TestSubjects(t *testing.T) {
	if got := JobSubject(sluicev1.Priority_PRIORITY_BULK, "Q-1"); got != "sluice.job.bulk.Q-1" {
		t.Fatalf("JobSubject = %q", got)
	}
	if got := JobSubject(sluicev1.Priority_PRIORITY_UNSPECIFIED, "Q-1"); got != "sluice.job.normal.Q-1" {
		t.Fatalf("unspecified priority should be normal, got %q", got)
	}
	for _, c := range Classes {
		p, err := ParseClass(ClassName(c))
		if err != nil || p != c {
			t.Fatalf("ParseClass(ClassName(%v)) = %v, %v", c, p, err)
		}
	}
	if _, err := ParseClass("urgent"); err == nil {
		t.Fatal("ParseClass accepted an unknown class")
	}
	for _, bad := range []string{"", "a.b", "a*", ">", "a b"} {
		if ValidToken(bad) {
			t.Fatalf("ValidToken(%q) = true", bad)
		}
	}
}

// TestEventShards: a message's events of its first ShardWindow go to its
// shard's subjects, which many messages share (a bounded number per type
// whatever the traffic), later ones to subjects of its own; its claims
// stay in the shard, apart per job copy; its acceptance time is read back
// from its queue id.
func TestEventShards(t *testing.T) {
	now := time.Date(2026, 12, 7, 23, 0, 0, 123456000, time.UTC)
	subjects := map[string]bool{}
	const n = 50000
	for range n {
		qid := NewQueueID(now)
		sh := EventShard(qid)
		if len(sh) != 4 || sh[0] != 'e' || !ValidToken(sh) {
			t.Fatalf("shard of %s: %q", qid, sh)
		}
		if sh != EventShard(qid) {
			t.Fatalf("shard of %s changes", qid)
		}
		subjects[EventSubject(qid, EventReceived, now.Add(time.Second))] = true
		if at, ok := QueueIDTime(qid); !ok || !at.Equal(now.Truncate(time.Microsecond)) {
			t.Fatalf("time of %s: %v %v, want %v", qid, at, ok, now)
		}
	}
	if len(subjects) > EventShards || len(subjects) < EventShards*9/10 {
		t.Errorf("%d messages' received events on %d subjects, want at most %d and most of them used", n, len(subjects), EventShards)
	}
	qid := NewQueueID(now)
	shard := "sluice.event." + EventShard(qid)
	late := now.Add(ShardWindow)
	for got, exp := range map[string]string{
		EventSubject(qid, EventDelivered, now.Add(-time.Minute)):          shard + ".delivered",
		EventSubject(qid, EventDeferred, late.Add(-time.Millisecond)):     shard + ".deferred",
		EventSubject(qid, EventDelivered, late.Add(time.Millisecond)):     "sluice.event." + qid + ".delivered",
		EventSubject("legacy-id", EventDelivered, now):                    "sluice.event.legacy-id.delivered",
		ClaimSubject(qid, EventAttempt, 42):                               shard + ".attempt.42",
		ClaimFilter(qid, 42):                                              shard + ".*.42",
		ShardFilter(qid):                                                  shard + ".>",
		OwnEventFilter(qid):                                               "sluice.event." + qid + ".>",
		ClaimType(ClaimSubject(qid, EventReprioritised, 42)):              EventReprioritised,
		ClaimType(EventSubject(qid, EventDelivered, now)):                 "",
		ClaimType(EventSubject(qid, EventDelivered, late.Add(time.Hour))): "",
	} {
		if got != exp {
			t.Errorf("%q, want %q", got, exp)
		}
	}
	for _, id := range []string{"", "q", qid + "x", "0000000000000000000000I!"} {
		if _, ok := QueueIDTime(id); ok {
			t.Errorf("QueueIDTime(%q) ok", id)
		}
	}
}
