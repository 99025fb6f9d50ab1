package service

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// nats.go v1.55 starts this goroutine with a connection's first
		// async publish and can hand it a nil channel when the connection
		// closes at that moment (newAsyncReply against cleanupReplySub):
		// it then blocks forever, through no fault of the code under test.
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	)
}

// harness is a running bouncer on an embedded JetStream server.
type harness struct {
	t   *testing.T
	js  jetstream.JetStream
	svc *Service
	tel *telemetry.Telemetry
	rec *tracetest.SpanRecorder
}

func start(t *testing.T, queue func(*config.Queue)) *harness {
	t.Helper()
	ctx := context.Background()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	q := config.DefaultQueue()
	if queue != nil {
		queue(&q)
	}
	if err := streams.Provision(ctx, js, q); err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.Setup(ctx, "bouncer", telemetry.Env{}, nil, "debug")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	// With no exporter tel.Tracer records nothing; the test reads spans
	// through a recorder on the provider, with the provider's own tracer.
	rec := tracetest.NewSpanRecorder()
	tel.TP.RegisterSpanProcessor(rec)
	tel.Tracer = tel.TP.Tracer("bouncer")

	s := Default().Bouncer
	s.Hostname = "mx.sluice.test"
	s.Postmaster = "postmaster@sluice.test"
	svc, err := New(s, q, js, tel.Tracer, tel.Meter, telemetry.NewLogger(t.Output(), "bouncer", "debug"))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := svc.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := svc.Close(cctx); err != nil {
			t.Errorf("second close: %v", err)
		}
	})
	return &harness{t: t, js: js, svc: svc, tel: tel, rec: rec}
}

const (
	qid   = "01ABCDEFGHJKMNPQRSTVWXYZ"
	jobID = qid + "-0"
)

func bounce(kind sluicev1.BounceKind) *sluicev1.Bounce {
	now := time.Now()
	return &sluicev1.Bounce{
		Schema: wire.SchemaVersion,
		Kind:   kind,
		Job: &sluicev1.Job{
			Schema: wire.SchemaVersion, JobId: jobID, QueueId: qid,
			MailFrom: "alice@example.com", Domain: "example.org", Attempt: 2,
			ReceivedUnixNano: now.Add(-time.Hour).UnixNano(), ExpiresUnixNano: now.Add(96 * time.Hour).UnixNano(),
			Envid: "env 42",
			Recipients: []*sluicev1.Recipient{
				{Address: "bob@example.org", Orcpt: "rfc822;Bob@Example.org"},
				{Address: "carol@example.org"},
			},
		},
		Recipients: []*sluicev1.RecipientResult{
			{Address: "bob@example.org", Outcome: sluicev1.Outcome_OUTCOME_PERMANENT, Reason: sluicev1.Reason_REASON_REMOTE,
				Code: 550, EnhancedCode: "5.1.1", Text: "user unknown", RemoteHost: "mx1.example.org", Orcpt: "rfc822;Bob@Example.org"},
			{Address: "carol@example.org", Outcome: sluicev1.Outcome_OUTCOME_PERMANENT, Reason: sluicev1.Reason_REASON_REMOTE,
				Code: 552, EnhancedCode: "5.2.2", Text: "mailbox full", RemoteHost: "mx1.example.org"},
		},
		OriginalHeaders: []byte("From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hello there\r\nMessage-ID: <m1@example.com>\r\n\r\n"),
		CreatedUnixNano: now.UnixNano(),
	}
}

// publish sends a bounce request the way the scheduler does, inside a span
// of its own, and returns that span's context.
func (h *harness) publish(b *sluicev1.Bounce, msgID string) trace.SpanContext {
	h.t.Helper()
	ctx, span := h.tel.Tracer.Start(context.Background(), "test.scheduler")
	defer span.End()
	data, err := proto.Marshal(b)
	if err != nil {
		h.t.Fatal(err)
	}
	m := nats.NewMsg(wire.BounceSubject(b.GetJob().GetJobId()))
	m.Data = data
	telemetry.Inject(ctx, m.Header)
	if _, err := h.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID)); err != nil {
		h.t.Fatal(err)
	}
	return span.SpanContext()
}

