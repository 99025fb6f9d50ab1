package marks_test

import (
	"context"
	"testing"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/marks"
)

// TestStaleMarkIsNotBelieved: a cache whose watch has not yet delivered
// the removal of a mark (a release, which requeues the job right after)
// must not answer with the removed mark, or a deliverer parks the released
// job again. The watch's lag is played by a cache that is current but
// still holds the mark; a mark that is in the bucket is still found.
func TestStaleMarkIsNotBelieved(t *testing.T) {
	kv := bucket(t)
	ctx := context.Background()
	if _, err := kv.Put(ctx, "job-held", []byte(`{"action":"hold","actor":"ops"}`)); err != nil {
		t.Fatal(err)
	}
	hold := admin.QueueMark{Action: admin.MarkHold, Actor: "ops"}
	c := marks.StaleCache(kv, map[string]admin.QueueMark{"job-released": hold, "job-held": hold})
	if m, ok, err := c.Get(ctx, "job-released"); err != nil || ok {
		t.Errorf("released job: mark %+v, %v, %v; want none", m, ok, err)
	}
	if m, ok, err := c.Get(ctx, "job-held"); err != nil || !ok || m.Action != admin.MarkHold || m.Actor != "ops" {
		t.Errorf("held job: mark %+v, %v, %v; want the hold by ops", m, ok, err)
	}
	if _, ok, err := c.Get(ctx, "job-other"); err != nil || ok {
		t.Errorf("unmarked job: %v, %v; want none", ok, err)
	}
}
