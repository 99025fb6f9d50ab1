// Package capture is an SMTP destination that keeps what it receives: the
// local "capture" mail server `make run` routes the test domain to, and the
// real go-smtp server tests deliver to. A test can script its replies per
// recipient and delay each transaction to play a slow receiver.
package capture

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one received transaction.
type Message struct {
	From     string
	To       []string
	Data     []byte
	Received time.Time
	TLS      bool
	// RequireTLS: MAIL FROM carried REQUIRETLS (RFC 8689).
	RequireTLS bool
}

// RcptFunc decides the reply to one RCPT TO; nil accepts. It is called with
// the number of earlier transactions that named this recipient.
type RcptFunc func(rcpt string, seen int) *smtp.SMTPError

// Options configure a Server.
type Options struct {
	// Domain is the server's host name in its greeting.
	Domain string
	// Dir, if set, receives one .eml file per message.
	Dir string
	// Forget keeps no message in memory, so that the server's memory does
	// not grow with the mail it captures (make run's destination, which
	// runs inside sluice-local with the embedded NATS server, and the
	// compose deployment's sink): each message is written to Dir when set,
	// handed to OnMessage when set, counted, and forgotten. Messages then
	// returns nothing and Wait only times out; Count counts every message.
	Forget bool
	// OnMessage, when set, is called with each message once it is written
	// to Dir and before the server answers DATA; it must not keep Data
	// when the point of Forget is to bound memory.
	OnMessage func(Message)
	// Delay is waited before answering DATA, to play a slow receiver.
	Delay time.Duration
	// Rcpt scripts RCPT replies.
	Rcpt RcptFunc
	// IdleTimeout closes a connection idle this long; 0 keeps the default
	// of one minute. Tests use it to play a server that drops idle clients.
	IdleTimeout time.Duration
	// Log receives a line per message; nil discards.
	Log *slog.Logger
	// TLS, when set, makes the server offer STARTTLS with it; tests of
	// the deliverer's TLS policies give it the certificate to present.
	TLS *tls.Config
	// RequireTLS makes the server offer REQUIRETLS (RFC 8689) after
	// STARTTLS.
	RequireTLS bool
}

// Server is a running capture server.
type Server struct {
	Addr string

	opts Options
	srv  *smtp.Server
	ln   net.Listener

	mu     sync.Mutex
	msgs   []Message
	seen   map[string]int
	notify chan struct{}
	count  atomic.Int64
	conns  atomic.Int64
}

// Connections returns how many SMTP connections the server has accepted.
func (s *Server) Connections() int { return int(s.conns.Load()) }

// Listen starts a server on addr.
func Listen(addr string, o Options) (*Server, error) {
	if o.Domain == "" {
		o.Domain = "capture.localhost"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o755); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: ln.Addr().String(), opts: o, ln: ln, seen: map[string]int{}, notify: make(chan struct{})}
	s.srv = smtp.NewServer(&backend{s: s})
	s.srv.Domain = o.Domain
	// Clients that hang up mid-session are normal here (tests, killed
	// deliverers); go-smtp would print each one to stderr.
	s.srv.ErrorLog = stdlog.New(io.Discard, "", 0)
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.MaxRecipients = 10000
	s.srv.ReadTimeout = time.Minute
	if o.IdleTimeout > 0 {
		s.srv.ReadTimeout = o.IdleTimeout
	}
	s.srv.WriteTimeout = time.Minute
	s.srv.EnableSMTPUTF8 = true
	s.srv.EnableDSN = true
	s.srv.TLSConfig = o.TLS
	s.srv.EnableREQUIRETLS = o.RequireTLS
	go s.srv.Serve(ln)
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

// Messages returns a copy of what has been received.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Count returns the number of messages received.
func (s *Server) Count() int { return int(s.count.Load()) }

