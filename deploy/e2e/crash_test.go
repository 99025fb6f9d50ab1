package e2e

import (
	"bytes"
	"fmt"
	"net/mail"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

var seqHeader = regexp.MustCompile(`X-Seq: (\d+)`)

// TestKillEachServiceLosesNothing submits 1,000 messages while SIGKILLing
// each service process in turn (and restarting it). Every message the
// ingress acknowledged must end up delivered or, for the one in ten sent to
// a refusing recipient, bounced. Duplicates are possible only for work in
// flight at a kill; they are counted and reported.
func TestKillEachServiceLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test submits 1,000 messages")
	}
	const n = 1000
	w := newWorld(t, worldOpts{destRcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "refuse") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})

	var accepted sync.Map // seq -> qid
	var sent atomic.Int64
	var retries atomic.Int64
	next := make(chan int)
	go func() {
		for i := 0; i < n; i++ {
			next <- i
		}
		close(next)
	}()
	var wg sync.WaitGroup
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				rcpt := fmt.Sprintf("r%d@dest.test", i)
				if i%10 == 0 {
					rcpt = fmt.Sprintf("refuse%d@dest.test", i)
				}
				data := fmt.Sprintf("From: a@sender.test\r\nTo: %s\r\nSubject: crash %d\r\nX-Seq: %d\r\n\r\nbody %d\r\n", rcpt, i, i, i)
				// A client resubmits until it gets a 250, as real clients do.
				for attempt := 0; ; attempt++ {
					qid, err := w.send("a@sender.test", []string{rcpt}, data)
					if err == nil {
						accepted.Store(i, qid)
						break
					}
					retries.Add(1)
					if attempt > 200 {
						t.Errorf("message %d never accepted: %v", i, err)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				sent.Add(1)
			}
		}()
	}

	// Kill each service in turn while mail flows, restarting it after a pause.
	for k, name := range []string{"ingress", "scheduler", "deliverer", "bouncer", "scheduler", "deliverer"} {
		target := int64((k + 1) * n / 8)
		for sent.Load() < target && sent.Load() < n {
			time.Sleep(10 * time.Millisecond)
		}
		p := w.st.Proc(name)
		p.Kill()
		t.Logf("killed %s (pid gone) after %d accepted", name, sent.Load())
		time.Sleep(300 * time.Millisecond)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if name == "ingress" {
			w.waitSMTP(30 * time.Second)
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	delivered := map[int]int{}
	bounced := map[int]int{}
	count := func() int {
		clear(delivered)
		clear(bounced)
		for _, m := range w.dest.Messages() {
			if s := seqHeader.FindSubmatch(m.Data); s != nil {
				delivered[atoi(s[1])]++
			}
		}
		for _, m := range w.senders.Messages() {
			if s := seqHeader.FindSubmatch(m.Data); s != nil {
				bounced[atoi(s[1])]++
			}
		}
		return len(delivered) + len(bounced)
	}
	deadline := time.Now().Add(4 * time.Minute)
	for count() < n && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
	missing := []int{}
	for i := 0; i < n; i++ {
		if delivered[i] == 0 && bounced[i] == 0 {
			missing = append(missing, i)
		}
		if i%10 == 0 && delivered[i] > 0 {
			t.Errorf("message %d to a refusing recipient was delivered", i)
		}
	}
	dupDelivered, dupBounced := 0, 0
	for _, c := range delivered {
		dupDelivered += c - 1
	}
	for _, c := range bounced {
		dupBounced += c - 1
	}
	t.Logf("accepted %d (client resubmissions after errors: %d); delivered %d unique, bounced %d unique; duplicates: %d deliveries, %d DSNs",
		n, retries.Load(), len(delivered), len(bounced), dupDelivered, dupBounced)
	if f := os.Getenv("SLUICE_CRASH_REPORT"); f != "" {
		os.WriteFile(f, []byte(fmt.Sprintf("accepted=%d resubmissions=%d delivered=%d bounced=%d dup_deliveries=%d dup_dsns=%d missing=%d\n",
			n, retries.Load(), len(delivered), len(bounced), dupDelivered, dupBounced, len(missing))), 0o644)
	}
	if len(missing) > 0 {
		t.Fatalf("%d messages lost (neither delivered nor bounced), e.g. %v", len(missing), missing[:min(10, len(missing))])
	}
	if len(bounced) != n/10 {
		t.Fatalf("bounced %d distinct messages, want %d", len(bounced), n/10)
	}
	// Each DSN is a proper report to the sender.
	for _, m := range w.senders.Messages()[:3] {
		if _, err := mail.ReadMessage(bytes.NewReader(m.Data)); err != nil || m.From != "" {
			t.Fatalf("bad DSN from %q: %v", m.From, err)
		}
	}
}

func atoi(b []byte) int {
	n := 0
	for _, c := range b {
		n = n*10 + int(c-'0')
	}
	return n
}
