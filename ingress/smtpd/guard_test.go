package smtpd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/config"
)

// smugglingSequences are the published SMTP smuggling end-of-data
// variants (SEC Consult, December 2023).
var smugglingSequences = []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n"}

// expectClosed reads until the server closes the connection, failing on
// any further reply.
func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := rc.r.ReadString('\n'); err == nil {
		rc.t.Fatalf("reply %q after the refusal, want the connection closed", l)
	}
}

// smuggle opens a transaction and sends content whose first message ends
// with seq, followed by a complete second transaction, as the published
// attacks do.
func smuggle(rc *rawClient, seq string) (int, string) {
	rc.t.Helper()
	rc.must("MAIL FROM:<alice@example.org>", 250, "")
	rc.must("RCPT TO:<bob@example.test>", 250, "")
	rc.must("DATA", 354, "")
	rc.send("From: alice@example.org\r\nSubject: one\r\n\r\nfirst" + seq +
		"MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n" +
		"From: admin@example.test\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n")
	return rc.reply()
}

// TestSmugglingIsRefusedAndNothingStored runs every published sequence in
// the clear and inside STARTTLS (smtpconn terminates TLS below the guard,
// so the guard reads the plaintext either way): each gets 521 5.5.2 and a
// closed connection, JetStream stays empty, and a clean message on a new
// connection is stored alone.
func TestSmugglingIsRefusedAndNothingStored(t *testing.T) {
	pki := newTestPKI(t)
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.TLS = ingress.TLSFiles{CertFile: pki.certFile, KeyFile: pki.keyFile}
	})
	for _, tls := range []bool{false, true} {
		for _, seq := range smugglingSequences {
			t.Run(fmt.Sprintf("tls=%v %q", tls, seq), func(t *testing.T) {
				rc := dialRaw(t, h.addr, nil)
				rc.ehlo("client.example.org")
				if tls {
					rc.startTLS(pki.client)
					rc.ehlo("client.example.org")
				}
				code, text := smuggle(rc, seq)
				if code != 521 || text != "5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)" {
					t.Fatalf("reply %d %q, want 521 5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)", code, text)
				}
				rc.expectClosed()
			})
		}
	}
	if n := h.streamMsgs(); n != 0 {
		t.Fatalf("%d messages stored after smuggling attempts", n)
	}
	if n := h.counter("sluice_ingress_connections_closed_total", ""); n != int64(2*len(smugglingSequences)) {
		t.Errorf("connections closed by the guard: %d, want %d", n, 2*len(smugglingSequences))
	}

	rc := dialRaw(t, h.addr, nil)
	rc.ehlo("client.example.org")
	code, text := smuggle(rc, "\r\n")
	if code != 250 {
		t.Fatalf("clean message: %d %q", code, text)
	}
	qid := strings.TrimPrefix(text, "2.0.0 Ok: queued as ")
	m, _ := h.stored(qid)
	if n := h.streamMsgs(); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
	// What looked like a second transaction is text of the first message.
	if !bytes.HasSuffix(m.GetBody(), []byte("first\r\nMAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nFrom: admin@example.test\r\nSubject: smuggled\r\n\r\nsecond\r\n")) {
		t.Errorf("stored body %q", m.GetBody())
	}
}

func TestBareLineEndingsInCommandsAndBDAT(t *testing.T) {
	h := start(t, nil)
	for _, tc := range []struct{ name, send string }{
		{"bare LF ends a command", "NOOP\nNOOP\r\n"},
		{"bare CR inside a command", "MAIL FROM:<alice@example.org>\rRCPT TO:<bob@example.test>\r\n"},
		{"bare LF in a BDAT chunk", "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\nBDAT 25 LAST\r\nSubject: x\r\n\r\nfirst\n.\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, h.addr, nil)
			rc.ehlo("client.example.org")
			rc.send(tc.send)
			for {
				code, text := rc.reply()
				if code == 250 {
					continue // pipelined MAIL and RCPT
				}
				if code != 521 || !strings.HasPrefix(text, "5.5.2 ") {
					t.Fatalf("reply %d %q, want 521 5.5.2", code, text)
				}
				break
			}
			rc.expectClosed()
		})
	}
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

