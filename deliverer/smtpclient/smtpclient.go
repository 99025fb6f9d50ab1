// Package smtpclient speaks SMTP to one remote server for the deliverer: it
// connects with a timeout, greets with the configured host name, upgrades to
// TLS with STARTTLS when asked (the caller's check decides whether the
// server's certificate is acceptable; without one the upgrade is
// opportunistic, like Postfix's "may" security level, RFC 7435), and runs mail transactions for all recipients of a job, reporting the
// outcome of each recipient with the remote reply code, enhanced status code
// and text. Every failure is a *status.Error.
//
// The protocol is spoken directly over net/textproto rather than through
// go-smtp's Client: that Client cannot run STARTTLS after an EHLO with a
// name of our choosing, sends one command per round trip (no RFC 2920
// PIPELINING) and writes the content a byte at a time. go-smtp's SMTPError
// remains the type of a remote reply, which package status classifies.
package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Config configures a Dialer.
type Config struct {
	// Hostname is what we say in EHLO/HELO.
	Hostname string
	// ConnectTimeout bounds the TCP connection.
	ConnectTimeout time.Duration
	// CommandTimeout bounds the greeting and each command's reply, and each
	// write of the message content (RFC 5321 §4.5.3.2 suggests 5 minutes and
	// 3 minutes per data block).
	CommandTimeout time.Duration
	// DataTimeout bounds the wait for the reply to the final dot (RFC 5321
	// §4.5.3.2.6 suggests 10 minutes).
	DataTimeout time.Duration
	// Meter records sluice_deliverer_connections_active; nil disables it.
	Meter metric.Meter
	// Source, when valid, is the local address connections leave from
	// (deliverer.source_address), for destinations of its family; the
	// others leave from the address the kernel picks.
	Source netip.Addr
}

// Dialer opens sessions. It is safe for concurrent use.
type Dialer struct {
	cfg    Config
	active metric.Int64UpDownCounter
}

// New returns a Dialer.
func New(cfg Config) (*Dialer, error) {
	if cfg.Hostname == "" {
		return nil, errors.New("smtpclient: no hostname")
	}
	if err := validateLine(cfg.Hostname); err != nil {
		return nil, fmt.Errorf("smtpclient: hostname: %w", err)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 5 * time.Minute
	}
	if cfg.DataTimeout <= 0 {
		cfg.DataTimeout = 10 * time.Minute
	}
	m := cfg.Meter
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	active, err := m.Int64UpDownCounter("sluice_deliverer_connections_active",
		metric.WithDescription("SMTP connections to remote servers currently open."))
	if err != nil {
		return nil, err
	}
	return &Dialer{cfg: cfg, active: active}, nil
}

func validateLine(s string) error {
	if strings.ContainsAny(s, "\r\n ") {
		return errors.New("must not contain spaces or line breaks")
	}
	return nil
}

// errLineBreak refuses an argument that would end the command line early and
// smuggle in a command of its own (SMTP command injection).
var errLineBreak = errors.New("smtp: a line must not contain CR or LF")

// validateArg checks a command argument, such as an address, for line breaks.
func validateArg(s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return errLineBreak
	}
	return nil
}

// Session is one open connection to a server, after the greeting and EHLO.
type Session struct {
	d       *Dialer
	host    string // name of the server, for replies and SNI
	addr    netip.AddrPort
	raw     net.Conn // the TCP connection
	conn    net.Conn // raw, or the TLS connection over it
	br      *bufio.Reader
	r       *textproto.Reader // replies, read from br
	dw      *deadlineWriter
	w       *bufio.Writer // commands and content, written to dw
	ext     map[string]string
	tls     *tls.ConnectionState
	stop    func() bool
	closeMu sync.Once

	// needHelo is set when the server refused EHLO: HELO is sent before
	// the first transaction.
	needHelo bool
	// ready is set once the session said its last hello (after STARTTLS,
	// the EHLO RFC 3207 §4.2 requires): no more STARTTLS, transactions may
	// run.
	ready bool
	// broken is set when a command failed without a reply (the
	// connection broke or timed out) or the session was left in a state
	// we cannot tell: it must not be reused.
	broken bool
	// brokeAtMail is set when it broke on MAIL FROM, before the server
	// accepted anything of the transaction, so the caller may safely try
	// again on a new connection.
	brokeAtMail bool
	// uses counts the transactions started on the session.
	uses int
	// verified and verifiedBy are what SetVerified recorded.
	verified, verifiedBy string
}

