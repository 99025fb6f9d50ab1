package guard_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/sluice-mta/sluice/ingress/guard"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a real go-smtp server behind a guard.Listener whose sessions
// record the messages they receive, reading them through a ContentReader
// as the ingress does.
type server struct {
	addr    string
	ln      *guard.Listener
	metrics *sdkmetric.ManualReader

	// fast makes the sessions read DATA content through guard.Content,
	// as the ingress does, with maxBytes as go-smtp's MaxMessageBytes.
	fast     bool
	maxBytes int64
	fastUsed int

	mu       sync.Mutex
	msgs     []string
	mailErr  error
	tlsConf  *tls.Config
	serveErr chan error
}

func startServer(t *testing.T, tune func(*guard.Options)) *server {
	t.Helper()
	return startServerOn(t, &server{}, tune)
}

// startServerOn starts s (with its fast and maxBytes set by the caller).
func startServerOn(t *testing.T, s *server, tune func(*guard.Options)) *server {
	t.Helper()
	s.metrics, s.serveErr = sdkmetric.NewManualReader(), make(chan error, 1)
	o := guard.Options{
		MaxLineLength: 1000,
		ReadTimeout:   5 * time.Second,
		WriteTimeout:  5 * time.Second,
		DataTimeout:   10 * time.Second,
		Meter:         sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.metrics)).Meter("test"),
		Logger:        slog.New(slog.DiscardHandler),
	}
	if tune != nil {
		tune(&o)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := guard.New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.ln = g.Listen(tcp)
	s.tlsConf = selfSigned(t)
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &session{s: s, c: c}, nil }))
	srv.Domain = "mx.guard.test"
	srv.TLSConfig = s.tlsConf
	srv.ErrorLog = errLog{}
	srv.MaxMessageBytes = s.maxBytes
	go func() { s.serveErr <- srv.Serve(s.ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-s.serveErr
	})
	s.addr = tcp.Addr().String()
	return s
}

type errLog struct{}

func (errLog) Printf(string, ...any) {}
func (errLog) Println(...any)        {}

func (s *server) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...)
}

// counter sums the points of a counter with the given reason label.
func (s *server) counter(t *testing.T, name, reason string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range sum.DataPoints {
					if v, _ := p.Attributes.Value(attribute.Key("reason")); reason == "" || v.AsString() == reason {
						n += p.Value
					}
				}
			}
		}
	}
	return n
}

type session struct {
	s *server
	c *smtp.Conn
}

func (se *session) Reset()        {}
func (se *session) Logout() error { return nil }
func (se *session) Mail(string, *smtp.MailOptions) error {
	se.s.mu.Lock()
	defer se.s.mu.Unlock()
	return se.s.mailErr
}
func (se *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (se *session) Data(r io.Reader) error {
	if gc, ok := se.c.Conn().(*guard.Conn); ok && se.s.fast {
		if c, ok := gc.DataContent(se.s.maxBytes, smtp.ErrDataTooLarge); ok {
			defer c.Close()
			r = c
			se.s.mu.Lock()
			se.s.fastUsed++
			se.s.mu.Unlock()
		}
	}
	b, err := io.ReadAll(guard.NewContentReader(r, guard.ContentLimits{MaxLineLength: 1000, MaxHeaderBytes: 200}))
	var v *guard.Violation
	if errors.As(err, &v) {
		return v.Reply()
	}
	if err != nil {
		return err
	}
	se.s.mu.Lock()
	se.s.msgs = append(se.s.msgs, string(b))
	se.s.mu.Unlock()
	return nil
}

// client speaks raw SMTP, so that it can send what real clients do not.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, r: bufio.NewReader(c)}
	return cl
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// reply reads one complete reply and returns its last line, or "" when
// the server closed the connection.
func (c *client) reply() string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return ""
			}
			c.t.Fatalf("reading a reply: %v", err)
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimRight(l, "\r\n")
		}
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && strings.Contains(oe.Err.Error(), "reset")
}

