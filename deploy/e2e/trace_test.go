package e2e

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/services/otlptest"
)

// TestOneTracePerMessage runs the four services exporting to an OTLP
// receiver and follows one message that is deferred once for one recipient
// and refused for another: every service's spans share the message's trace
// id, parents chain correctly, the retry's queue-wait span covers the
// deferral, and the DSN's own trace links back to the message.
func TestOneTracePerMessage(t *testing.T) {
	rcv, err := otlptest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	w := newWorld(t, worldOpts{
		env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + rcv.URL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"},
		destRcpt: func(rcpt string, seen int) *smtp.SMTPError {
			switch {
			case strings.HasPrefix(rcpt, "nobody@"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			case seen == 0:
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted"}
			}
			return nil
		},
	})
	qid, err := w.send("a@sender.test", []string{"grey@dest.test", "nobody@dest.test"}, message("traced", "follow me"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.dest.Wait(1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.senders.Wait(1, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// Find the trace through the ingress span that names the queue id.
	var traceID string
	var spans []otlptest.Span
	byName := func(name string) []otlptest.Span {
		var out []otlptest.Span
		for _, s := range spans {
			if s.Name == name {
				out = append(out, s)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
		return out
	}
	eventually(t, 20*time.Second, "every span of the message is exported", func() bool {
		for _, s := range rcv.Spans() {
			if s.Name == "ingress.receive" && s.Attrs["sluice.queue_id"] == qid {
				traceID = s.TraceID
			}
		}
		if traceID == "" {
			return false
		}
		spans = rcv.Trace(traceID)
		return len(byName("deliverer.attempt")) == 2 && len(byName("scheduler.result")) == 2 &&
			len(byName("bouncer.dsn")) == 1 && len(byName("queue wait")) == 2
	})

	services := map[string]int{}
	ids := map[string]otlptest.Span{}
	for _, s := range spans {
		services[s.Service]++
		ids[s.SpanID] = s
	}
	for _, svc := range []string{"sluice-ingress", "sluice-scheduler", "sluice-deliverer", "sluice-bouncer"} {
		if services[svc] == 0 {
			t.Errorf("no %s span in trace %s (services: %v)", svc, traceID, services)
		}
	}
	// Every attribute is ours (sluice.*) or from the OpenTelemetry
	// semantic conventions, so a dashboard can rely on the names.
	semconv := []string{"messaging.", "server.", "client.", "network.", "tls.", "error.type", "exception.", "otel."}
	for _, s := range spans {
		for k := range s.Attrs {
			ok := strings.HasPrefix(k, "sluice.")
			for _, p := range semconv {
				ok = ok || strings.HasPrefix(k, p)
			}
			if !ok {
				t.Errorf("span %s of %s has attribute %q: neither sluice.* nor an OpenTelemetry semantic convention", s.Name, s.Service, k)
			}
		}
	}
	// ancestor reports whether want is s or one of its ancestors.
	ancestor := func(s otlptest.Span, want otlptest.Span) bool {
		for i := 0; i < 20; i++ {
			if s.SpanID == want.SpanID {
				return true
			}
			p, ok := ids[s.ParentSpanID]
			if !ok {
				return false
			}
			s = p
		}
		return false
	}
	receive := byName("ingress.receive")[0]
	split := byName("scheduler.split")[0]
	attempts := byName("deliverer.attempt")
	results := byName("scheduler.result")
	waits := byName("queue wait")
	dsn := byName("bouncer.dsn")[0]
	if receive.ParentSpanID != "" && ids[receive.ParentSpanID].SpanID != "" {
		t.Errorf("ingress.receive has a parent in the trace; it should be the root")
	}
	if split.ParentSpanID != receive.SpanID {
		t.Errorf("scheduler.split's parent = %s, want ingress.receive %s", split.ParentSpanID, receive.SpanID)
	}
	if !ancestor(attempts[0], split) {
		t.Errorf("the first attempt does not descend from scheduler.split")
	}
	if !ancestor(results[0], attempts[0]) {
		t.Errorf("the first result does not descend from the first attempt")
	}
	if !ancestor(attempts[1], results[0]) || !ancestor(waits[1], results[0]) {
		t.Errorf("the retry (attempt and its queue wait) does not descend from the result that scheduled it")
	}
	if !ancestor(dsn, results[0]) {
		t.Errorf("bouncer.dsn does not descend from the result that bounced")
	}
	if attempts[0].Attrs["sluice.attempt"] != "1" || attempts[1].Attrs["sluice.attempt"] != "2" {
		t.Errorf("attempt numbers = %q, %q", attempts[0].Attrs["sluice.attempt"], attempts[1].Attrs["sluice.attempt"])
	}
	// The wait before the retry is a bar as long as the deferral, with its reason.
	deferral := attempts[1].Start.Sub(results[0].End)
	wait := waits[1].End.Sub(waits[1].Start)
	if waits[1].Attrs["sluice.defer_reason"] != "remote" {
		t.Errorf("queue wait reason = %q, want remote", waits[1].Attrs["sluice.defer_reason"])
	}
	if wait < 900*time.Millisecond || absDur(wait-deferral) > 250*time.Millisecond {
		t.Errorf("queue wait lasted %s; the job was deferred for %s", wait, deferral)
	}
	// The delivery attempt has its protocol children with the remote reply.
	var tx []otlptest.Span
	for _, s := range spans {
		if s.Name == "smtp.transaction" && s.ParentSpanID == attempts[0].SpanID {
			tx = append(tx, s)
		}
	}
	if len(tx) != 1 {
		t.Fatalf("first attempt has %d smtp.transaction spans", len(tx))
	}
	if tx[0].Attrs["sluice.smtp.code"] != "451" || tx[0].Attrs["sluice.smtp.enhanced_code"] != "4.7.1" || tx[0].Attrs["sluice.smtp.text"] != "greylisted" {
		t.Errorf("the transaction span does not carry the remote reply: %v", tx[0].Attrs)
	}
	if !tx[0].StatusError || !attempts[0].StatusError || attempts[1].StatusError {
		t.Errorf("span status: failed transaction error=%v, failed attempt error=%v, delivered attempt error=%v",
			tx[0].StatusError, attempts[0].StatusError, attempts[1].StatusError)
	}
	for _, name := range []string{"smtp.connect", "dns.mx"} {
		found := false
		for _, s := range spans {
			if s.Name == name && s.ParentSpanID == attempts[0].SpanID {
				found = true
			}
		}
		if !found {
			t.Errorf("first attempt has no %s child", name)
		}
	}
	// The DSN is a message of its own, whose trace links to this one.
	linked := false
	for _, s := range rcv.Spans() {
		if s.Name == "bouncer.dsn_message" && s.TraceID != traceID {
			for _, l := range s.Links {
				if l == traceID {
					linked = true
				}
			}
		}
	}
	if !linked {
		t.Errorf("no DSN trace links back to %s", traceID)
	}
	t.Logf("trace %s: %d spans from %v", traceID, len(spans), services)
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