// waitIdle waits until every request published so far has been settled:
// the work-queue stream is empty and nothing is pending.
func (h *harness) waitIdle() {
	h.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := h.js.Stream(ctx, wire.StreamBounces)
		if err != nil {
			h.t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		ci, err := h.js.Consumer(ctx, wire.StreamBounces, wire.ConsumerBouncer)
		if err != nil {
			h.t.Fatal(err)
		}
		cinfo, err := ci.Info(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		if info.State.Msgs == 0 && cinfo.NumPending == 0 && cinfo.NumAckPending == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatal("bounce requests were not settled within 10s")
}

// stored returns every message in SLUICE_MSGS with its NATS headers.
func (h *harness) stored() ([]*sluicev1.Message, []nats.Header) {
	h.t.Helper()
	ctx := context.Background()
	st, err := h.js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var msgs []*sluicev1.Message
	var hdrs []nats.Header
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			h.t.Fatal(err)
		}
		var m sluicev1.Message
		if err := proto.Unmarshal(raw.Data, &m); err != nil {
			h.t.Fatal(err)
		}
		if raw.Subject != wire.MessageSubject(m.GetQueueId()) {
			h.t.Errorf("message %s stored under subject %s", m.GetQueueId(), raw.Subject)
		}
		msgs = append(msgs, &m)
		hdrs = append(hdrs, raw.Header)
	}
	return msgs, hdrs
}

// counter reads a counter back from the Prometheus registry.
func (h *harness) counter(name, label, value string) float64 {
	h.t.Helper()
	fams, err := h.tel.Registry.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabel(m, label, value) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	if name == "" {
		return true
	}
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// dsnReport is a DSN body read back with a MIME parser.
type dsnReport struct {
	header     message.Header
	reportType string
	perMessage textproto.Header
	recipients []textproto.Header
	quoted     string
}

func parseDSN(t *testing.T, body []byte) dsnReport {
	t.Helper()
	e, err := message.Read(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	r := dsnReport{header: e.Header}
	mt, params, _ := e.Header.ContentType()
	if mt != "multipart/report" {
		t.Fatalf("Content-Type %q", mt)
	}
	r.reportType = params["report-type"]
	mr := e.MultipartReader()
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := p.Header.ContentType()
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		switch ct {
		case "message/delivery-status":
			br := bufio.NewReader(bytes.NewReader(b))
			if r.perMessage, err = textproto.ReadHeader(br); err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := br.Peek(1); err == io.EOF {
					break
				}
				h, err := textproto.ReadHeader(br)
				if err != nil {
					t.Fatal(err)
				}
				r.recipients = append(r.recipients, h)
			}
		case "text/rfc822-headers":
			r.quoted = string(b)
		}
	}
	return r
}

