package worker

import (
	"bytes"
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
)

func listenCapture(t *testing.T, o capture.Options) (*capture.Server, int) {
	t.Helper()
	c, err := capture.Listen("127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, ps, _ := net.SplitHostPort(c.Addr)
	port := 0
	for _, ch := range ps {
		port = port*10 + int(ch-'0')
	}
	return c, port
}

type want struct {
	outcome  sluicev1.Outcome
	reason   sluicev1.Reason
	code     uint32
	enhanced string
}

func check(t *testing.T, r *sluicev1.RecipientResult, w want) {
	t.Helper()
	if r.Outcome != w.outcome || r.Reason != w.reason || r.Code != w.code || r.EnhancedCode != w.enhanced {
		t.Errorf("%s: got %s %s %d %s %q, want %s %s %d %s", r.Address, r.Outcome, r.Reason, r.Code, r.EnhancedCode, r.Text,
			w.outcome, w.reason, w.code, w.enhanced)
	}
}

var delivered = want{sluicev1.Outcome_OUTCOME_DELIVERED, sluicev1.Reason_REASON_UNSPECIFIED, 250, "2.0.0"}

// TestDelivery runs each scenario through the whole service: job in
// SLUICE_JOBS, DNS from dnstest, SMTP to a capture server, Result read back
// from SLUICE_RESULTS.
func TestDelivery(t *testing.T) {
	e := newEnv(t)
	c, port := listenCapture(t, capture.Options{Rcpt: func(rcpt string, _ int) *smtp.SMTPError {
		switch {
		case strings.HasPrefix(rcpt, "busy@"):
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy, try later"}
		case strings.HasPrefix(rcpt, "nobody@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
		}
		return nil
	}})
	e.service(t, func(s *Settings) {
		s.SMTPPort = port
		s.Routes = map[string]string{"Routed.test": c.Addr}
	})
	e.dns.MustAdd(t,
		"mx.test. 300 IN MX 10 mx1.mx.test.",
		"mx1.mx.test. 300 IN A 127.0.0.1",
		// The preferred host refuses connections (nothing listens on
		// 127.0.0.2), the backup takes the mail.
		"fallback.test. 300 IN MX 20 good.fallback.test.",
		"fallback.test. 300 IN MX 5 dead.fallback.test.",
		"dead.fallback.test. 300 IN A 127.0.0.2",
		"good.fallback.test. 300 IN A 127.0.0.1",
		"implicit.test. 300 IN A 127.0.0.1",
		"nullmx.test. 300 IN MX 0 .",
		"routed.test. 300 IN MX 10 dead.fallback.test.",
	)
	e.dns.ServFail("servfail.test", true)
	e.dns.Drop("dropped.test", true)

	t.Run("MX delivers all recipients in one transaction", func(t *testing.T) {
		before := c.Count()
		sched := time.Now().Add(-3 * time.Second)
		job := e.enqueue(t, jobSpec{domain: "mx.test", rcpts: []string{"a@mx.test", "b@mx.test"}, subject: "one-transaction",
			lastReason: sluicev1.Reason_REASON_CONNECT, scheduled: sched})
		r := e.result(t, job, 10*time.Second)
		if len(r.Recipients) != 2 {
			t.Fatalf("%d recipient results", len(r.Recipients))
		}
		for _, rr := range r.Recipients {
			check(t, rr, delivered)
			if rr.RemoteHost != "mx1.mx.test[127.0.0.1]" || rr.Orcpt != "rfc822;"+rr.Address || rr.Notify != uint32(sluicev1.Notify_NOTIFY_FAILURE) {
				t.Errorf("remote %q orcpt %q notify %d", rr.RemoteHost, rr.Orcpt, rr.Notify)
			}
		}
		if r.Deliverer != "test" || r.OriginalHeaders != nil || r.FinishedUnixNano < r.StartedUnixNano || r.Job.JobId != job.JobId {
			t.Errorf("result: deliverer %q headers %q times %d..%d", r.Deliverer, r.OriginalHeaders, r.StartedUnixNano, r.FinishedUnixNano)
		}
		msgs, err := c.Wait(before+1, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m, err := capture.Find(msgs, []byte("Subject: one-transaction"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(m.To, ",") != "a@mx.test,b@mx.test" || m.From != "sender@origin.test" || c.Count() != before+1 {
			t.Errorf("captured from %q to %v, %d messages", m.From, m.To, c.Count()-before)
		}
		checkSpans(t, e, job, sched)
	})

	t.Run("preference order and fallback to the next MX", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "fallback.test", rcpts: []string{"x@fallback.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], delivered)
		if got := r.Recipients[0].RemoteHost; got != "good.fallback.test[127.0.0.1]" {
			t.Errorf("delivered by %q", got)
		}
	})

	t.Run("implicit MX", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "implicit.test", rcpts: []string{"x@implicit.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], delivered)
		if got := r.Recipients[0].RemoteHost; got != "implicit.test[127.0.0.1]" {
			t.Errorf("delivered by %q", got)
		}
	})

	t.Run("null MX is permanent", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "nullmx.test", rcpts: []string{"x@nullmx.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_NULL_MX, 556, "5.1.10"})
		if !bytes.Contains(r.OriginalHeaders, []byte("Subject: test")) || bytes.Contains(r.OriginalHeaders, []byte("Hello.")) {
			t.Errorf("original headers %q", r.OriginalHeaders)
		}
	})

	t.Run("NXDOMAIN is permanent", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "nowhere.test", rcpts: []string{"x@nowhere.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_NO_DOMAIN, 550, "5.1.2"})
	})

	t.Run("SERVFAIL is temporary", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "servfail.test", rcpts: []string{"x@servfail.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_TEMPORARY, sluicev1.Reason_REASON_DNS, 451, "4.4.3"})
	})

	t.Run("dropped DNS query is temporary after the timeout", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "dropped.test", rcpts: []string{"x@dropped.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_TEMPORARY, sluicev1.Reason_REASON_DNS, 451, "4.4.3"})
		if took := time.Duration(r.FinishedUnixNano - r.StartedUnixNano); took < 400*time.Millisecond {
			t.Errorf("attempt took %s, less than the DNS timeout", took)
		}
	})

	t.Run("static route overrides MX", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "routed.test", rcpts: []string{"x@routed.test"}})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], delivered)
		if got := r.Recipients[0].RemoteHost; got != "127.0.0.1[127.0.0.1]" {
			t.Errorf("delivered by %q", got)
		}
	})

	t.Run("RCPT 450 defers only that recipient", func(t *testing.T) {
		before := c.Count()
		job := e.enqueue(t, jobSpec{domain: "mx.test", rcpts: []string{"busy@mx.test", "ok@mx.test"}, subject: "partly"})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_TEMPORARY, sluicev1.Reason_REASON_REMOTE, 450, "4.2.1"})
		check(t, r.Recipients[1], delivered)
		if r.Recipients[0].Text != "mailbox busy, try later" {
			t.Errorf("text %q", r.Recipients[0].Text)
		}
		msgs, _ := c.Wait(before+1, 5*time.Second)
		m, err := capture.Find(msgs, []byte("Subject: partly"))
		if err != nil || strings.Join(m.To, ",") != "ok@mx.test" {
			t.Errorf("captured %v, %v", m.To, err)
		}
		if !bytes.HasPrefix(r.OriginalHeaders, []byte("Received:")) || !bytes.HasSuffix(r.OriginalHeaders, []byte("Subject: partly\r\n")) {
			t.Errorf("original headers %q", r.OriginalHeaders)
		}
	})

	t.Run("RCPT 550 is permanent with the remote codes and text", func(t *testing.T) {
		job := e.enqueue(t, jobSpec{domain: "mx.test", rcpts: []string{"nobody@mx.test"}})
		r := e.result(t, job, 10*time.Second)
		rr := r.Recipients[0]
		check(t, rr, want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_REMOTE, 550, "5.1.1"})
		if rr.Text != "no such user here" || rr.RemoteHost != "mx1.mx.test[127.0.0.1]" {
			t.Errorf("text %q remote %q", rr.Text, rr.RemoteHost)
		}
	})

	t.Run("REQUIRETLS against a server without STARTTLS is permanent", func(t *testing.T) {
		before := c.Count()
		job := e.enqueue(t, jobSpec{domain: "mx.test", rcpts: []string{"a@mx.test"}, requireTLS: true})
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_REQUIRE_TLS, 550, "5.7.30"})
		if c.Count() != before {
			t.Error("message was sent in the clear")
		}
	})

	t.Run("missing body is a permanent internal failure", func(t *testing.T) {
		job := &sluicev1.Job{Schema: 1, JobId: "GONE-0", QueueId: "GONE", MsgSeq: 999999, Domain: "mx.test",
			Recipients: []*sluicev1.Recipient{{Address: "a@mx.test"}}, Priority: sluicev1.Priority_PRIORITY_NORMAL, Attempt: 1}
		e.publishJob(t, job)
		r := e.result(t, job, 10*time.Second)
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_INTERNAL, 554, "5.3.0"})
		if !strings.Contains(r.Recipients[0].Text, "no longer in the queue") {
			t.Errorf("text %q", r.Recipients[0].Text)
		}
	})

	t.Run("a job's own copy of the body is what is sent, and is not echoed in the result", func(t *testing.T) {
		before := c.Count()
		content := []byte("Subject: carried\r\n\r\nthe job's copy\r\n")
		// MsgSeq names nothing: the copy alone must do.
		job := &sluicev1.Job{Schema: 1, JobId: "CARRIED-0", QueueId: "CARRIED", MsgSeq: 999998, Domain: "mx.test",
			Recipients: []*sluicev1.Recipient{{Address: "a@mx.test"}}, Priority: sluicev1.Priority_PRIORITY_NORMAL, Attempt: 1,
			Body: content, BodySize: int64(len(content))}
		e.publishJob(t, job)
		r := e.result(t, job, 10*time.Second)
		if r.Recipients[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("outcome %v: %s", r.Recipients[0].Outcome, r.Recipients[0].Text)
		}
		if len(r.Job.GetBody()) != 0 {
			t.Error("the result carries the body back")
		}
		msgs, err := c.Wait(before+1, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := msgs[len(msgs)-1].Data; !bytes.HasSuffix(got, content) {
			t.Errorf("sent %q, want it to end with the job's copy", got)
		}
	})

	t.Run("large body streamed from the object store", func(t *testing.T) {
		before := c.Count()
		big := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 16000)...)
		job := e.enqueue(t, jobSpec{domain: "mx.test", rcpts: []string{"a@mx.test"}, bigBody: big})
		r := e.result(t, job, 20*time.Second)
		check(t, r.Recipients[0], delivered)
		msgs, _ := c.Wait(before+1, 5*time.Second)
		m, err := capture.Find(msgs, []byte("Subject: big"))
		if err != nil || !bytes.Equal(m.Data, big) {
			t.Errorf("big body differs (%d vs %d bytes): %v", len(m.Data), len(big), err)
		}
	})
}