// writeBuffer is the size of the buffer commands and content are written
// through: with the whole command group of a pipelined transaction in one
// buffer it goes out in one write, and the content goes out in blocks of
// this size instead of the 4 KB of textproto's default.
const writeBuffer = 32 << 10

// maxReplyLine bounds one line of a reply, so a hostile server cannot make
// us buffer without end. RFC 5321 §4.5.3.1.5 allows 512 octets; like
// go-smtp's client we accept up to 2000.
const maxReplyLine = 2000

// setConn makes c the connection commands go to and replies come from.
func (s *Session) setConn(c net.Conn) {
	s.conn = c
	s.br = bufio.NewReader(&lineLimitReader{r: c})
	s.r = textproto.NewReader(s.br)
	s.dw = &deadlineWriter{conn: c, timeout: s.d.cfg.CommandTimeout}
	s.w = bufio.NewWriterSize(s.dw, writeBuffer)
}

// RemoteHost names the server in results: "name[ip]:port" like Postfix logs.
func (s *Session) RemoteHost() string {
	return fmt.Sprintf("%s[%s]", s.host, s.addr.Addr())
}

// Host is the server's name as given to Connect.
func (s *Session) Host() string { return s.host }

// Addr is the address the session is connected to.
func (s *Session) Addr() netip.AddrPort { return s.addr }

// TLS returns the TLS state, or nil when the session is plaintext.
func (s *Session) TLS() *tls.ConnectionState { return s.tls }

// Offers reports whether the server's last EHLO reply listed ext. Keywords
// are case-insensitive (RFC 5321 §2.4).
func (s *Session) Offers(ext string) bool {
	_, ok := s.ext[strings.ToUpper(ext)]
	return ok
}

// Connect dials addr, reads the greeting and sends EHLO. host is the server's
// name. A failure to connect is REASON_CONNECT; a 4xx/5xx greeting or EHLO
// reply is REASON_REMOTE with the server's codes. The session ends when ctx
// does.
func (d *Dialer) Connect(ctx context.Context, host string, addr netip.AddrPort) (*Session, error) {
	nd := net.Dialer{Timeout: d.cfg.ConnectTimeout}
	if src := d.cfg.Source; src.IsValid() && src.Is4() == addr.Addr().Unmap().Is4() {
		nd.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	raw, err := nd.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, &status.Error{Code: 451, Enhanced: "4.4.1", Reason: sluicev1.Reason_REASON_CONNECT, Err: err,
			RemoteHost: fmt.Sprintf("%s[%s]", host, addr.Addr()),
			Text:       fmt.Sprintf("cannot connect to %s[%s]:%d: %s", host, addr.Addr(), addr.Port(), connectCause(err))}
	}
	d.active.Add(context.Background(), 1)
	s := &Session{d: d, host: host, addr: addr, raw: raw}
	s.setConn(raw)
	// Closing the connection is the one way to interrupt a blocked read.
	s.stop = context.AfterFunc(ctx, func() { raw.Close() })
	if _, _, err := s.reply(220, d.cfg.CommandTimeout); err != nil {
		s.Close()
		return nil, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	if err := s.ehlo(); err != nil {
		if isHelloRefused(err) {
			// An RFC 821 server: HELO comes before the first
			// transaction, and there is no STARTTLS without EHLO.
			s.ext = map[string]string{}
			s.needHelo = true
			return s, nil
		}
		s.Close()
		return nil, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	return s, nil
}

// isHelloRefused reports whether err is a server's way of saying it does
// not know EHLO (RFC 5321 §4.1.4: 500 or 502), so HELO should follow.
func isHelloRefused(err error) bool {
	c := replyCode(err)
	return c == 500 || c == 502
}

// connectCause names a dial failure without its Go-internal wording.
func connectCause(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// reply reads one reply, which may span several lines, waiting at most
// timeout. A reply other than expect (a full code, or its first digit or two
// as textproto.Reader.ReadResponse takes it) is returned as an
// *smtp.SMTPError; any other error means there was no reply.
func (s *Session) reply(expect int, timeout time.Duration) (int, string, error) {
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	code, msg, err := s.r.ReadResponse(expect)
	var te *textproto.Error
	if errors.As(err, &te) {
		return code, msg, replyError(te.Code, te.Msg)
	}
	return code, msg, err
}

// writeLine buffers one command line; flush sends what is buffered.
func (s *Session) writeLine(line string) {
	// Errors stick in the bufio.Writer and surface at the flush.
	s.w.WriteString(line)
	s.w.WriteString("\r\n")
}

func (s *Session) flush() error { return s.w.Flush() }

// cmd sends one command and reads its reply with the command timeout.
func (s *Session) cmd(expect int, line string) (int, string, error) {
	s.writeLine(line)
	if err := s.flush(); err != nil {
		return 0, "", err
	}
	return s.reply(expect, s.d.cfg.CommandTimeout)
}

// ehlo sends EHLO and records the extensions the server lists.
func (s *Session) ehlo() error {
	_, msg, err := s.cmd(250, "EHLO "+s.d.cfg.Hostname)
	if err != nil {
		return err
	}
	s.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		s.ext[strings.ToUpper(k)] = v
	}
	return nil
}

// hello readies the session for its first transaction, once: after
// STARTTLS it sends the EHLO that RFC 3207 §4.2 requires (falling back to
// HELO like any client), to a server that refused EHLO it sends HELO. A
// failure leaves the session broken.
func (s *Session) hello() error {
	if s.ready {
		return nil
	}
	s.ready = true
	var err error
	switch {
	case s.tls != nil:
		if err = s.ehlo(); err != nil && isHelloRefused(err) {
			s.ext = map[string]string{}
			_, _, err = s.cmd(250, "HELO "+s.d.cfg.Hostname)
		}
	case s.needHelo:
		_, _, err = s.cmd(250, "HELO "+s.d.cfg.Hostname)
	}
	if err != nil {
		s.broken = true
	}
	return err
}

// replyError makes a go-smtp error of a reply, splitting off the RFC 2034
// enhanced status code when the text starts with one. RFC 2034 §4 has the
// code repeated on every line of a multi-line reply; the repetitions are
// dropped from the text, as go-smtp's client does.
func replyError(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg, EnhancedCode: smtp.NoEnhancedCode}
	if ec, rest, ok := splitEnhanced(msg); ok {
		se.EnhancedCode = ec
		first, _, _ := strings.Cut(msg, " ")
		se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return se
}

func splitEnhanced(msg string) (smtp.EnhancedCode, string, bool) {
	first, rest, _ := strings.Cut(msg, " ")
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, msg, false
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCode{}, msg, false
		}
		ec[i] = n
	}
	return ec, rest, true
}

func replyCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func isReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

func (s *Session) classify(err error, reason sluicev1.Reason) *status.Error {
	e := status.Classify(err, reason, s.RemoteHost())
	if e.RemoteHost == "" {
		e.RemoteHost = s.RemoteHost()
	}
	return e
}

// StartTLS upgrades the session when the server offers STARTTLS, and reports
// whether it did. A refused STARTTLS or a failed handshake is REASON_TLS;
// the caller must not retry the same server without TLS, because falling
// back to plaintext is exactly what an active attacker would provoke.
//
// check, when not nil, judges the server's certificate during the
// handshake (tls.Config.VerifyConnection): an error aborts the handshake
// with a bad_certificate alert before anything is sent, and is returned as
// it is when it is a *status.Error, else as REASON_TLS with its text.
// Without check the certificate is not verified.
func (s *Session) StartTLS(ctx context.Context, check func(tls.ConnectionState) error) (bool, error) {
	if s.ready {
		return false, errors.New("smtpclient: StartTLS after the transaction started")
	}
	if !s.Offers("STARTTLS") {
		return false, nil
	}
	if _, _, err := s.cmd(220, "STARTTLS"); err != nil {
		return false, s.classify(err, sluicev1.Reason_REASON_TLS)
	}
	// Bytes the server sent after its 220 and before the handshake would
	// be an injection (CVE-2011-0411); the buffered reader is dropped.
	if s.br.Buffered() > 0 {
		return false, &status.Error{Code: 451, Enhanced: "4.7.0", Reason: sluicev1.Reason_REASON_PROTOCOL,
			RemoteHost: s.RemoteHost(), Text: "server sent data after its STARTTLS reply"}
	}
	tc := tls.Client(s.raw, &tls.Config{
		ServerName: s.host,
		// Go's own verification knows neither DANE nor a policy's
		// choice of roots: check does it all. Without check this is
		// opportunistic TLS (RFC 7435): encryption without
		// authentication beats plaintext, and an unverifiable
		// certificate is no reason to send in the clear instead.
		InsecureSkipVerify: true, //nolint:gosec // see above
		VerifyConnection:   check,
	})
	// The handshake has its own timeout; the one of the last reply must
	// not cut it short.
	s.raw.SetDeadline(time.Time{})
	hctx, cancel := context.WithTimeout(ctx, s.d.cfg.CommandTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		s.broken = true
		var se *status.Error
		if errors.As(err, &se) {
			if se.RemoteHost == "" {
				se.RemoteHost = s.RemoteHost()
			}
			return false, se
		}
		return false, &status.Error{Code: 451, Enhanced: "4.7.0", Reason: sluicev1.Reason_REASON_TLS, Err: err,
			RemoteHost: s.RemoteHost(), Text: "TLS handshake failed: " + err.Error()}
	}
	st := tc.ConnectionState()
	s.tls = &st
	s.setConn(tc)
	s.ext = nil
	// The EHLO after TLS (RFC 3207 §4.2) tells what the server offers to
	// a protected session, REQUIRETLS among it.
	if err := s.hello(); err != nil {
		return true, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	return true, nil
}

// SetVerified records that the session's certificate passed the check
// named key (of the caller's choosing) by method, so that a later attempt
// reusing the session can tell whether it satisfies its own policy.
func (s *Session) SetVerified(key, method string) { s.verified, s.verifiedBy = key, method }

// Verified is the key SetVerified recorded, "" when none.
func (s *Session) Verified() string { return s.verified }

// VerifiedBy is the method SetVerified recorded.
func (s *Session) VerifiedBy() string { return s.verifiedBy }

// Reusable reports whether another transaction may run on the session: the
// last one ended with the server ready for MAIL (RFC 5321 §4.1.4: after a
// completed DATA, or after RSET), and the connection did not break.
func (s *Session) Reusable() bool { return s.ready && !s.broken }

// BrokeBeforeMail reports whether the last transaction failed because the
// connection was already gone when MAIL FROM was sent: nothing of it
// reached the server, so it may be retried on a fresh connection without
// risking a duplicate. Servers close idle connections; this is how a cached
// one that went stale shows.
func (s *Session) BrokeBeforeMail() bool { return s.brokeAtMail }

// Uses is how many transactions were started on the session.
func (s *Session) Uses() int { return s.uses }

// Bind makes ctx the context whose end closes the connection, replacing the
// one given to Connect, so a cached session serves the attempt that took it.
// Bind(nil) leaves the session bound to nothing (idle in a cache).
func (s *Session) Bind(ctx context.Context) {
	if s.stop != nil {
		s.stop()
	}
	s.stop = func() bool { return false }
	if ctx != nil {
		raw := s.raw
		s.stop = context.AfterFunc(ctx, func() { raw.Close() })
	}
}

// deadlineWriter renews the write deadline before each write to the
// connection, so a slow but live server is not cut off by a total timeout
// while a long message goes out (RFC 5321 §4.5.3.2.5: 3 minutes per block).
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.conn.Write(p)
}

