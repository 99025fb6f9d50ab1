package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// dsn is what a test reads out of a delivery status notification.
type dsn struct {
	header     mail.Header
	perMessage textproto.MIMEHeader
	recipients []textproto.MIMEHeader
	original   string
}

// parseDSN reads an RFC 3464 report with the standard library's MIME parser.
func parseDSN(t *testing.T, data []byte) dsn {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("DSN is not a message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN content type = %q (%v), want multipart/report; report-type=delivery-status", m.Header.Get("Content-Type"), err)
	}
	d := dsn{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		body, _ := io.ReadAll(p)
		switch ct {
		case "message/delivery-status":
			r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			h, err := r.ReadMIMEHeader()
			if err != nil && err != io.EOF {
				t.Fatalf("per-message fields: %v", err)
			}
			d.perMessage = h
			for {
				h, err := r.ReadMIMEHeader()
				if len(h) > 0 {
					d.recipients = append(d.recipients, h)
				}
				if err != nil {
					break
				}
			}
		case "text/rfc822-headers", "message/rfc822":
			d.original = string(body)
		}
	}
	return d
}

// TestDeliveredToMXFoundByDNS: a message to a domain whose MX is served by
// the DNS server arrives there with every recipient in one transaction, and
// with our Received header naming the queue id.
func TestDeliveredToMXFoundByDNS(t *testing.T) {
	w := newWorld(t, worldOpts{})
	qid, err := w.send("a@sender.test", []string{"b@dest.test", "c@DEST.test"}, message("mx", "hello"))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := w.dest.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if m.From != "a@sender.test" || len(m.To) != 2 {
		t.Fatalf("envelope = %q -> %q, want both recipients in one transaction", m.From, m.To)
	}
	if !bytes.HasPrefix(m.Data, []byte("Received: ")) || !bytes.Contains(m.Data[:300], []byte(qid)) {
		t.Fatalf("delivered message does not start with a Received header naming %s:\n%.300s", qid, m.Data)
	}
	if !bytes.HasSuffix(m.Data, []byte(message("mx", "hello"))) {
		t.Fatalf("body changed in transit:\n%s", m.Data)
	}
	eventually(t, 10*time.Second, "scheduler counts the message completed", func() bool {
		return w.metric("scheduler", "sluice_scheduler_messages_completed_total") >= 1
	})
}

// TestTemporaryFailureThenSuccess: a 4xx on the first attempt is retried from
// a durable schedule and delivered on the second attempt.
func TestTemporaryFailureThenSuccess(t *testing.T) {
	w := newWorld(t, worldOpts{destRcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if seen == 0 {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, come back later"}
		}
		return nil
	}})
	start := time.Now()
	if _, err := w.send("a@sender.test", []string{"grey@dest.test"}, message("grey", "retry me")); err != nil {
		t.Fatal(err)
	}
	ms, err := w.dest.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ms[0].Data, []byte("retry me")) {
		t.Fatalf("unexpected message %s", ms[0].Data)
	}
	// The retry waits for the schedule (min backoff 1s, jitter 10%).
	if d := ms[0].Received.Sub(start); d < 800*time.Millisecond {
		t.Fatalf("delivered %s after submission: the retry did not wait for its schedule", d)
	}
	if n := w.metric("scheduler", "sluice_scheduler_retries_scheduled_total"); n != 1 {
		t.Fatalf("retries scheduled = %v, want 1", n)
	}
	if len(w.senders.Messages()) != 0 {
		t.Fatal("a DSN was sent for a message that was delivered")
	}
}

// TestPermanentFailureBounces: a 5xx produces an RFC 3464 DSN to the sender,
// from the null sender, that a MIME parser reads.
func TestPermanentFailureBounces(t *testing.T) {
	w := newWorld(t, worldOpts{destRcpt: func(rcpt string, seen int) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "nobody@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
		}
		return nil
	}})
	if _, err := w.send("a@sender.test", []string{"nobody@dest.test", "ok@dest.test"}, message("bounce", "to a missing user")); err != nil {
		t.Fatal(err)
	}
	ds, err := w.senders.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ds[0].From != "" || len(ds[0].To) != 1 || ds[0].To[0] != "a@sender.test" {
		t.Fatalf("DSN envelope = %q -> %q, want <> -> a@sender.test", ds[0].From, ds[0].To)
	}
	d := parseDSN(t, ds[0].Data)
	if len(d.recipients) != 1 {
		t.Fatalf("DSN reports %d recipients, want only the failed one: %v", len(d.recipients), d.recipients)
	}
	r := d.recipients[0]
	if r.Get("Action") != "failed" || r.Get("Status") != "5.1.1" ||
		!strings.Contains(r.Get("Final-Recipient"), "nobody@dest.test") ||
		!strings.Contains(r.Get("Diagnostic-Code"), "550") || !strings.Contains(r.Get("Diagnostic-Code"), "no such user here") {
		t.Fatalf("recipient fields = %v", r)
	}
	if !strings.Contains(d.perMessage.Get("Reporting-MTA"), "sluice.test") {
		t.Fatalf("Reporting-MTA = %q", d.perMessage.Get("Reporting-MTA"))
	}
	if !strings.Contains(d.original, "Message-ID: <bounce@sender.test>") {
		t.Fatalf("original headers missing from the DSN: %q", d.original)
	}
	// The good recipient was delivered, once.
	if ms, err := w.dest.Wait(1, 10*time.Second); err != nil || len(ms) != 1 || ms[0].To[0] != "ok@dest.test" {
		t.Fatalf("deliveries = %+v, %v", ms, err)
	}
}

