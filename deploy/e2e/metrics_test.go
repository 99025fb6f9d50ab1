package e2e

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMetricsMoveAsMailFlows scrapes every service's /metrics while mail
// flows: counters move by what happened, and every Sluice metric is named
// sluice_<component>_... after the service that exports it.
func TestMetricsMoveAsMailFlows(t *testing.T) {
	w := newWorld(t, worldOpts{destRcpt: refuseNobody})
	if got := w.metric("ingress", "sluice_ingress_messages_received_total"); got != 0 {
		t.Fatalf("ingress counted %v messages before any was sent", got)
	}
	for _, to := range []string{"a@dest.test", "b@dest.test", "nobody@dest.test"} {
		if _, err := w.send("s@sender.test", []string{to}, message("metrics-"+strings.Split(to, "@")[0], "x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.dest.Wait(2, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.senders.Wait(1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		proc, name string
		filters    []string
		want       float64
	}{
		{"ingress", "sluice_ingress_messages_received_total", []string{`result="accepted"`}, 3},
		{"scheduler", "sluice_scheduler_jobs_created_total", nil, 4}, // three messages and the DSN
		{"deliverer", "sluice_deliverer_attempts_total", []string{`result="delivered"`}, 3},
		{"deliverer", "sluice_deliverer_attempts_total", []string{`result="failed"`}, 1},
		{"scheduler", "sluice_scheduler_delivery_delay_seconds_count", nil, 3},
		{"scheduler", "sluice_scheduler_bounces_requested_total", []string{`kind="failed"`}, 1},
		{"bouncer", "sluice_bouncer_dsn_generated_total", []string{`kind="failed"`}, 1},
	}
	for _, c := range checks {
		eventually(t, 15*time.Second, c.proc+" "+c.name+" "+strings.Join(c.filters, ","), func() bool {
			return w.metric(c.proc, c.name, c.filters...) == c.want
		})
	}
	if w.metric("deliverer", "sluice_deliverer_attempt_duration_seconds_count") < 4 {
		t.Error("attempt duration histogram did not record the attempts")
	}
	if w.metric("deliverer", "sluice_deliverer_dns_lookup_duration_seconds_count") < 1 {
		t.Error("DNS lookup histogram recorded nothing though dest.test was resolved by MX")
	}
	if w.metric("ingress", "sluice_ingress_store_duration_seconds_count") < 3 {
		t.Error("store duration histogram did not record the writes")
	}
	// The queue drained: no job left in any state.
	eventually(t, 15*time.Second, "queue depth back to zero", func() bool {
		return w.metric("scheduler", "sluice_scheduler_queue_depth") == 0
	})
	// Names follow sluice_<component>_<thing>_<unit>.
	for _, proc := range []string{"ingress", "scheduler", "deliverer", "bouncer"} {
		resp, err := http.Get("http://" + w.st.Metrics[proc] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		seen, depthSeries, inflow := 0, 0, ""
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "sluice_scheduler_queue_depth{") {
				depthSeries++
			}
			if strings.HasPrefix(line, "sluice_ingress_inflow_backlog") {
				inflow = line
			}
			if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "sluice_") {
				continue
			}
			seen++
			if !strings.HasPrefix(line, "sluice_"+proc+"_") {
				t.Errorf("%s exports %q, not named sluice_%s_...", proc, strings.Fields(line)[0], proc)
			}
			if strings.Contains(line, "@") {
				t.Errorf("%s has an address in a metric label: %s", proc, line)
			}
		}
		resp.Body.Close()
		if seen == 0 {
			t.Errorf("%s exports no sluice_ metrics", proc)
		}
		if proc == "scheduler" && depthSeries != 12 {
			t.Errorf("scheduler exports %d queue depth series, want 3 classes x 4 states", depthSeries)
		}
		// The ingress reads the delivery backlog (in-flow control): nothing
		// waits once the queue has drained.
		if f := strings.Fields(inflow); proc == "ingress" && (len(f) < 2 || f[len(f)-1] != "0") {
			t.Errorf("ingress exports the in-flow backlog as %q, want it read and 0", inflow)
		}
	}
	// The queue depth gauge has every class and state.
	for _, class := range []string{"high", "normal", "bulk"} {
		for _, state := range []string{"ready", "active", "deferred", "held"} {
			if w.metric("scheduler", "sluice_scheduler_queue_depth", `class="`+class+`"`, `state="`+state+`"`) != 0 {
				t.Errorf("queue depth %s/%s not zero after the queue drained", class, state)
			}
		}
	}
}