// checkSpans verifies the trace of an attempt: the queue wait from the
// scheduled time, and the attempt with its steps as children.
func checkSpans(t *testing.T, e *env, job *sluicev1.Job, sched time.Time) {
	t.Helper()
	var wait, attempt bool
	children := map[string]bool{}
	var attemptID trace.SpanID
	// The attempt span ends after the job is acknowledged.
	deadline := time.Now().Add(5 * time.Second)
	for !hasSpan(e, job, "deliverer.attempt") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	schedSpans := map[trace.SpanID]bool{}
	for _, s := range e.spans.GetSpans() {
		if s.Name == "test.schedule" {
			schedSpans[s.SpanContext.SpanID()] = true
		}
	}
	for _, s := range e.spans.GetSpans() {
		if jobAttr(s.Attributes) != job.JobId {
			continue
		}
		switch s.Name {
		case "queue wait":
			wait = true
			if !s.StartTime.Equal(time.Unix(0, sched.UnixNano())) || s.EndTime.Before(sched.Add(3*time.Second)) {
				t.Errorf("queue wait %s..%s, scheduled %s", s.StartTime, s.EndTime, sched)
			}
			if attr(s.Attributes, "sluice.defer_reason") != "connect" {
				t.Errorf("defer reason %q", attr(s.Attributes, "sluice.defer_reason"))
			}
		case "deliverer.attempt":
			attempt = true
			if !s.Parent.IsRemote() || !schedSpans[s.Parent.SpanID()] || s.Parent.TraceID() != s.SpanContext.TraceID() {
				t.Errorf("attempt span does not continue the job's trace (parent %v)", s.Parent)
			}
			attemptID = s.SpanContext.SpanID()
			if s.Status.Code == codes.Error {
				t.Errorf("attempt span status %v", s.Status)
			}
		}
	}
	for _, s := range e.spans.GetSpans() {
		if s.Parent.SpanID() == attemptID {
			children[s.Name] = true
			if s.Name == "smtp.transaction" && attr(s.Attributes, "sluice.smtp.enhanced_code") != "2.0.0" {
				t.Errorf("transaction span attrs %v", s.Attributes)
			}
		}
	}
	if !wait || !attempt || !children["dns.mx"] || !children["dns.address"] || !children["smtp.connect"] || !children["smtp.transaction"] {
		t.Errorf("spans: wait %v attempt %v children %v", wait, attempt, children)
	}
}

