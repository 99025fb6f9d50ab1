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
// still holds the marks; the bucket's leader has them deleted, purged, or
// never had them. A mark that is in the bucket is still found.
func TestStaleMarkIsNotBelieved(t *testing.T) {
	js, kv := bucket(t)
	ctx := context.Background()
	for _, key := range []string{"job-held", "job-deleted", "job-purged"} {
		if _, err := kv.Put(ctx, key, []byte(`{"action":"hold","actor":"ops"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "job-deleted"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "job-purged"); err != nil {
		t.Fatal(err)
	}
	hold := admin.QueueMark{Action: admin.MarkHold, Actor: "ops"}
	stale := map[string]admin.QueueMark{"job-held": hold, "job-deleted": hold, "job-purged": hold, "job-never": hold}
	c := marks.StaleCache(js, kv, stale)
	for _, key := range []string{"job-deleted", "job-purged", "job-never"} {
		if m, ok, err := c.Get(ctx, key); err != nil || ok {
			t.Errorf("%s: mark %+v, %v, %v; want none", key, m, ok, err)
		}
	}
	if m, ok, err := c.Get(ctx, "job-held"); err != nil || !ok || m.Action != admin.MarkHold || m.Actor != "ops" {
		t.Errorf("held job: mark %+v, %v, %v; want the hold by ops", m, ok, err)
	}
	if _, ok, err := c.Get(ctx, "job-other"); err != nil || ok {
		t.Errorf("unmarked job: %v, %v; want none", ok, err)
	}
}
