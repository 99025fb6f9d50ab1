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
