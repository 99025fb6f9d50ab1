package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
)

func (w *world) shaping(args ...string) (int, string, string) {
	w.t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"shaping", args[0], "-server", w.ns.ClientURL(), "-timeout", "3s"}, args[1:]...)
	code := run(full, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// TestShapingCommands: an operator sees the site a delivery used, suspends
// it by naming a destination domain, sees a message wait for it in the
// queue, resumes it, and the message goes once retried.
func TestShapingCommands(t *testing.T) {
	w := newWorld(t, time.Second)
	site := w.dest.Addr // dest.test is routed to the capture server: its site
	qid := w.send("a@origin.test", "x@dest.test")
	w.eventually("first message delivered", 10*time.Second, func() bool { return w.dest.Count() == 1 })

	// The cached session holds a slot; slow start raised the limit.
	var sites []api.ShapingSite
	w.eventually("show lists the site", 5*time.Second, func() bool {
		code, out, _ := w.shaping("show", "-json")
		sites = nil
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var s api.ShapingSite
			if json.Unmarshal([]byte(line), &s) == nil {
				sites = append(sites, s)
			}
		}
		return code == 0 && len(sites) == 1 && sites[0].Limit == 6
	})
	if s := sites[0]; s.Site != site || s.MaxConnections != 20 || s.Connections != 1 || s.Holders["deliverer-test"] != 1 {
		t.Errorf("show: %+v, want site %s, 1 connection held by deliverer-test, limit 6 of 20", s, site)
	}

	// Suspend by domain: the deliverer resolves it to the site.
	code, out, errs := w.shaping("suspend", "dest.test", "-for", "10m", "-reason", "their maintenance")
	if code != 0 || !strings.Contains(out, site) || !strings.Contains(out, "their maintenance") {
		t.Fatalf("suspend: exit %d\n%s%s", code, out, errs)
	}
	t.Logf("sluice shaping suspend dest.test -for 10m:\n%s", out)
	second := w.send("a@origin.test", "y@dest.test")
	var shown string
	// Parked: deferred until the suspension ends (a deliverer first records
	// that the job waits, then parks it; a retry before that finds it ready).
	w.eventually("the waiting message explains itself", 10*time.Second, func() bool {
		_, shown, _ = w.cli("show", second)
		return strings.Contains(shown, "waiting:") && strings.Contains(shown, "throttled by site "+site) &&
			strings.Contains(shown, "their maintenance") && strings.Contains(shown, "): deferred")
	})
	t.Logf("sluice queue show of the waiting message:\n%s", shown)
	if w.dest.Count() != 1 {
		t.Errorf("%d messages arrived while the site was suspended, want 1", w.dest.Count())
	}
	code, out, errs = w.shaping("resume", "dest.test")
	if code != 0 || strings.Contains(out, "until") {
		t.Fatalf("resume: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := w.cli("retry", second); code != 0 {
		t.Fatalf("retry of the parked message: exit %d: %s", code, errs)
	}
	w.eventually("the parked message delivered after resume and retry", 15*time.Second, func() bool { return w.dest.Count() == 2 })
	_ = qid

	// Bad requests are refused with a reason.
	if code, _, errs := w.shaping("suspend", "nowhere.invalid"); code != 1 || !strings.Contains(errs, "nowhere.invalid") {
		t.Errorf("suspend of an unknown name: exit %d: %s", code, errs)
	}
	if code, _, _ := w.shaping("suspend"); code != 2 {
		t.Errorf("suspend without a site: exit %d, want 2", code)
	}
}

// TestShapingShowQueued: show counts the jobs waiting in the queue for each
// site, from the scheduler's index resolved through the deliverer's routes:
// three messages to dest.test (its capture server's site) and two to
// apart.test (shaped apart, "domain:apart.test"), both sites suspended so
// that the jobs wait.
func TestShapingShowQueued(t *testing.T) {
	w := newWorld(t, time.Second)
	site := w.dest.Addr
	for _, name := range []string{"dest.test", "domain:apart.test"} {
		if code, out, errs := w.shaping("suspend", name, "-for", "10m", "-reason", "test"); code != 0 {
			t.Fatalf("suspend %s: exit %d\n%s%s", name, code, out, errs)
		}
	}
	for i := range 3 {
		w.send("a@origin.test", fmt.Sprintf("r%d@dest.test", i))
	}
	for i := range 2 {
		w.send("a@origin.test", fmt.Sprintf("r%d@apart.test", i))
	}
	var got map[string]int
	var resp api.ShapingResponse
	w.eventually("show counts the queued jobs per site", 15*time.Second, func() bool {
		code, out, _ := w.shaping("show", "-json")
		got = map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var s api.ShapingSite
			if json.Unmarshal([]byte(line), &s) == nil {
				got[s.Site] = s.Queued
			}
		}
		return code == 0 && got[site] == 3 && got["domain:apart.test"] == 2
	})
	if len(got) != 2 {
		t.Errorf("show lists %v, want the two sites", got)
	}
	if w.dest.Count() != 0 {
		t.Errorf("%d messages delivered to suspended sites", w.dest.Count())
	}
	if err := shapingCall(&queueOpts{server: w.ns.ClientURL(), timeout: 3 * time.Second}, api.ShapingShow, api.ShapingRequest{}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.QueuedUnknown != "" || resp.QueuedElsewhere != 0 {
		t.Errorf("queued unknown %q, elsewhere %d", resp.QueuedUnknown, resp.QueuedElsewhere)
	}
	// The table: a QUEUED column with the counts; one site by name.
	code, out, errs := w.shaping("show", "apart.test")
	if code != 0 || !strings.Contains(out, "QUEUED") {
		t.Fatalf("show apart.test: exit %d\n%s%s", code, out, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "domain:apart.test") || strings.Fields(lines[1])[3] != "2" {
		t.Errorf("show apart.test:\n%s\nwant one row with 2 queued", out)
	}
	t.Logf("sluice shaping show apart.test:\n%s", out)

	// Without a scheduler the count is unknown, and says so.
	w.stopScheduler()
	code, out, errs = w.shaping("show")
	if code != 0 || !strings.Contains(out, "queued jobs unknown") || !strings.Contains(out, "?") {
		t.Errorf("show without a scheduler: exit %d\n%s%s", code, out, errs)
	}
}