// TestLifetimeExpiryBounces: a destination that always defers makes the job
// expire after the queue lifetime, and the sender gets a DSN saying so.
func TestLifetimeExpiryBounces(t *testing.T) {
	w := newWorld(t, worldOpts{lifetime: "4s", destRcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
	}})
	start := time.Now()
	if _, err := w.send("a@sender.test", []string{"full@dest.test"}, message("expire", "never fits")); err != nil {
		t.Fatal(err)
	}
	ds, err := w.senders.Wait(1, 40*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Fatalf("bounced after %s, before the 4s lifetime", d)
	}
	d := parseDSN(t, ds[0].Data)
	if len(d.recipients) != 1 || d.recipients[0].Get("Action") != "failed" || !strings.HasPrefix(d.recipients[0].Get("Status"), "4.4.7") &&
		!strings.HasPrefix(d.recipients[0].Get("Status"), "4.2.2") {
		t.Fatalf("expiry DSN recipient fields = %v", d.recipients)
	}
	if w.metric("scheduler", "sluice_scheduler_expired_total") < 1 {
		t.Fatal("scheduler did not count the expiry")
	}
	if len(w.dest.Messages()) != 0 {
		t.Fatal("a message that always got 452 was delivered")
	}
}

// TestNullSenderNeverBounces: a failing message from <> produces no DSN.
func TestNullSenderNeverBounces(t *testing.T) {
	w := newWorld(t, worldOpts{destRcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}})
	if _, err := w.send("", []string{"gone@dest.test"}, message("nullsender", "a bounce that bounces")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the permanent failure of a null-sender message is processed", func() bool {
		return w.metric("scheduler", "sluice_scheduler_bounces_suppressed_total") >= 1
	})
	// Give a (wrong) DSN time to travel through the bouncer and deliverer.
	time.Sleep(2 * time.Second)
	if n := len(w.senders.Messages()) + len(w.dest.Messages()); n != 0 {
		t.Fatalf("%d messages were sent for a failed null-sender message", n)
	}
	if w.metric("bouncer", "sluice_bouncer_dsn_generated_total") != 0 {
		t.Fatal("the bouncer generated a DSN")
	}
}

// TestTwentyMegabytesByteIdentical: a 20 MB message travels through the
// object store and arrives byte for byte.
func TestTwentyMegabytesByteIdentical(t *testing.T) {
	w := newWorld(t, worldOpts{})
	raw := make([]byte, 15<<20)
	rand.Read(raw)
	var body strings.Builder
	enc := base64.StdEncoding.EncodeToString(raw)
	for len(enc) > 76 {
		body.WriteString(enc[:76])
		body.WriteString("\r\n")
		enc = enc[76:]
	}
	body.WriteString(enc)
	data := message("big", body.String())
	if len(data) < 20<<20 {
		t.Fatalf("test message is only %d bytes", len(data))
	}
	if _, err := w.send("a@sender.test", []string{"big@dest.test"}, data); err != nil {
		t.Fatal(err)
	}
	ms, err := w.dest.Wait(1, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := ms[0].Data
	if !bytes.HasSuffix(got, []byte(data)) {
		t.Fatalf("20 MB message changed in transit: got %d bytes, sent %d", len(got), len(data))
	}
	prefix := got[:len(got)-len(data)]
	if !bytes.HasPrefix(prefix, []byte("Received: ")) || bytes.Count(prefix, []byte("\r\n")) > 4 {
		t.Fatalf("unexpected prefix before the sent data: %q", prefix)
	}
}

// TestTwoDeliverersShareASlowDestination: both deliverer processes take a
// share of the work, and no message is delivered twice.
func TestTwoDeliverersShareASlowDestination(t *testing.T) {
	const n = 24
	w := newWorld(t, worldOpts{destDelay: 150 * time.Millisecond, deliverers: 2,
		config: map[string]map[string]any{"deliverer": {"concurrency": 2}}})
	for i := 0; i < n; i++ {
		if _, err := w.send("a@sender.test", []string{fmt.Sprintf("r%d@dest.test", i)}, message(fmt.Sprintf("slow%d", i), "x")); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := w.dest.Wait(n, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range ms {
		seen[m.To[0]]++
	}
	for r, c := range seen {
		if c != 1 {
			t.Errorf("%s delivered %d times", r, c)
		}
	}
	var a, b float64
	eventually(t, 10*time.Second, "deliverers count every delivery", func() bool {
		a = w.metric("deliverer-1", "sluice_deliverer_attempts_total", `result="delivered"`)
		b = w.metric("deliverer-2", "sluice_deliverer_attempts_total", `result="delivered"`)
		return a+b >= n
	})
	t.Logf("deliverer-1 delivered %v, deliverer-2 delivered %v", a, b)
	if a+b != n || a < n/6 || b < n/6 {
		t.Fatalf("work split %v/%v of %d: both deliverers must take a share", a, b, n)
	}
}