func (c *client) expect(prefix string) {
	c.t.Helper()
	if got := c.reply(); !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("reply %q, want %q", got, prefix)
	}
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	if got := c.reply(); got != "" {
		c.t.Fatalf("reply %q, want the connection closed", got)
	}
}

// open greets and starts a transaction up to the 354.
func (c *client) open() {
	c.t.Helper()
	c.expect("220 ")
	c.send("EHLO client.example\r\n")
	c.expect("250 ")
	c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	c.expect("250 ")
	c.expect("250 ")
	c.expect("354 ")
}

var smuggling = []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n"}

func TestSmugglingSequencesCloseTheConnection(t *testing.T) {
	s := startServer(t, nil)
	for i, seq := range smuggling {
		t.Run(fmt.Sprintf("%q", seq), func(t *testing.T) {
			c := dial(t, s.addr)
			c.open()
			c.send("Subject: one\r\n\r\nbody" + seq + "MAIL FROM:<x@example.org>\r\nRCPT TO:<y@example.test>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n.\r\n")
			c.expect("521 5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)")
			c.expectClosed()
			if n := s.counter(t, "sluice_ingress_connections_closed_total", ""); n != int64(i+1) {
				t.Errorf("closed counter %d, want %d", n, i+1)
			}
		})
	}
	if m := s.messages(); len(m) != 0 {
		t.Errorf("stored %q", m)
	}
	// A clean message still goes through.
	c := dial(t, s.addr)
	c.open()
	c.send("Subject: one\r\n\r\nbody\r\n.\r\nQUIT\r\n")
	c.expect("250 ")
	c.expect("221 ")
	if m := s.messages(); len(m) != 1 || m[0] != "Subject: one\r\n\r\nbody\r\n" {
		t.Errorf("stored %q", m)
	}
}

func TestBareNewlinesInCommands(t *testing.T) {
	s := startServer(t, nil)
	for _, cmd := range []string{"NOOP\n", "NO\rOP\r\n", "MAIL FROM:<a@example.org>\nRCPT TO:<b@example.test>\r\n"} {
		c := dial(t, s.addr)
		c.expect("220 ")
		c.send("EHLO client.example\r\n")
		c.expect("250 ")
		c.send(cmd)
		c.expect("521 5.5.2 ")
		c.expectClosed()
	}
	if n := s.counter(t, "sluice_ingress_connections_closed_total", "bare_cr"); n != 1 {
		t.Errorf("bare_cr closures %d, want 1", n)
	}
	if n := s.counter(t, "sluice_ingress_connections_closed_total", "bare_lf"); n != 2 {
		t.Errorf("bare_lf closures %d, want 2", n)
	}
}

func TestBDAT(t *testing.T) {
	s := startServer(t, nil)
	begin := func() *client {
		c := dial(t, s.addr)
		c.expect("220 ")
		c.send("EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n")
		c.expect("250 ")
		c.expect("250 ")
		c.expect("250 ")
		return c
	}

	// A CRLF split between chunks, and chunk content that looks like
	// commands and an end of data: all content, stored as sent.
	c := begin()
	first := "Subject: x\r\n\r\nab\r"
	c.send(fmt.Sprintf("BDAT %d\r\n%s", len(first), first))
	c.expect("250 ")
	content := "\n.\r\nMAIL FROM:<x@example.org>\r\n"
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(content), content))
	c.expect("250 ")
	c.send("QUIT\r\n")
	c.expect("221 ")
	want := "Subject: x\r\n\r\nab\r\n.\r\nMAIL FROM:<x@example.org>\r\n"
	if m := s.messages(); len(m) != 1 || m[0] != want {
		t.Fatalf("stored %q, want %q", m, want)
	}

	// A bare LF inside a chunk.
	c = begin()
	c.send("BDAT 18 LAST\r\nSubject: x\r\n\r\nab\n.\n")
	c.expect("521 5.5.2 ")
	c.expectClosed()
	// A bare CR at the end of the last chunk.
	c = begin()
	c.send("BDAT 5\r\nab\r\n\r")
	c.expect("250 ")
	c.send("BDAT 1 LAST\r\nx")
	c.expect("521 5.5.2 ")
	c.expectClosed()
	if m := s.messages(); len(m) != 1 {
		t.Errorf("stored %d messages, want only the first", len(m))
	}
}

