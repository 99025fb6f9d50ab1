package smtpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/embedded"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func TestMain(m *testing.M) {
	// telemetry.Setup installs the W3C propagator in a real process.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	goleak.VerifyTestMain(m,
		// nats.go v1.55 starts this goroutine with a connection's first
		// async publish and can hand it a nil channel when the connection
		// closes at that moment (newAsyncReply against cleanupReplySub):
		// it then blocks forever, through no fault of the code under test.
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
		// The NATS server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).logRejectedTLSConns"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).handleSignals.func1"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats.go.(*Conn).doReconnect"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.timeoutManager"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*srvMsgStats)"),
	)
}

const requestTimeout = 2 * time.Second

type harness struct {
	t       *testing.T
	ns      *natstest.Server
	js      jetstream.JetStream
	store   *store.Store
	srv     *Server
	addr    string
	spans   *tracetest.SpanRecorder
	metrics *sdkmetric.ManualReader
}

// start runs an ingress against a fresh JetStream server; tune adjusts the
// settings and queue before anything starts.
func start(t *testing.T, tune func(*ingress.Settings, *config.Queue)) *harness {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return startLogging(t, tune, log)
}

// startLogging is start with the server's logger given.
func startLogging(t *testing.T, tune func(*ingress.Settings, *config.Queue), log *slog.Logger) *harness {
	t.Helper()
	return startWith(t, tune, log, nil)
}

// startWith is startLogging with the server's options adjusted by opts
// once the JetStream server and the store exist.
func startWith(t *testing.T, tune func(*ingress.Settings, *config.Queue), log *slog.Logger, opts func(*harness, *Options)) *harness {
	t.Helper()
	set := ingress.DefaultSettings()
	set.Listen = "127.0.0.1:0"
	set.Hostname = "mx.sluice.test"
	set.MetricsListen = ""
	set.ReadTimeout = 10 * time.Second
	set.WriteTimeout = 10 * time.Second
	// Tests send many refused commands on one connection; the error limit
	// is tested on its own (guard_test.go).
	set.MaxErrors = 0
	q := config.DefaultQueue()
	if tune != nil {
		tune(&set, &q)
	}
	h := &harness{t: t, ns: natstest.Start(t)}
	_, h.js = h.ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, h.js, q); err != nil {
		t.Fatal(err)
	}
	var err error
	h.store, err = store.New(ctx, h.js, q, store.Options{RequestTimeout: requestTimeout, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h.spans = tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	h.metrics = sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.metrics))
	o := Options{Settings: set, Store: h.store, Tracer: tp.Tracer("test"), Meter: mp.Meter("test"), Logger: log}
	if opts != nil {
		opts(h, &o)
	}
	h.srv, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	h.addr = h.srv.Addr().String()
	return h
}

func (h *harness) dial() *smtp.Client {
	h.t.Helper()
	c, err := smtp.Dial(h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example.org"); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// stored reads the message with queue id qid back from SLUICE_MSGS.
func (h *harness) stored(qid string) (*sluicev1.Message, nats.Header) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		h.t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, wire.MessageSubject(qid))
	if err != nil {
		h.t.Fatalf("message %s not stored: %v", qid, err)
	}
	var m sluicev1.Message
	if err := proto.Unmarshal(raw.Data, &m); err != nil {
		h.t.Fatal(err)
	}
	return &m, raw.Header
}

func (h *harness) streamMsgs() uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		h.t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

// counter returns the value of an int64 counter for the given result label.
func (h *harness) counter(name, result string) int64 {
	if result == "" {
		return h.sumInt64(name, func(attribute.Set) bool { return true })
	}
	return h.counterWith(name, "result", result)
}

