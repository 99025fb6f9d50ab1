package smtpclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is a go-smtp server on loopback that records what it receives and
// refuses what a test tells it to.
type sink struct {
	Addr netip.AddrPort
	srv  *smtp.Server

	mu       sync.Mutex
	msgs     []sunk
	mailErr  map[string]*smtp.SMTPError // by MAIL FROM address
	rcptErr  map[string]*smtp.SMTPError // by RCPT TO address
	dataErr  *smtp.SMTPError            // returned for every message
	discard  bool                       // read bodies without keeping them
	sessions int
	resets   int
}

// sunk is one message as the sink received it.
type sunk struct {
	from string
	mail smtp.MailOptions
	to   []string
	rcpt []smtp.RcptOptions
	body []byte
}

func startSink(t testing.TB, configure func(*smtp.Server)) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{
		Addr:    netip.MustParseAddrPort(ln.Addr().String()),
		mailErr: map[string]*smtp.SMTPError{},
		rcptErr: map[string]*smtp.SMTPError{},
	}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "sink.test"
	s.srv.EnableDSN = true
	s.srv.EnableSMTPUTF8 = true
	s.srv.MaxRecipients = 0
	s.srv.ReadTimeout = 10 * time.Second
	s.srv.WriteTimeout = 10 * time.Second
	if configure != nil {
		configure(s.srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = s.srv.Close()
		<-done
	})
	return s
}

func (s *sink) messages() []sunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sunk(nil), s.msgs...)
}

func (s *sink) counts() (sessions, resets int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions, s.resets
}

func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.sessions++
	s.mu.Unlock()
	return &sinkSession{s: s}, nil
}

type sinkSession struct {
	s   *sink
	cur sunk
}

func (ss *sinkSession) Mail(from string, o *smtp.MailOptions) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if e := ss.s.mailErr[from]; e != nil {
		return e
	}
	ss.cur = sunk{from: from}
	if o != nil {
		ss.cur.mail = *o
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, o *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if e := ss.s.rcptErr[to]; e != nil {
		return e
	}
	ss.cur.to = append(ss.cur.to, to)
	var ro smtp.RcptOptions
	if o != nil {
		ro = *o
	}
	ss.cur.rcpt = append(ss.cur.rcpt, ro)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	ss.s.mu.Lock()
	discard := ss.s.discard
	ss.s.mu.Unlock()
	var body []byte
	if discard {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	} else {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		body = b
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.s.dataErr != nil {
		return ss.s.dataErr
	}
	m := ss.cur
	m.body = body
	if !discard {
		ss.s.msgs = append(ss.s.msgs, m)
	}
	return nil
}

func (ss *sinkSession) Reset() {
	ss.s.mu.Lock()
	ss.s.resets++
	ss.s.mu.Unlock()
	ss.cur = sunk{}
}

func (ss *sinkSession) Logout() error { return nil }

func testDialer(t testing.TB) *Dialer {
	t.Helper()
	d, err := New(Config{Hostname: "client.test", ConnectTimeout: 2 * time.Second,
		CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func connect(t testing.TB, d *Dialer, addr netip.AddrPort) *Session {
	t.Helper()
	s, err := d.Connect(context.Background(), "mx.test", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// message is a body of about n bytes of 76-character CRLF lines, with
// lines that start with a dot so that dot-stuffing has work to do.
func message(n int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <a@example.org>\r\nTo: <b@example.net>\r\nSubject: test\r\n\r\n")
	line := bytes.Repeat([]byte("0123456789"), 8)[:74]
	for i := 0; b.Len() < n; i++ {
		if i%10 == 0 {
			b.WriteByte('.')
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