func hasSpan(e *env, job *sluicev1.Job, name string) bool {
	for _, s := range e.spans.GetSpans() {
		if s.Name == name && jobAttr(s.Attributes) == job.JobId {
			return true
		}
	}
	return false
}

func jobAttr(kv []attribute.KeyValue) string { return attr(kv, "sluice.job_id") }

func attr(kv []attribute.KeyValue, k string) string {
	for _, a := range kv {
		if string(a.Key) == k {
			return a.Value.Emit()
		}
	}
	return ""
}

func TestStartTLS(t *testing.T) {
	e := newEnv(t)
	plain := startTLSServer(t, false)
	strict := startTLSServer(t, true)
	// A REQUIRETLS message needs a verified certificate (RFC 8689): the
	// deliverer trusts the servers' own.
	roots := x509.NewCertPool()
	roots.AddCert(plain.Cert)
	roots.AddCert(strict.Cert)
	e.serviceWith(t, func(s *Settings) {
		s.Routes = map[string]string{"tls.test": plain.Addr, "strict.test": strict.Addr}
	}, func(d *Deps) { d.TLSPolicy.RootCAs = roots })

	job := e.enqueue(t, jobSpec{domain: "tls.test", rcpts: []string{"a@tls.test", "b@tls.test"}})
	r := e.result(t, job, 10*time.Second)
	check(t, r.Recipients[0], delivered)
	got := plain.messages()
	if len(got) != 1 || !got[0].tls || got[0].version < 0x0303 || len(got[0].to) != 2 || got[0].helo != "deliverer.test" {
		t.Fatalf("server saw %+v, want one message over TLS 1.2+ after EHLO deliverer.test", got)
	}

	// TLS without REQUIRETLS at the server cannot carry a REQUIRETLS message.
	job = e.enqueue(t, jobSpec{domain: "tls.test", rcpts: []string{"a@tls.test"}, requireTLS: true})
	r = e.result(t, job, 10*time.Second)
	check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_PERMANENT, sluicev1.Reason_REASON_REQUIRE_TLS, 550, "5.7.30"})
	if want := "REQUIRETLS support required: 127.0.0.1 does not offer REQUIRETLS"; r.Recipients[0].Text != want {
		t.Errorf("text %q, want %q", r.Recipients[0].Text, want)
	}

	job = e.enqueue(t, jobSpec{domain: "strict.test", rcpts: []string{"a@strict.test"}, requireTLS: true})
	r = e.result(t, job, 10*time.Second)
	check(t, r.Recipients[0], delivered)
	if got := strict.messages(); len(got) != 1 || !got[0].tls || !got[0].requireTLS {
		t.Errorf("strict server saw %+v", got)
	}
	var sawTLS bool
	for _, s := range e.spans.GetSpans() {
		if s.Name == "smtp.starttls" && s.Status.Code != codes.Error {
			sawTLS = true
		}
	}
	if !sawTLS {
		t.Error("no smtp.starttls span")
	}
}