func TestFailedBounceBecomesDSN(t *testing.T) {
	h := start(t, nil)
	parent := h.publish(bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED), jobID+"/2/failed")
	h.waitIdle()

	msgs, hdrs := h.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages on %s, want 1 DSN", len(msgs), wire.StreamMessages)
	}
	m := msgs[0]
	if m.GetMailFrom() != "" || !m.GetIsDsn() || m.GetSchema() != wire.SchemaVersion {
		t.Errorf("DSN envelope: mail_from %q is_dsn %v schema %d", m.GetMailFrom(), m.GetIsDsn(), m.GetSchema())
	}
	if len(m.GetRecipients()) != 1 || m.GetRecipients()[0].GetAddress() != "alice@example.com" ||
		m.GetRecipients()[0].GetNotify() != uint32(sluicev1.Notify_NOTIFY_NEVER) {
		t.Errorf("DSN recipients = %v, want alice@example.com with NOTIFY=NEVER", m.GetRecipients())
	}
	if len(m.GetQueueId()) != 24 || m.GetQueueId() == qid || m.GetBodyObject() != "" || int(m.GetBodySize()) != len(m.GetBody()) {
		t.Errorf("queue id %q body_object %q body_size %d len(body) %d", m.GetQueueId(), m.GetBodyObject(), m.GetBodySize(), len(m.GetBody()))
	}
	if got := hdrs[0].Get(jetstream.MsgIDHeader); got != "dsn-"+jobID+"-2-failed" {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	if !bytes.HasPrefix(m.GetBody(), []byte("Received: by mx.sluice.test (Sluice bouncer) id "+m.GetQueueId()+";\r\n")) {
		t.Errorf("body does not start with a Received field naming the new queue id:\n%.200s", m.GetBody())
	}

	r := parseDSN(t, m.GetBody())
	if r.reportType != "delivery-status" || r.header.Get("To") != "<alice@example.com>" || r.header.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("report-type %q To %q Auto-Submitted %q", r.reportType, r.header.Get("To"), r.header.Get("Auto-Submitted"))
	}
	if got := r.perMessage.Get("Original-Envelope-Id"); got != "env+2042" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	if len(r.recipients) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(r.recipients))
	}
	for i, want := range []map[string]string{
		{"Original-Recipient": "rfc822;Bob@Example.org", "Final-Recipient": "rfc822; bob@example.org", "Action": "failed",
			"Status": "5.1.1", "Diagnostic-Code": "smtp; 550 5.1.1 user unknown", "Remote-MTA": "dns; mx1.example.org"},
		{"Original-Recipient": "", "Final-Recipient": "rfc822; carol@example.org", "Action": "failed",
			"Status": "5.2.2", "Diagnostic-Code": "smtp; 552 5.2.2 mailbox full"},
	} {
		for k, v := range want {
			if got := r.recipients[i].Get(k); got != v {
				t.Errorf("recipient %d %s = %q, want %q", i, k, got, v)
			}
		}
	}
	if !strings.Contains(r.quoted, "Subject: hello there\r\n") {
		t.Errorf("original headers missing from the DSN: %q", r.quoted)
	}

	if got := h.counter("sluice_bouncer_dsn_generated_total", "kind", "failed"); got != 1 {
		t.Errorf("sluice_bouncer_dsn_generated_total{kind=failed} = %v, want 1", got)
	}

	// Traces: bouncer.dsn continues the bounced message's trace; the DSN
	// starts a new trace whose root links back, and the DSN message carries
	// that new trace.
	var foundDSN, foundRoot bool
	var dsnSC, rootSC trace.SpanContext
	var rootLinks []trace.SpanContext
	for _, s := range h.rec.Ended() {
		switch s.Name() {
		case "bouncer.dsn":
			foundDSN = true
			dsnSC = s.SpanContext()
			if s.Parent().SpanID() != parent.SpanID() || s.SpanContext().TraceID() != parent.TraceID() {
				t.Errorf("bouncer.dsn is not a child of the request's span")
			}
		case "bouncer.dsn_message":
			foundRoot = true
			rootSC = s.SpanContext()
			if s.Parent().IsValid() {
				t.Errorf("bouncer.dsn_message has a parent; want a new root")
			}
			for _, l := range s.Links() {
				rootLinks = append(rootLinks, l.SpanContext)
			}
		}
	}
	if !foundDSN || !foundRoot {
		t.Fatalf("spans bouncer.dsn (%v) and bouncer.dsn_message (%v) not both recorded", foundDSN, foundRoot)
	}
	if rootSC.TraceID() == parent.TraceID() {
		t.Error("the DSN message shares the bounced message's trace")
	}
	if len(rootLinks) != 1 || rootLinks[0].SpanID() != dsnSC.SpanID() || rootLinks[0].TraceID() != parent.TraceID() {
		t.Errorf("bouncer.dsn_message links %v, want one link into the bounced message's trace", rootLinks)
	}
	if tp := hdrs[0].Get("traceparent"); !strings.Contains(tp, rootSC.TraceID().String()) {
		t.Errorf("DSN message traceparent %q does not carry the new trace %s", tp, rootSC.TraceID())
	}
}