func TestLineTooLong(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.addr)
	c.expect("220 ")
	c.send("NOOP " + strings.Repeat("x", 1000) + "\r\n")
	c.expect("500 5.5.2 Line too long")
	c.expectClosed()

	c = dial(t, s.addr)
	c.open()
	c.send("Subject: x\r\n\r\n" + strings.Repeat("y", 999) + "\r\n.\r\n")
	c.expect("500 5.5.2 Line too long")
	c.expectClosed()
	if m := s.messages(); len(m) != 0 {
		t.Errorf("stored %q", m)
	}
}

// TestSlowloris sends a command one octet at a time, each well within the
// read timeout: the line as a whole must be cut off.
func TestSlowloris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := startServer(t, func(o *guard.Options) { o.ReadTimeout = timeout; o.DataTimeout = 2 * timeout })
	c := dial(t, s.addr)
	c.expect("220 ")
	began := time.Now()
	line := "NOOP " + strings.Repeat("x", 40) + "\r\n"
	sent := 0
	for ; sent < len(line); sent++ {
		if _, err := c.c.Write([]byte{line[sent]}); err != nil {
			break // the server closed the connection
		}
		time.Sleep(timeout / 6)
	}
	if sent == len(line) {
		t.Fatalf("the whole line was sent in %s, one octet every %s, without being cut off", time.Since(began), timeout/6)
	}
	c.expect("421 4.4.2 ")
	c.expectClosed()

	// In DATA, complete short lines each within the read timeout, but
	// the content as a whole takes longer than the data timeout.
	c = dial(t, s.addr)
	c.open()
	lines := 0
	for ; lines < 40; lines++ {
		if _, err := io.WriteString(c.c, "x\r\n"); err != nil {
			break
		}
		time.Sleep(timeout / 3)
	}
	if lines == 40 {
		t.Fatal("40 lines sent over 4 data timeouts without being cut off")
	}
	c.expect("421 4.4.2 ")
	c.expectClosed()
	if n := s.counter(t, "sluice_ingress_connections_closed_total", "timeout"); n != 2 {
		t.Errorf("timeout closures %d, want 2", n)
	}
	if m := s.messages(); len(m) != 0 {
		t.Errorf("stored %q", m)
	}
}

func TestTooManyErrors(t *testing.T) {
	s := startServer(t, func(o *guard.Options) { o.MaxErrors = 3 })
	c := dial(t, s.addr)
	c.expect("220 ")
	c.send("EHLO client.example\r\n")
	c.expect("250 ")
	for range 2 {
		c.send("RCPT TO:<b@example.test>\r\n")
		c.expect("502 5.5.1 ")
	}
	c.send("RCPT TO:<b@example.test>\r\n")
	c.expect("502 5.5.1 ")
	c.expect("421 4.7.0 Too many errors")
	c.expectClosed()
}

func TestTooManyCommandsWithoutMail(t *testing.T) {
	s := startServer(t, func(o *guard.Options) { o.MaxCommands = 5 })
	c := dial(t, s.addr)
	c.expect("220 ")
	c.send("EHLO client.example\r\n")
	c.expect("250 ")
	for range 3 {
		c.send("NOOP\r\n")
		c.expect("250 ")
	}
	// An accepted MAIL starts the count again.
	c.send("MAIL FROM:<a@example.org>\r\n")
	c.expect("250 ")
	for range 5 {
		c.send("RSET\r\n")
		c.expect("250 ")
	}
	c.send("VRFY postmaster\r\n")
	c.expect("421 4.7.0 Too many commands")
	c.expectClosed()
}