// TestAckAfterResult checks that a job stays in the queue while its result
// cannot be stored, and is acknowledged once it can.
func TestAckAfterResult(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, wire.StreamResults); err != nil {
		t.Fatal(err)
	}
	e.service(t, func(s *Settings) { s.Routes = map[string]string{"ack.test": c.Addr} })
	job := e.enqueue(t, jobSpec{domain: "ack.test", rcpts: []string{"a@ack.test"}})
	if _, err := c.Wait(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	time.Sleep(300 * time.Millisecond) // let a wrong ack land, if any
	info, err := jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("jobs stream has %d messages while the result could not be stored, want 1", info.State.Msgs)
	}
	// Restore the stream: the Nak'ed job comes back, the result is stored
	// and the job acknowledged.
	if err := provision(e); err != nil {
		t.Fatal(err)
	}
	r := e.result(t, job, 15*time.Second)
	check(t, r.Recipients[0], delivered)
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, _ = jobs.Info(ctx)
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not acknowledged after its result was stored")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedeliveryIsCounted: a job that another deliverer took and gave back
// (as a crashed one does, after its ack wait) is delivered, and its attempt
// span says it is a redelivery: a possible duplicate, counted by
// sluice_deliverer_jobs_redelivered_total.
func TestRedeliveryIsCounted(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	ctx := context.Background()
	job := e.enqueue(t, jobSpec{domain: "again.test", rcpts: []string{"a@again.test"}})
	// Another deliverer takes the job from the shared consumer and returns it.
	cons, err := e.js.CreateOrUpdateConsumer(ctx, wire.StreamJobs, ConsumerConfig(job.Priority, testSettings(e).AckWait))
	if err != nil {
		t.Fatal(err)
	}
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range b.Messages() {
		n++
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("the other deliverer fetched %d jobs, want 1", n)
	}
	e.service(t, func(s *Settings) { s.Routes = map[string]string{"again.test": c.Addr} })
	check(t, e.result(t, job, 15*time.Second).Recipients[0], delivered)
	// The attempt span ends after the result is stored: wait for it.
	var redelivered []int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		attempts := 0
		redelivered = redelivered[:0]
		for _, sp := range e.spans.GetSpans() {
			if sp.Name != "deliverer.attempt" {
				continue
			}
			attempts++
			for _, a := range sp.Attributes {
				if a.Key == "sluice.redelivered" {
					redelivered = append(redelivered, a.Value.AsInt64())
				}
			}
		}
		if attempts > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(redelivered) != 1 || redelivered[0] != 1 {
		t.Fatalf("sluice.redelivered on attempt spans = %v, want [1]", redelivered)
	}
}
