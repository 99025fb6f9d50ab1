package worker

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestPriority queues jobs in all three classes and lets one worker at
// concurrency 1 take them: high ones go first, but bulk is not starved.
func TestPriority(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	classes := map[sluicev1.Priority]string{sluicev1.Priority_PRIORITY_HIGH: "high", sluicev1.Priority_PRIORITY_NORMAL: "normal", sluicev1.Priority_PRIORITY_BULK: "bulk"}
	for _, p := range []sluicev1.Priority{sluicev1.Priority_PRIORITY_BULK, sluicev1.Priority_PRIORITY_NORMAL, sluicev1.Priority_PRIORITY_HIGH} {
		for i := range 10 {
			e.enqueue(t, jobSpec{domain: "prio.test", rcpts: []string{"a@prio.test"}, class: p, subject: fmt.Sprintf("%s-%d", classes[p], i)})
		}
	}
	e.service(t, func(s *Settings) {
		s.Concurrency = 1
		s.Routes = map[string]string{"prio.test": c.Addr}
	})
	msgs, err := c.Wait(30, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, m := range msgs {
		i := bytes.Index(m.Data, []byte("Subject: "))
		s := string(m.Data[i+9:])
		order = append(order, s[:strings.IndexAny(s, "-")])
	}
	count := map[string]int{}
	for _, o := range order[:12] {
		count[o]++
	}
	t.Logf("order: %v", order)
	if order[0] != "high" || count["high"] < 7 || count["bulk"] < 1 || count["normal"] < 2 {
		t.Errorf("first 12 deliveries %v, want high first, >=7 high, >=2 normal, >=1 bulk", count)
	}
}

// TestSharedConsumers runs two deliverers against one slow destination:
// each delivers a share, and no job is delivered twice.
func TestSharedConsumers(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{Delay: 60 * time.Millisecond})
	for _, name := range []string{"one", "two"} {
		e.service(t, func(s *Settings) {
			s.Instance = name
			s.Routes = map[string]string{"shared.test": c.Addr}
		})
	}
	const n = 40
	var jobs []*sluicev1.Job
	for i := range n {
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: "shared.test", rcpts: []string{"a@shared.test"}, subject: fmt.Sprintf("shared-%d", i)}))
	}
	by := map[string]int{}
	for _, j := range jobs {
		r := e.result(t, j, 20*time.Second)
		check(t, r.Recipients[0], delivered)
		by[r.Deliverer]++
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive now
	msgs := c.Messages()
	seen := map[string]bool{}
	for _, m := range msgs {
		i := bytes.Index(m.Data, []byte("Subject: "))
		s := strings.TrimSpace(strings.SplitN(string(m.Data[i+9:]), "\r\n", 2)[0])
		if seen[s] {
			t.Errorf("%s delivered twice", s)
		}
		seen[s] = true
	}
	if len(msgs) != n || len(seen) != n {
		t.Errorf("captured %d messages (%d distinct), want %d", len(msgs), len(seen), n)
	}
	if by["one"] == 0 || by["two"] == 0 || by["one"]+by["two"] != n {
		t.Errorf("shares %v", by)
	}
	t.Logf("shares %v", by)
}