// Wait blocks until at least n messages arrived or timeout passes, and
// returns what arrived.
func (s *Server) Wait(n int, timeout time.Duration) ([]Message, error) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			m := append([]Message(nil), s.msgs...)
			s.mu.Unlock()
			return m, nil
		}
		ch := s.notify
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return s.Messages(), fmt.Errorf("capture: %d of %d messages after %s", s.Count(), n, timeout)
		}
	}
}

type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.s.conns.Add(1)
	_, tls := c.TLSConnectionState()
	return &session{s: b.s, tls: tls, conn: c}, nil
}

type session struct {
	s    *Server
	from string
	to   []string
	tls  bool
	req  bool
	conn *smtp.Conn
}

// Envelope is what a transaction said besides its content, saved next to
// each message file as NAME.json: who sent it where, from which client,
// and over what.
type Envelope struct {
	From     string    `json:"from"`
	To       []string  `json:"to"`
	Client   string    `json:"client"`
	Helo     string    `json:"helo"`
	TLS      string    `json:"tls,omitempty"` // "TLS 1.3 TLS_AES_128_GCM_SHA256", or empty in clear
	Received time.Time `json:"received"`
	Size     int       `json:"size"`
	File     string    `json:"file"`
}

// envelope describes m as received on se's connection.
func (se *session) envelope(m Message, file string) Envelope {
	e := Envelope{From: m.From, To: m.To, Received: m.Received.UTC(), Size: len(m.Data), File: file}
	if se.conn != nil {
		e.Helo = se.conn.Hostname()
		if a := se.conn.Conn().RemoteAddr(); a != nil {
			e.Client = a.String()
		}
		if st, ok := se.conn.TLSConnectionState(); ok {
			e.TLS = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
		}
	}
	return e
}

func (se *session) AuthMechanisms() []string { return nil }
func (se *session) Mail(from string, o *smtp.MailOptions) error {
	se.from, se.req = from, o != nil && o.RequireTLS
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	se.s.mu.Lock()
	n := se.s.seen[to]
	se.s.seen[to] = n + 1
	se.s.mu.Unlock()
	if f := se.s.opts.Rcpt; f != nil {
		if e := f(to, n); e != nil {
			return e
		}
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if se.s.opts.Delay > 0 {
		time.Sleep(se.s.opts.Delay)
	}
	m := Message{From: se.from, To: append([]string(nil), se.to...), Data: data, Received: time.Now(), TLS: se.tls, RequireTLS: se.req}
	if dir := se.s.opts.Dir; dir != "" {
		sum := sha256.Sum256(data)
		base := fmt.Sprintf("%d-%s", m.Received.UnixNano(), hex.EncodeToString(sum[:6]))
		name := base + ".eml"
		// The envelope first, so that whoever watches for .eml files finds
		// it there.
		env, err := json.MarshalIndent(se.envelope(m, name), "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, base+".json"), append(env, '\n'), 0o644)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
		}
		if err != nil {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "capture: cannot write"}
		}
		se.s.opts.Log.Info("captured", "from", m.From, "to", m.To, "bytes", len(data), "file", filepath.Join(dir, name))
	}
	if f := se.s.opts.OnMessage; f != nil {
		f(m)
	}
	se.s.mu.Lock()
	if !se.s.opts.Forget {
		se.s.msgs = append(se.s.msgs, m)
	}
	se.s.count.Add(1)
	close(se.s.notify)
	se.s.notify = make(chan struct{})
	se.s.mu.Unlock()
	return nil
}

func (se *session) Reset()        { se.from, se.to, se.req = "", nil, false }
func (se *session) Logout() error { return nil }

// ErrNotFound is returned by Find when no message matches.
var ErrNotFound = errors.New("capture: no such message")

// Find returns the first message whose data contains needle.
func Find(ms []Message, needle []byte) (Message, error) {
	for _, m := range ms {
		if bytes.Contains(m.Data, needle) {
			return m, nil
		}
	}
	return Message{}, ErrNotFound
}