// TestSlowClientsAreCutOff goes through the whole stack (idle timeout,
// smtpconn, guard): a command trickled one octet at a time, each well
// within the read timeout, and DATA content sent as short lines that
// together take longer than the data timeout.
func TestSlowClientsAreCutOff(t *testing.T) {
	const timeout = 400 * time.Millisecond
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.ReadTimeout = timeout
		s.DataTimeout = 2 * timeout
	})
	rc := dialRaw(t, h.addr, nil)
	line := "EHLO " + strings.Repeat("x", 60) + "\r\n"
	sent := 0
	for ; sent < len(line); sent++ {
		if _, err := rc.conn.Write([]byte{line[sent]}); err != nil {
			break
		}
		time.Sleep(timeout / 8)
	}
	if sent == len(line) {
		t.Fatalf("a %d-octet line trickled in without being cut off", len(line))
	}
	if code, text := rc.reply(); code != 421 || !strings.HasPrefix(text, "4.4.2 ") {
		t.Fatalf("reply %d %q, want 421 4.4.2", code, text)
	}
	rc.expectClosed()

	rc = dialRaw(t, h.addr, nil)
	rc.ehlo("client.example.org")
	rc.must("MAIL FROM:<alice@example.org>", 250, "")
	rc.must("RCPT TO:<bob@example.test>", 250, "")
	rc.must("DATA", 354, "")
	lines := 0
	for ; lines < 50; lines++ {
		if _, err := io.WriteString(rc.conn, "x\r\n"); err != nil {
			break
		}
		time.Sleep(timeout / 4)
	}
	if lines == 50 {
		t.Fatal("50 lines over 6 data timeouts without being cut off")
	}
	if code, text := rc.reply(); code != 421 || !strings.HasPrefix(text, "4.4.2 ") {
		t.Fatalf("reply %d %q, want 421 4.4.2", code, text)
	}
	rc.expectClosed()
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	if n := h.counter("sluice_ingress_connections_closed_total", ""); n != 2 {
		t.Errorf("connections closed by the guard: %d, want 2", n)
	}
}

func TestHeaderSectionLimit(t *testing.T) {
	h := start(t, func(s *ingress.Settings, _ *config.Queue) { s.MaxHeaderBytes = 1024 })
	c := h.dial()
	big := strings.Repeat("X-Filler: "+strings.Repeat("y", 60)+"\r\n", 20) + "\r\nbody\r\n"
	_, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(big))
	wantSMTPError(t, err, 552, smtp.EnhancedCode{5, 3, 4})
	// The connection goes on: a message with a small header is stored.
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	queueID(t, reply)
	if n := h.streamMsgs(); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
}

func TestLimitsPerSession(t *testing.T) {
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.MaxErrors = 3
		s.MaxCommandsWithoutMail = 4
		s.MaxConnectionsPerClient = 2
		s.TrustedNetworks = []string{"10.0.0.0/8"}
	})
	// Relay probes are errors: the third closes the session.
	rc := dialRaw(t, h.addr, nil)
	rc.ehlo("client.example.org")
	rc.must("MAIL FROM:<alice@example.org>", 250, "")
	rc.must("RCPT TO:<victim@other.example>", 554, "5.7.1")
	rc.must("RCPT TO:<victim%other.example@example.test>", 554, "5.7.1")
	rc.must("RCPT TO:<@example.test:victim@other.example>", 554, "5.7.1")
	if code, text := rc.reply(); code != 421 || !strings.HasPrefix(text, "4.7.0 Too many errors") {
		t.Fatalf("reply %d %q, want 421 4.7.0 Too many errors", code, text)
	}
	rc.expectClosed()

	// NOOP, RSET and VRFY without a transaction.
	rc = dialRaw(t, h.addr, nil)
	rc.ehlo("client.example.org")
	rc.must("NOOP", 250, "")
	rc.must("RSET", 250, "")
	rc.must("VRFY postmaster", 252, "")
	if code, text := rc.cmd("NOOP"); code != 421 || !strings.HasPrefix(text, "4.7.0 Too many commands") {
		t.Fatalf("reply %d %q, want 421 4.7.0 Too many commands", code, text)
	}
	rc.expectClosed()

	// Two connections from one address; the third is refused. The server
	// counts a connection until it has finished closing it, so wait until
	// the ones above are gone.
	deadline := time.Now().Add(5 * time.Second)
	for h.openConnections() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	a, b := dialRaw(t, h.addr, nil), dialRaw(t, h.addr, nil)
	_, _ = a, b
	c, err := smtp.Dial(h.addr)
	if err == nil {
		defer c.Close()
		err = c.Hello("client.example.org")
	}
	wantSMTPError(t, err, 421, smtp.EnhancedCode{4, 7, 0})
	if n := h.counter("sluice_ingress_connections_refused_total", ""); n != 1 {
		t.Errorf("refused connections %d, want 1", n)
	}
}

// panicStore panics in Put, as a bug in the storage path would.
type panicStore struct{}

func (panicStore) Put(context.Context, *sluicev1.Message, io.Reader, int64) (store.Receipt, error) {
	panic("storage bug")
}

// errorStore fails with an error that is not an SMTP reply and whose text
// must not reach the client.
type errorStore struct{}