func TestNoDSN(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*sluicev1.Bounce)
		why    string
	}{
		{"null sender", func(b *sluicev1.Bounce) { b.Job.MailFrom = "" }, "null_sender"},
		{"about a DSN", func(b *sluicev1.Bounce) { b.Job.IsDsn = true }, "dsn"},
		{"NOTIFY=NEVER", func(b *sluicev1.Bounce) {
			for _, r := range b.Recipients {
				r.Notify = uint32(sluicev1.Notify_NOTIFY_NEVER)
			}
		}, "notify"},
		{"NOTIFY=SUCCESS on failure", func(b *sluicev1.Bounce) {
			for _, r := range b.Job.Recipients {
				r.Notify = uint32(sluicev1.Notify_NOTIFY_SUCCESS)
			}
		}, "notify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			b := bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED)
			tc.mutate(b)
			h.publish(b, "r1")
			h.waitIdle()
			if msgs, _ := h.stored(); len(msgs) != 0 {
				t.Fatalf("%d messages on %s, want none", len(msgs), wire.StreamMessages)
			}
			if got := h.counter("sluice_bouncer_suppressed_total", "why", tc.why); got != 1 {
				t.Errorf("sluice_bouncer_suppressed_total{why=%s} = %v, want 1", tc.why, got)
			}
			if got := h.counter("sluice_bouncer_dsn_generated_total", "", ""); got != 0 {
				t.Errorf("a DSN was counted as generated")
			}
		})
	}
}

func TestSuccessDSN(t *testing.T) {
	h := start(t, nil)
	b := bounce(sluicev1.BounceKind_BOUNCE_KIND_DELIVERED)
	b.OriginalHeaders = nil
	b.Recipients = []*sluicev1.RecipientResult{
		{Address: "bob@example.org", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED, Code: 250, EnhancedCode: "2.0.0",
			Text: "Ok: queued", RemoteHost: "mx1.example.org", Notify: uint32(sluicev1.Notify_NOTIFY_SUCCESS | sluicev1.Notify_NOTIFY_FAILURE)},
		// Delivered too, but it did not ask for a success report.
		{Address: "carol@example.org", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED, Code: 250, EnhancedCode: "2.0.0", Text: "Ok"},
	}
	h.publish(b, "r1")
	h.waitIdle()
	msgs, hdrs := h.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	if got := hdrs[0].Get(jetstream.MsgIDHeader); got != "dsn-"+jobID+"-2-delivered" {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	r := parseDSN(t, msgs[0].GetBody())
	if got := r.header.Get("Subject"); got != "Successful Mail Delivery Report" {
		t.Errorf("Subject = %q", got)
	}
	if len(r.recipients) != 1 {
		t.Fatalf("%d recipient blocks, want only bob's", len(r.recipients))
	}
	rc := r.recipients[0]
	if rc.Get("Final-Recipient") != "rfc822; bob@example.org" || rc.Get("Action") != "delivered" || rc.Get("Status") != "2.0.0" ||
		rc.Get("Diagnostic-Code") != "smtp; 250 2.0.0 Ok: queued" {
		t.Errorf("recipient fields: %v", rc.Map())
	}
	if got := h.counter("sluice_bouncer_dsn_generated_total", "kind", "delivered"); got != 1 {
		t.Errorf("sluice_bouncer_dsn_generated_total{kind=delivered} = %v, want 1", got)
	}
}

func TestRedeliveredRequestStoresOneDSN(t *testing.T) {
	h := start(t, nil)
	b := bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED)
	// Two copies of the same request under different stream message ids:
	// what JetStream hands out again when a bouncer stored the DSN and died
	// before acknowledging.
	h.publish(b, "first")
	h.publish(b, "second")
	h.waitIdle()
	if msgs, _ := h.stored(); len(msgs) != 1 {
		t.Fatalf("%d DSNs stored, want 1", len(msgs))
	}
	if got := h.counter("sluice_bouncer_dsn_generated_total", "kind", "failed"); got != 1 {
		t.Errorf("generated = %v, want 1", got)
	}
	if got := h.counter("sluice_bouncer_dsn_duplicates_total", "kind", "failed"); got != 1 {
		t.Errorf("duplicates = %v, want 1", got)
	}
}

