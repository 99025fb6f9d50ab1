package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestInProcessServices runs the four services the way `make run` does by
// default: in one process with the embedded NATS server, connected to it
// in-process. Mail is delivered through DNS and a refused recipient bounces,
// each service still has its own metrics endpoint and log file, and a
// service stopped and started again picks up where it left off.
func TestInProcessServices(t *testing.T) {
	w := newWorld(t, worldOpts{destRcpt: refuseNobody, inProcess: true})
	qid, err := w.send("s@sender.test", []string{"a@dest.test"}, message("inproc-a", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.send("s@sender.test", []string{"nobody@dest.test"}, message("inproc-nobody", "x")); err != nil {
		t.Fatal(err)
	}
	ms, err := w.dest.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ms[0].Data[:300], []byte(qid)) || !bytes.HasSuffix(ms[0].Data, []byte(message("inproc-a", "hello"))) {
		t.Fatalf("delivered message is not %s as sent:\n%.400s", qid, ms[0].Data)
	}
	dsns, err := w.senders.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := parseDSN(t, dsns[0].Data); len(d.recipients) != 1 || d.recipients[0].Get("Action") != "failed" ||
		!strings.Contains(d.recipients[0].Get("Final-Recipient"), "nobody@dest.test") {
		t.Fatalf("DSN recipients = %v, want one failure about nobody@dest.test", d.recipients)
	}

	// Each service's own endpoint counts its own part.
	for _, c := range []struct {
		proc, name, filter string
		want               float64
	}{
		{"ingress", "sluice_ingress_messages_received_total", `result="accepted"`, 2},
		{"deliverer", "sluice_deliverer_attempts_total", `result="delivered"`, 2}, // a@ and the DSN
		{"deliverer", "sluice_deliverer_attempts_total", `result="failed"`, 1},
		{"bouncer", "sluice_bouncer_dsn_generated_total", `kind="failed"`, 1},
		{"scheduler", "sluice_scheduler_messages_completed_total", "", 3},
	} {
		eventually(t, 15*time.Second, c.proc+" "+c.name, func() bool {
			return w.metric(c.proc, c.name, c.filter) == c.want
		})
	}

	// Each service logs to its own file, as its process would.
	for _, p := range w.st.Procs() {
		b, err := os.ReadFile(p.Log())
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := bytes.Cut(b, []byte("\n"))
		var line struct{ Msg, Service string }
		if err := json.Unmarshal(first, &line); err != nil {
			t.Fatalf("%s log does not start with a JSON line: %v\n%.300s", p.Name, err, b)
		}
		if line.Service != p.Name {
			t.Errorf("%s log holds lines of service %q", p.Name, line.Service)
		}
	}
	if b, _ := os.ReadFile(w.st.Proc("deliverer").Log()); !bytes.Contains(b, []byte(`"queue_id":"`+qid+`"`)) {
		t.Errorf("deliverer log has no line about %s", qid)
	}

	// A service stopped and started again (as sluice-local restarts one
	// that ends) goes on with the queue.
	sched := w.st.Proc("scheduler")
	sched.Stop(10 * time.Second)
	if code := sched.ExitCode(); code != 0 {
		t.Fatalf("scheduler stopped with code %d, want 0", code)
	}
	qid2, err := w.send("s@sender.test", []string{"b@dest.test"}, message("inproc-b", "again"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sched.Start(); err != nil {
		t.Fatal(err)
	}
	ms, err = w.dest.Wait(2, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ms[1].Data[:300], []byte(qid2)) {
		t.Fatalf("second delivery is not %s:\n%.300s", qid2, ms[1].Data)
	}
}