// send runs one transaction and returns the DATA reply text or the error.
func send(c *smtp.Client, from string, mopts *smtp.MailOptions, rcpts []string, ropts *smtp.RcptOptions, data []byte) (string, error) {
	if err := c.Mail(from, mopts); err != nil {
		return "", fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, ropts); err != nil {
			return "", fmt.Errorf("RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return "", fmt.Errorf("DATA write: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// queueID extracts the id from "2.0.0 Ok: queued as <qid>".
func queueID(t *testing.T, reply string) string {
	t.Helper()
	const prefix = "2.0.0 Ok: queued as "
	if !strings.HasPrefix(reply, prefix) {
		t.Fatalf("reply %q, want %q<qid>", reply, prefix)
	}
	qid := strings.TrimPrefix(reply, prefix)
	if len(qid) != 24 || !wire.ValidToken(qid) {
		t.Fatalf("queue id %q in reply %q is not a queue id", qid, reply)
	}
	return qid
}

func wantSMTPError(t *testing.T, err error, code int, ec smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("error %v, want SMTP %d %v", err, code, ec)
	}
	if se.Code != code || se.EnhancedCode != ec {
		t.Fatalf("reply %d %v %q, want %d %v", se.Code, se.EnhancedCode, se.Message, code, ec)
	}
	return se
}

const sample = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.test>\r\nSubject: hello\r\n\r\nHi Bob,\r\n.leading dot survives\r\n"

func TestAcceptedMessageIsStoredWithEnvelopeAndReceived(t *testing.T) {
	h := start(t, nil)
	c := h.dial()
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	qid := queueID(t, reply)
	m, hdr := h.stored(qid)

	if m.GetQueueId() != qid || m.GetSchema() != wire.SchemaVersion {
		t.Errorf("queue id %q schema %d, want %q %d", m.GetQueueId(), m.GetSchema(), qid, wire.SchemaVersion)
	}
	if m.GetMailFrom() != "alice@example.org" || len(m.GetRecipients()) != 1 || m.GetRecipients()[0].GetAddress() != "bob@example.test" {
		t.Errorf("envelope %q -> %v", m.GetMailFrom(), m.GetRecipients())
	}
	if m.GetClientAddr() != "127.0.0.1" || m.GetHelo() != "client.example.org" {
		t.Errorf("client %q helo %q", m.GetClientAddr(), m.GetHelo())
	}
	if age := time.Since(time.Unix(0, m.GetReceivedUnixNano())); age < 0 || age > time.Minute {
		t.Errorf("received_unix_nano is %s ago", age)
	}
	if m.GetHasMtPriority() || m.GetBodyObject() != "" || m.GetRecipients()[0].GetNotify() != 0 {
		t.Errorf("unexpected fields: %v", m)
	}
	body := m.GetBody()
	if int64(len(body)) != m.GetBodySize() {
		t.Errorf("body_size %d, body has %d bytes", m.GetBodySize(), len(body))
	}
	wantStart := "Received: from client.example.org ([127.0.0.1])\r\n\tby mx.sluice.test (Sluice) with ESMTP id " + qid + "\r\n\tfor <bob@example.test>; "
	if !bytes.HasPrefix(body, []byte(wantStart)) {
		t.Errorf("body starts %q, want %q", body[:min(len(body), 200)], wantStart)
	}
	if !bytes.HasSuffix(body, []byte("\r\n"+sample)) {
		t.Errorf("body does not end with the sent data: %q", body)
	}
	if hdr.Get(nats.MsgIdHdr) != qid || hdr.Get(wire.HeaderQueueID) != qid {
		t.Errorf("headers %v, want Nats-Msg-Id and %s = %s", hdr, wire.HeaderQueueID, qid)
	}

	// One server span per transaction, and its context rides on the message.
	var span sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == "ingress.receive" {
			span = s
		}
	}
	if span == nil {
		t.Fatal("no ingress.receive span")
	}
	if span.SpanKind() != trace.SpanKindServer {
		t.Errorf("span kind %v", span.SpanKind())
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, a := range span.Attributes() {
		attrs[a.Key] = a.Value
	}
	if attrs["sluice.queue_id"].AsString() != qid || attrs["messaging.system"].AsString() != "nats" ||
		attrs["messaging.destination.name"].AsString() != wire.MessageSubject(qid) || attrs["client.address"].AsString() != "127.0.0.1" ||
		attrs["messaging.message.body.size"].AsInt64() != m.GetBodySize() {
		t.Errorf("span attributes %v", span.Attributes())
	}
	tp := hdr.Get("traceparent")
	if !strings.Contains(tp, span.SpanContext().TraceID().String()) {
		t.Errorf("traceparent %q does not carry trace %s", tp, span.SpanContext().TraceID())
	}

	if n := h.counter("sluice_ingress_messages_received_total", "accepted"); n != 1 {
		t.Errorf("accepted counter %d, want 1", n)
	}
	if n := h.counter("sluice_ingress_sessions_active", ""); n != 1 {
		t.Errorf("sessions_active %d, want 1", n)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.counter("sluice_ingress_sessions_active", "") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("sessions_active did not return to 0 after QUIT")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDSNAndPriorityParametersAreStored(t *testing.T) {
	h := start(t, nil)
	c := h.dial()
	if ok, _ := c.Extension("MT-PRIORITY"); !ok {
		t.Error("MT-PRIORITY not advertised")
	}
	if ok, _ := c.Extension("DSN"); !ok {
		t.Error("DSN not advertised")
	}
	if err := c.Mail("jörg@bücher.example", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env+id=42", UTF8: true, Body: smtp.Body8BitMIME}); err != nil {
		t.Fatal(err)
	}
	high := 4
	if err := c.Rcpt("bob@example.test", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "bob+orig@example.test",
		MTPriority: &high,
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("carol@other.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\nHallo\r\n")
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.stored(queueID(t, resp.StatusText))
	if m.GetRet() != "HDRS" || m.GetEnvid() != "env+id=42" || !m.GetSmtputf8() || m.GetBodyType() != "8BITMIME" {
		t.Errorf("ret %q envid %q smtputf8 %v body %q", m.GetRet(), m.GetEnvid(), m.GetSmtputf8(), m.GetBodyType())
	}
	if !m.GetHasMtPriority() || m.GetMtPriority() != 4 {
		t.Errorf("mt_priority %d (has %v), want 4", m.GetMtPriority(), m.GetHasMtPriority())
	}
	if m.GetMailFrom() != "jörg@bücher.example" {
		t.Errorf("mail_from %q", m.GetMailFrom())
	}
	rs := m.GetRecipients()
	if len(rs) != 2 {
		t.Fatalf("recipients %v", rs)
	}
	if want := uint32(sluicev1.Notify_NOTIFY_SUCCESS | sluicev1.Notify_NOTIFY_FAILURE); rs[0].GetNotify() != want || rs[0].GetOrcpt() != "rfc822;bob+orig@example.test" {
		t.Errorf("first recipient %v, want notify %d orcpt rfc822;bob+orig@example.test", rs[0], want)
	}
	if rs[1].GetNotify() != uint32(sluicev1.Notify_NOTIFY_NEVER) || rs[1].GetOrcpt() != "" {
		t.Errorf("second recipient %v", rs[1])
	}
	// With two recipients the Received header names neither (no Bcc leak).
	if bytes.Contains(m.GetBody()[:200], []byte("for <")) {
		t.Errorf("Received header names a recipient: %q", m.GetBody()[:200])
	}
}

func TestUntrustedClientIsDeniedRelayAtRcpt(t *testing.T) {
	h := start(t, func(s *ingress.Settings, _ *config.Queue) { s.TrustedNetworks = []string{"10.0.0.0/8"} })
	c := h.dial()
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	se := wantSMTPError(t, c.Rcpt("bob@example.test", nil), 554, smtp.EnhancedCode{5, 7, 1})
	if se.Message != "Relay access denied" {
		t.Errorf("message %q", se.Message)
	}
	if _, err := c.Data(); err == nil {
		t.Error("DATA accepted without recipients")
	}
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestMalformedAddresses(t *testing.T) {
	h := start(t, nil)
	c := h.dial()
	se := wantSMTPError(t, c.Mail("alice@exa_mple.org", nil), 501, smtp.EnhancedCode{5, 1, 7})
	if !strings.Contains(se.Message, "Sender address") {
		t.Errorf("MAIL reply %q does not say what is wrong", se.Message)
	}
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	se = wantSMTPError(t, c.Rcpt("bob@localhost", nil), 501, smtp.EnhancedCode{5, 1, 3})
	if !strings.Contains(se.Message, "fully qualified") {
		t.Errorf("RCPT reply %q does not say the address is unqualified", se.Message)
	}
	wantSMTPError(t, c.Rcpt("bob@-bad.example", nil), 501, smtp.EnhancedCode{5, 1, 3})
	wantSMTPError(t, c.Rcpt("jörg@bücher.example", nil), 553, smtp.EnhancedCode{5, 6, 7})
}

func TestTooManyRecipients(t *testing.T) {
	h := start(t, func(s *ingress.Settings, _ *config.Queue) { s.MaxRecipients = 3 })
	c := h.dial()
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Rcpt(fmt.Sprintf("r%d@example.test", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	se := wantSMTPError(t, c.Rcpt("r3@example.test", nil), 452, smtp.EnhancedCode{4, 5, 3})
	if se.Message != "Too many recipients" {
		t.Errorf("message %q", se.Message)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, sample)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.stored(queueID(t, resp.StatusText))
	if len(m.GetRecipients()) != 3 {
		t.Errorf("stored %d recipients, want the 3 accepted", len(m.GetRecipients()))
	}
}

func TestOversizeMessage(t *testing.T) {
	const limit = 64 << 10
	h := start(t, func(s *ingress.Settings, _ *config.Queue) { s.MaxMessageBytes = limit })
	c := h.dial()
	if _, size := c.Extension("SIZE"); size != fmt.Sprint(limit) {
		t.Errorf("SIZE %q, want %d", size, limit)
	}
	// Declared too large: refused at MAIL (RFC 1870 §6.1).
	wantSMTPError(t, c.Mail("alice@example.org", &smtp.MailOptions{Size: limit + 1}), 552, smtp.EnhancedCode{5, 3, 4})

	// Undeclared and too large: refused after DATA.
	big := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\r\n"), limit/64+1)
	_, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, big[:limit+2])
	se := wantSMTPError(t, err, 552, smtp.EnhancedCode{5, 3, 4})
	if strings.Contains(se.Message, "transaction failed") {
		t.Errorf("reply %q is go-smtp's generic error, not the size reply", se.Message)
	}
	// Just under the limit passes on the same connection.
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, big[:limit-64])
	if err != nil {
		t.Fatal(err)
	}
	queueID(t, reply)
	if n := h.streamMsgs(); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
	if n := h.counter("sluice_ingress_messages_received_total", "rejected"); n != 1 {
		t.Errorf("rejected counter %d, want 1", n)
	}
}

func TestTwentyMegabytesStoredByteIdentical(t *testing.T) {
	var data bytes.Buffer
	data.WriteString("Subject: big\r\n\r\n")
	line := []byte(".00000000 " + strings.Repeat("x", 66) + "\r\n")
	for i := 0; data.Len() < 20<<20; i++ {
		// Lines starting with a dot exercise dot-stuffing both ways; the
		// counter makes a misplaced chunk visible.
		copy(line[1:9], fmt.Sprintf("%08d", i))
		data.Write(line)
	}
	h := start(t, nil)
	c := h.dial()
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, data.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	qid := queueID(t, reply)
	m, _ := h.stored(qid)
	if m.GetBodyObject() != qid || len(m.GetBody()) != 0 {
		t.Fatalf("body_object %q, inline %d bytes: want the object store", m.GetBodyObject(), len(m.GetBody()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := h.store.Body(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(got, []byte("\r\nSubject: big\r\n"))
	if i < 0 || !bytes.HasPrefix(got, []byte("Received: ")) {
		t.Fatalf("stored body does not start with Received and the data: %q", got[:min(len(got), 300)])
	}
	want := append(append([]byte(nil), got[:i+2]...), data.Bytes()...)
	if !bytes.Equal(got, want) || int64(len(got)) != m.GetBodySize() {
		t.Errorf("stored %d bytes (body_size %d), want Received header + %d sent bytes, identical", len(got), m.GetBodySize(), data.Len())
	}
}

func TestNATSDownAnswers451Promptly(t *testing.T) {
	h := start(t, nil)
	c := h.dial()
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	first := queueID(t, reply)

	// Transactions already under way when JetStream goes away get 451 at
	// the end of DATA.
	open := map[int]*smtp.Client{}
	for _, size := range []int{len(sample), 2 << 20} { // inline and object store
		oc := h.dial()
		if err := oc.Mail("alice@example.org", nil); err != nil {
			t.Fatal(err)
		}
		if err := oc.Rcpt("bob@example.test", nil); err != nil {
			t.Fatal(err)
		}
		open[size] = oc
	}
	h.ns.Shutdown()
	for _, size := range []int{len(sample), 2 << 20} {
		began := time.Now()
		w, err := open[size].Data()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(bytes.Repeat([]byte("a\r\n"), size/3)); err != nil {
			t.Fatal(err)
		}
		_, err = w.CloseWithResponse()
		se := wantSMTPError(t, err, 451, smtp.EnhancedCode{4, 3, 0})
		// Not a speed measure: a bound that a client left hanging (a
		// publish buffered until NATS returns, a retry without end) would
		// exceed, with room for a loaded two-core machine under -race.
		if took := time.Since(began); took > requestTimeout+15*time.Second {
			t.Errorf("451 after %s, want within request_timeout %s + margin", took, requestTimeout)
		}
		if strings.Contains(strings.ToLower(se.Message), "nats") || strings.Contains(se.Message, "jetstream") {
			t.Errorf("reply %q leaks internals", se.Message)
		}
	}
	if n := h.counter("sluice_ingress_messages_received_total", "failed"); n != 2 {
		t.Errorf("failed counter %d, want 2", n)
	}
	// Once the service knows storage is down, new transactions are
	// refused at MAIL and new connections at once (421 4.3.2).
	deadline := time.Now().Add(5 * time.Second)
	for h.store.Available() {
		if time.Now().After(deadline) {
			t.Fatal("the store still reports itself available 5s after JetStream stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantSMTPError(t, c.Mail("alice@example.org", nil), 421, smtp.EnhancedCode{4, 3, 2})
	// go-smtp's client reads the greeting with its first command.
	c2, err := smtp.Dial(h.addr)
	if err == nil {
		defer c2.Close()
		err = c2.Hello("client.example.org")
	}
	wantSMTPError(t, err, 421, smtp.EnhancedCode{4, 3, 2})

	// Restart JetStream on the same files: only the first message is there.
	ns, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:0", StoreDir: h.ns.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("%d messages after restart, want only %s", n, first)
	}
	obs, err := js.ObjectStore(ctx, wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	if infos, err := obs.List(ctx); !errors.Is(err, jetstream.ErrNoObjectsFound) {
		t.Errorf("body objects left behind: %v %v", infos, err)
	}
}

func TestFullStreamAnswers451AndLeavesNoBody(t *testing.T) {
	h := start(t, func(_ *ingress.Settings, q *config.Queue) { q.MaxBytes = 256 })
	c := h.dial()
	for _, size := range []int{len(sample), 1 << 20} { // inline and object store
		_, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, bytes.Repeat([]byte("a\r\n"), size/3))
		se := wantSMTPError(t, err, 451, smtp.EnhancedCode{4, 3, 0})
		if se.Message != errStorage.Message {
			t.Errorf("reply %q, want the generic storage reply", se.Message)
		}
	}
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	obs, err := h.js.ObjectStore(ctx, wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	if infos, err := obs.List(ctx); !errors.Is(err, jetstream.ErrNoObjectsFound) {
		t.Errorf("body object of a refused message left behind: %d objects, %v", len(infos), err)
	}
}