func TestUndecodableRequestDoesNotStopTheConsumer(t *testing.T) {
	h := start(t, nil)
	m := nats.NewMsg(wire.BounceSubject("garbage"))
	m.Data = []byte{0xff, 0xff, 0xff}
	if _, err := h.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	h.publish(bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED), "good")
	h.waitIdle()
	if msgs, _ := h.stored(); len(msgs) != 1 {
		t.Fatalf("%d DSNs after a poison request, want 1", len(msgs))
	}
	if got := h.counter("sluice_bouncer_requests_invalid_total", "", ""); got != 1 {
		t.Errorf("sluice_bouncer_requests_invalid_total = %v, want 1", got)
	}
}

func TestLargeDSNGoesToTheObjectStore(t *testing.T) {
	h := start(t, func(q *config.Queue) { q.InlineBodyLimit = 1024 })
	h.publish(bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED), "r1")
	h.waitIdle()
	msgs, _ := h.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.GetBodyObject() != m.GetQueueId() || len(m.GetBody()) != 0 {
		t.Fatalf("body_object %q body %d octets; want the body in the object store under the queue id", m.GetBodyObject(), len(m.GetBody()))
	}
	bodies, err := streams.Bodies(context.Background(), h.js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	body, err := bodies.GetBytes(context.Background(), m.GetQueueId())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := bodies.GetInfo(context.Background(), m.GetQueueId()); err != nil || info.NUID == "" || m.GetBodyNuid() != info.NUID {
		t.Errorf("DSN records chunk id %q, the object's metadata says %+v (%v)", m.GetBodyNuid(), info, err)
	}
	if int64(len(body)) != m.GetBodySize() {
		t.Errorf("object is %d octets, body_size says %d", len(body), m.GetBodySize())
	}
	r := parseDSN(t, body)
	if len(r.recipients) != 2 || r.recipients[0].Get("Status") != "5.1.1" {
		t.Errorf("DSN from the object store does not parse as the report")
	}
	if r.quoted != "" {
		t.Errorf("quoted headers kept although the DSN was over the inline limit")
	}
}

func TestDelayedDSNForDefaultNotify(t *testing.T) {
	h := start(t, nil)
	b := bounce(sluicev1.BounceKind_BOUNCE_KIND_DELAYED)
	b.Recipients = b.Recipients[1:]
	b.Recipients[0].Code, b.Recipients[0].EnhancedCode, b.Recipients[0].Text = 451, "4.7.1", "greylisted"
	h.publish(b, "r1")
	h.waitIdle()
	msgs, hdrs := h.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1 (no NOTIFY means DELAY too by default)", len(msgs))
	}
	if got := hdrs[0].Get(jetstream.MsgIDHeader); got != "dsn-"+jobID+"-2-delayed" {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	r := parseDSN(t, msgs[0].GetBody())
	rc := r.recipients[0]
	if rc.Get("Action") != "delayed" || rc.Get("Status") != "4.7.1" || rc.Get("Will-Retry-Until") == "" {
		t.Errorf("recipient fields: %v", rc.Map())
	}
}

// TestLostConsumerIsProvisionedAgain: a consumer deleted under a running
// bouncer makes it unready, not silently idle; it provisions the consumer
// again and writes the DSNs of requests that arrive.
func TestLostConsumerIsProvisionedAgain(t *testing.T) {
	h := start(t, nil)
	ctx := context.Background()
	if err := h.svc.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	if err := h.js.DeleteConsumer(ctx, wire.StreamBounces, wire.ConsumerBouncer); err != nil {
		t.Fatal(err)
	}
	h.publish(bounce(sluicev1.BounceKind_BOUNCE_KIND_FAILED), "after-loss")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := h.js.Consumer(ctx, wire.StreamBounces, wire.ConsumerBouncer); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("consumer not provisioned again within 15 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.waitIdle()
	if msgs, _ := h.stored(); len(msgs) != 1 {
		t.Fatalf("%d DSNs after the consumer was lost, want 1", len(msgs))
	}
	if err := h.svc.Ready(); err != nil {
		t.Fatalf("Ready after recovery = %v", err)
	}
}