func (errorStore) Put(context.Context, *sluicev1.Message, io.Reader, int64) (store.Receipt, error) {
	return store.Receipt{}, fmt.Errorf("nats: secret internal detail at 10.1.2.3:4222")
}

// TestPanicInASessionIsRecoveredAndCounted panics in Data twice: each is
// answered 421, counted once and logged once (go-smtp's own report of the
// panic it recovers again is recognised and dropped).
func TestPanicInASessionIsRecoveredAndCounted(t *testing.T) {
	set := ingress.DefaultSettings()
	set.Listen, set.Hostname, set.MetricsListen = "127.0.0.1:0", "mx.sluice.test", ""
	reader := sdkmetric.NewManualReader()
	logs := &logBuffer{}
	srv, err := New(Options{
		Settings: set, Store: panicStore{},
		Tracer: sdktrace.NewTracerProvider().Tracer("test"),
		Meter:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"),
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := &harness{t: t, metrics: reader}

	for range 2 {
		rc := dialRaw(t, srv.Addr().String(), nil)
		rc.ehlo("client.example.org")
		rc.must("MAIL FROM:<alice@example.org>", 250, "")
		rc.must("RCPT TO:<bob@example.test>", 250, "")
		code, text := rc.data("Subject: x\r\n\r\nhi\r\n")
		if code != 421 || strings.Contains(text, "storage bug") {
			t.Fatalf("reply %d %q, want 421 without the panic's text", code, text)
		}
		rc.expectClosed()
	}
	if n := h.counterWith("sluice_ingress_panics_total", "method", "data"); n != 2 {
		t.Errorf("panics counted %d, want 2", n)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if n := h.sumInt64("sluice_ingress_panics_total", func(attribute.Set) bool { return true }); n != 2 {
		t.Errorf("panics counted in all %d, want 2", n)
	}
	if n := strings.Count(logs.String(), "storage bug"); n != 2 {
		t.Errorf("the panic is logged %d times, want once per panic:\n%s", n, logs)
	}
}

// TestPanicsGoSMTPRecoversAreCountedOnce reports panics to the server's
// go-smtp ErrorLog exactly as go-smtp does when it recovers one outside
// the session's methods (its BDAT goroutine, a command handler): each is
// counted with method smtp and logged once at warning level without its
// stack; the report of a panic a session method already counted is
// dropped.
func TestPanicsGoSMTPRecoversAreCountedOnce(t *testing.T) {
	set := ingress.DefaultSettings()
	set.Listen, set.Hostname, set.MetricsListen = "127.0.0.1:0", "mx.sluice.test", ""
	reader := sdkmetric.NewManualReader()
	logs := &logBuffer{}
	srv, err := New(Options{
		Settings: set, Store: panicStore{},
		Tracer: sdktrace.NewTracerProvider().Tracer("test"),
		Meter:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("test"),
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, metrics: reader}
	errorLog := srv.listeners[0].srv.ErrorLog
	var nilSession smtp.Session
	func() {
		defer func() {
			v := recover()
			// The format of go-smtp's (*Conn).handlePanic.
			errorLog.Printf("panic serving %v: %v\n%s", "127.0.0.1:40000", v, debug.Stack())
		}()
		_ = nilSession.Data(nil)
	}()
	errorLog.Printf("panic serving %v: %v\n%s", "127.0.0.1:40001", sessionPanic{"counted before"}, debug.Stack())
	errorLog.Printf("error handling %v: %s", "127.0.0.1:40002", "connection reset")

	if n := h.counterWith("sluice_ingress_panics_total", "method", "smtp"); n != 1 {
		t.Errorf("panics counted with method smtp: %d, want 1", n)
	}
	if n := h.sumInt64("sluice_ingress_panics_total", func(attribute.Set) bool { return true }); n != 1 {
		t.Errorf("panics counted in all: %d, want 1", n)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2 (the panic, the connection error):\n%s", len(lines), logs)
	}
	want := `level=WARN msg="panic recovered by go-smtp; connection closed" client=127.0.0.1:40000 panic="runtime error: invalid memory address or nil pointer dereference"`
	if !strings.HasSuffix(lines[0], want) {
		t.Errorf("panic logged as\n%s\nwant it to end with\n%s", lines[0], want)
	}
	if !strings.Contains(lines[1], "level=WARN") || !strings.Contains(lines[1], "connection reset") {
		t.Errorf("connection error logged as %s", lines[1])
	}
}

func TestErrorTextNeverReachesTheClient(t *testing.T) {
	set := ingress.DefaultSettings()
	set.Listen, set.Hostname, set.MetricsListen = "127.0.0.1:0", "mx.sluice.test", ""
	srv, err := New(Options{
		Settings: set, Store: errorStore{},
		Tracer: sdktrace.NewTracerProvider().Tracer("test"),
		Meter:  sdkmetric.NewMeterProvider().Meter("test"),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc := dialRaw(t, srv.Addr().String(), nil)
	rc.ehlo("client.example.org")
	rc.must("MAIL FROM:<alice@example.org>", 250, "")
	rc.must("RCPT TO:<bob@example.test>", 250, "")
	code, text := rc.data("Subject: x\r\n\r\nhi\r\n")
	if code != 451 || strings.Contains(text, "nats") || strings.Contains(text, "10.1.2.3") {
		t.Fatalf("reply %d %q, want a 451 that says nothing about the infrastructure", code, text)
	}
}

// counterWith returns the value of an int64 counter's points whose
// attribute key has value.
func (h *harness) counterWith(name, key, value string) int64 {
	return h.sumInt64(name, func(a attribute.Set) bool {
		v, ok := a.Value(attribute.Key(key))
		return ok && v.AsString() == value
	})
}

// sumInt64 sums the points of an int64 sum (counter or up-down counter)
// whose attributes keep accepts.
func (h *harness) sumInt64(name string, keep func(attribute.Set) bool) int64 {
	h.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.metrics.Collect(context.Background(), &rm); err != nil {
		h.t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range sum.DataPoints {
					if keep(p.Attributes) {
						n += p.Value
					}
				}
			}
		}
	}
	return n
}

// openConnections is sluice_ingress_connections_open summed over listeners.
func (h *harness) openConnections() int64 {
	return h.sumInt64("sluice_ingress_connections_open", func(attribute.Set) bool { return true })
}

// logBuffer collects a logger's output for a test; the server logs from
// many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestBareLFInBDATChunksNeverPanics sends BDAT chunks with a bare LF in
// the ways a probe does: the command line and its chunk in separate
// writes (so go-smtp has started its BDAT goroutine when the chunk is
// refused), after an empty chunk, and after a clean first chunk. Each
// gets exactly the guard's 521 and a closed connection, nothing is
// stored, and no session panics: go-smtp's BDAT goroutine used to find
// the session already ended and log a nil-pointer panic with its stack.
func TestBareLFInBDATChunksNeverPanics(t *testing.T) {
	logs := &logBuffer{}
	h := startLogging(t, nil, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	bad := "Subject: x\r\n\r\nfirst\n.\n" // 25 octets
	probes := []struct {
		name   string
		writes []string
	}{
		{"line, then chunk", []string{"BDAT 25 LAST\r\n", bad}},
		{"line, then chunk in two", []string{"BDAT 25 LAST\r\n", bad[:20], bad[20:]}},
		{"empty chunk first", []string{"BDAT 0\r\n", "BDAT 25 LAST\r\n", bad}},
		{"clean chunk first", []string{"BDAT 5\r\nhello", "BDAT 25 LAST\r\n", bad}},
	}
	const rounds = 40
	for _, p := range probes {
		for range rounds {
			rc := dialRaw(t, h.addr, nil)
			rc.ehlo("client.example.org")
			rc.must("MAIL FROM:<alice@example.org>", 250, "")
			rc.must("RCPT TO:<bob@example.test>", 250, "")
			for _, w := range p.writes {
				rc.send(w)
				if strings.HasPrefix(w, "BDAT 0\r\n") || strings.HasPrefix(w, "BDAT 5\r\n") {
					if code, text := rc.reply(); code != 250 {
						t.Fatalf("%s: first chunk: %d %q", p.name, code, text)
					}
				}
			}
			code, text := rc.reply()
			if code != 521 || text != "5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)" {
				t.Fatalf("%s: reply %d %q, want 521 5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)", p.name, code, text)
			}
			rc.expectClosed()
			_ = rc.conn.Close()
		}
	}
	// A client that hangs up right after a BDAT line (or between chunks)
	// ends the connection under the BDAT goroutine in the same way.
	for _, writes := range [][]string{{"BDAT 25 LAST\r\n"}, {"BDAT 0\r\n"}, {"BDAT 5\r\nhello"}} {
		for range rounds {
			rc := dialRaw(t, h.addr, nil)
			rc.ehlo("client.example.org")
			rc.must("MAIL FROM:<alice@example.org>", 250, "")
			rc.must("RCPT TO:<bob@example.test>", 250, "")
			rc.send(writes[0])
			_ = rc.conn.Close()
		}
	}
	// Shutdown returns once every connection's goroutines are done.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	if n := h.sumInt64("sluice_ingress_panics_total", func(attribute.Set) bool { return true }); n != 0 {
		t.Errorf("panics counted: %d, want 0", n)
	}
	if out := logs.String(); strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Errorf("panics in the log:\n%.3000s", out)
	}
}