// lineLimitReader fails a read that would complete a reply line longer
// than maxReplyLine, or leave one that long unfinished.
type lineLimitReader struct {
	r    io.Reader
	line int // length of the line being read so far
}

var errLineTooLong = errors.New("smtp: too long a line in input stream")

func (l *lineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	b := p[:n]
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.line += len(b)
			break
		}
		if l.line+i > maxReplyLine {
			return 0, errLineTooLong
		}
		l.line = 0
		b = b[i+1:]
	}
	if l.line > maxReplyLine {
		return 0, errLineTooLong
	}
	return n, err
}

// quitTimeout bounds the goodbye: the transaction is over, a server slow to
// answer QUIT does not deserve our time.
const quitTimeout = 5 * time.Second

// Close ends the session politely (QUIT) when it can, and closes the
// connection. It is safe to call more than once.
func (s *Session) Close() {
	s.closeMu.Do(func() {
		// A broken session gets no QUIT: the server may be reading our
		// content still, or gone.
		if !s.broken {
			s.conn.SetDeadline(time.Now().Add(quitTimeout))
			s.dw.timeout = quitTimeout
			s.writeLine("QUIT")
			if s.flush() == nil && s.ready {
				// As go-smtp's client did, wait for the 221 of a session
				// that ran transactions before hanging up.
				_, _, _ = s.reply(221, quitTimeout)
			}
		}
		_ = s.conn.Close()
		_ = s.raw.Close()
		s.stop()
		s.d.active.Add(context.Background(), -1)
	})
}