func TestConnectionLimits(t *testing.T) {
	s := startServer(t, func(o *guard.Options) { o.MaxConnectionsPerClient = 2 })
	a, b := dial(t, s.addr), dial(t, s.addr)
	a.expect("220 ")
	b.expect("220 ")
	c := dial(t, s.addr)
	c.expect("421 4.7.0 Too many connections from your address")
	c.expectClosed()
	if n := s.counter(t, "sluice_ingress_connections_refused_total", "too_many_from_client"); n != 1 {
		t.Errorf("refused counter %d, want 1", n)
	}
	// A closed connection frees its slot.
	a.send("QUIT\r\n")
	a.expect("221 ")
	a.expectClosed()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := dial(t, s.addr)
		if r := d.reply(); strings.HasPrefix(r, "220 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection accepted after one closed")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Exempt clients (trusted networks) are not limited per address.
	s = startServer(t, func(o *guard.Options) {
		o.MaxConnectionsPerClient = 1
		o.Exempt = func(a netip.Addr) bool { return a.IsLoopback() }
	})
	dial(t, s.addr).expect("220 ")
	dial(t, s.addr).expect("220 ")

	s = startServer(t, func(o *guard.Options) { o.MaxConnections = 1 })
	dial(t, s.addr).expect("220 ")
	c = dial(t, s.addr)
	c.expect("421 4.7.0 Too many connections, try again later")
	c.expectClosed()
}

func TestStorageUnavailableAtConnect(t *testing.T) {
	var up sync.Mutex
	available := false
	s := startServer(t, func(o *guard.Options) {
		o.Available = func() bool { up.Lock(); defer up.Unlock(); return available }
	})
	c := dial(t, s.addr)
	c.expect("421 4.3.2 ")
	c.expectClosed()
	up.Lock()
	available = true
	up.Unlock()
	dial(t, s.addr).expect("220 ")
}

func TestServer421ClosesTheConnection(t *testing.T) {
	s := startServer(t, nil)
	s.mailErr = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}
	c := dial(t, s.addr)
	c.expect("220 ")
	c.send("EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
	c.expect("250 ")
	c.expect("421 4.3.2 ")
	c.expectClosed()
}

// TestInsideTLS: when go-smtp answers STARTTLS itself, the guard cannot
// read the stream any more; a clean message goes through, and the
// ContentReader refuses smuggled content. One sequence, "\r\n.\r",
// never reaches it: go-smtp's data reader drops a dot and CR at the start
// of a line, so the content arrives as plain CRLF lines and is stored as
// one message, the "second message" being text inside it.
func TestInsideTLS(t *testing.T) {
	s := startServer(t, nil)
	for _, seq := range append([]string{"\r\n"}, smuggling...) {
		c := dial(t, s.addr)
		c.expect("220 ")
		c.send("EHLO client.example\r\nSTARTTLS\r\n")
		c.expect("250 ")
		c.expect("220 ")
		tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c.c, c.r = tc, bufio.NewReader(tc)
		c.send("EHLO client.example\r\n")
		c.expect("250 ")
		c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
		c.expect("250 ")
		c.expect("250 ")
		c.expect("354 ")
		c.send("Subject: one\r\n\r\nbody" + seq + "MAIL FROM:<x@example.org>\r\n.\r\n")
		if seq == "\r\n" || seq == "\r\n.\r" {
			c.expect("250 ")
			continue
		}
		c.expect("550 5.5.2 Bare LF/CR not allowed (SMTP smuggling protection)")
		c.send("QUIT\r\n")
		c.expect("221 ")
	}
	want := "Subject: one\r\n\r\nbody\r\nMAIL FROM:<x@example.org>\r\n"
	if m := s.messages(); len(m) != 2 || m[0] != want || m[1] != want {
		t.Errorf("stored %q, want twice %q", m, want)
	}
}

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.guard.test"},
		DNSNames:     []string{"mx.guard.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
