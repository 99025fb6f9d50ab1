// Package smtpclient speaks SMTP to one remote server for the deliverer: it
// connects with a timeout, greets with the configured host name, upgrades to
// TLS with STARTTLS when the server offers it (opportunistically, like
// Postfix's "may" security level: certificates are not verified, RFC 7435),
// and runs one mail transaction for all recipients of a job, reporting the
// outcome of each recipient with the remote reply code, enhanced status code
// and text. Every failure is a *status.Error.
//
// go-smtp's Client cannot run STARTTLS after an EHLO with a name of our
// choosing (its STARTTLS path always says "EHLO localhost"), so this package
// reads the greeting, sends EHLO and runs STARTTLS itself with net/textproto,
// then hands the connection to go-smtp for the post-TLS EHLO (RFC 3207 §4.2
// requires one anyway) and the transaction. go-smtp expects to read a
// greeting first; it is given back the one we already read.
package smtpclient

import (
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

// Session is one open connection to a server, after the greeting and EHLO.
type Session struct {
	d       *Dialer
	host    string // name of the server, for replies and SNI
	addr    netip.AddrPort
	raw     net.Conn // the TCP connection
	conn    net.Conn // raw, or the TLS connection over it
	text    *textproto.Conn
	greet   string // the greeting line we read, replayed to go-smtp
	ext     map[string]string
	client  *smtp.Client
	tls     *tls.ConnectionState
	stop    func() bool
	closeMu sync.Once

	// broken is set when a command failed without a reply (the
	// connection broke or timed out): the session must not be reused.
	broken bool
	// brokeAtMail is set when it broke on MAIL FROM, before the server
	// accepted anything of the transaction, so the caller may safely try
	// again on a new connection.
	brokeAtMail bool
	// uses counts the transactions started on the session.
	uses int
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

// Offers reports whether the server's last EHLO reply listed ext.
func (s *Session) Offers(ext string) bool {
	if s.client != nil {
		ok, _ := s.client.Extension(ext)
		return ok
	}
	_, ok := s.ext[strings.ToUpper(ext)]
	return ok
}

// Connect dials addr, reads the greeting and sends EHLO. host is the server's
// name. A failure to connect is REASON_CONNECT; a 4xx/5xx greeting or EHLO
// reply is REASON_REMOTE with the server's codes. The session ends when ctx
// does.
func (d *Dialer) Connect(ctx context.Context, host string, addr netip.AddrPort) (*Session, error) {
	nd := net.Dialer{Timeout: d.cfg.ConnectTimeout}
	raw, err := nd.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, &status.Error{Code: 451, Enhanced: "4.4.1", Reason: sluicev1.Reason_REASON_CONNECT, Err: err,
			RemoteHost: fmt.Sprintf("%s[%s]", host, addr.Addr()),
			Text:       fmt.Sprintf("cannot connect to %s[%s]:%d: %s", host, addr.Addr(), addr.Port(), connectCause(err))}
	}
	d.active.Add(context.Background(), 1)
	s := &Session{d: d, host: host, addr: addr, raw: raw, conn: raw}
	// Closing the connection is the one way to interrupt a blocked read.
	s.stop = context.AfterFunc(ctx, func() { raw.Close() })
	s.text = textproto.NewConn(raw)
	code, msg, err := s.read(220)
	if err != nil {
		s.Close()
		return nil, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	s.greet = fmt.Sprintf("%d %s", code, firstLine(msg))
	if err := s.ehlo(); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
			// An RFC 821 server: go-smtp falls back to HELO, and there is
			// no STARTTLS without EHLO.
			s.ext = map[string]string{}
			return s, nil
		}
		s.Close()
		return nil, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	return s, nil
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

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// read reads one reply with the command timeout.
func (s *Session) read(expect int) (int, string, error) {
	s.conn.SetDeadline(time.Now().Add(s.d.cfg.CommandTimeout))
	defer s.conn.SetDeadline(time.Time{})
	code, msg, err := s.text.ReadResponse(expect)
	var te *textproto.Error
	if errors.As(err, &te) {
		return code, msg, replyError(te.Code, te.Msg)
	}
	return code, msg, err
}

func (s *Session) cmd(expect int, line string) (int, string, error) {
	s.conn.SetDeadline(time.Now().Add(s.d.cfg.CommandTimeout))
	if err := s.text.PrintfLine("%s", line); err != nil {
		return 0, "", err
	}
	return s.read(expect)
}

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

// replyError makes a go-smtp error of a reply, splitting off the RFC 2034
// enhanced status code when the text starts with one.
func replyError(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg, EnhancedCode: smtp.NoEnhancedCode}
	if ec, rest, ok := splitEnhanced(msg); ok {
		se.EnhancedCode = ec
		se.Message = rest
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
func (s *Session) StartTLS(ctx context.Context) (bool, error) {
	if s.client != nil {
		return false, errors.New("smtpclient: StartTLS after the transaction started")
	}
	if _, ok := s.ext["STARTTLS"]; !ok {
		return false, nil
	}
	if _, _, err := s.cmd(220, "STARTTLS"); err != nil {
		return false, s.classify(err, sluicev1.Reason_REASON_TLS)
	}
	// Bytes the server sent after its 220 and before the handshake would
	// be an injection (CVE-2011-0411); the buffered reader is dropped.
	if s.text.R.Buffered() > 0 {
		return false, &status.Error{Code: 451, Enhanced: "4.7.0", Reason: sluicev1.Reason_REASON_PROTOCOL,
			RemoteHost: s.RemoteHost(), Text: "server sent data after its STARTTLS reply"}
	}
	tc := tls.Client(s.raw, &tls.Config{
		ServerName: s.host,
		// Opportunistic TLS (RFC 7435): encryption without authentication
		// beats plaintext, and an unverifiable certificate is no reason to
		// send in the clear instead.
		InsecureSkipVerify: true, //nolint:gosec // see above
	})
	hctx, cancel := context.WithTimeout(ctx, s.d.cfg.CommandTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return false, &status.Error{Code: 451, Enhanced: "4.7.0", Reason: sluicev1.Reason_REASON_TLS, Err: err,
			RemoteHost: s.RemoteHost(), Text: "TLS handshake failed: " + err.Error()}
	}
	st := tc.ConnectionState()
	s.tls = &st
	s.conn = tc
	s.text = textproto.NewConn(tc)
	s.ext = nil
	// The EHLO after TLS (RFC 3207 §4.2) tells what the server offers to
	// a protected session, REQUIRETLS among it; go-smtp sends it.
	if err := s.handOver(); err != nil {
		return true, s.classify(err, sluicev1.Reason_REASON_REMOTE)
	}
	return true, nil
}

// Envelope is what one transaction sends.
//
// There is no body type: go-smtp declares BODY=8BITMIME whenever the server
// offers 8BITMIME (which is right for 7-bit content too), and sends 8-bit
// content as it is to a server that does not, like Postfix does by default
// instead of bouncing or downgrading (RFC 6152 §3 would have us convert).
type Envelope struct {
	From       string
	Recipients []Recipient
	// Size is the message size for the SIZE parameter (RFC 1870).
	Size int64
	// SMTPUTF8 asks for RFC 6531 handling; the server must offer it.
	SMTPUTF8 bool
	// RequireTLS sends the RFC 8689 REQUIRETLS parameter; the caller checks
	// that the session is TLS and that the server offers it.
	RequireTLS bool
	// Ret and EnvID are the RFC 3461 MAIL parameters, sent when the server
	// offers DSN.
	Ret   string
	EnvID string
}

// Recipient is one RCPT TO with its RFC 3461 parameters.
type Recipient struct {
	Address string
	// Notify is a sluicev1.Notify bit set; 0 sends no NOTIFY.
	Notify uint32
	// ORCPT is "addr-type;address" as the ingress stored it.
	ORCPT string
}

// Outcome is what happened to one recipient: Err is nil when the server
// accepted the message for it, and Reply is then the final reply text.
type Outcome struct {
	Err      *status.Error
	Code     int
	Enhanced string
	Reply    string
}

// Send runs one mail transaction: MAIL, a RCPT per recipient, DATA with the
// content from body. It returns one Outcome per recipient, in order. A
// rejected RCPT affects only its recipient; MAIL, DATA and connection
// failures apply to every recipient still open. Call Send once per session.
func (s *Session) Send(ctx context.Context, env Envelope, body io.Reader) []Outcome {
	out := make([]Outcome, len(env.Recipients))
	failAll := func(e *status.Error, which func(i int) bool) []Outcome {
		for i := range out {
			if which(i) {
				out[i].Err = e
			}
		}
		return out
	}
	all := func(int) bool { return true }

	if err := s.handOver(); err != nil {
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
	}
	c := s.client
	if env.SMTPUTF8 && !s.Offers("SMTPUTF8") {
		// RFC 6531 §3.4: without SMTPUTF8 at the next hop the message
		// cannot be delivered as it is.
		return failAll(&status.Error{Permanent: true, Code: 553, Enhanced: "5.6.7", Reason: sluicev1.Reason_REASON_PROTOCOL,
			RemoteHost: s.RemoteHost(), Text: "the server does not support SMTPUTF8 and the message needs it"}, all)
	}
	if max, ok := c.MaxMessageSize(); ok && max > 0 && env.Size > int64(max) {
		// RFC 1870 §6: do not send what the server announced it refuses.
		return failAll(&status.Error{Permanent: true, Code: 552, Enhanced: "5.3.4", Reason: sluicev1.Reason_REASON_REMOTE,
			RemoteHost: s.RemoteHost(), Text: fmt.Sprintf("message size %d exceeds the server's limit of %d", env.Size, max)}, all)
	}
	mo := &smtp.MailOptions{Size: env.Size, UTF8: env.SMTPUTF8, RequireTLS: env.RequireTLS, EnvelopeID: env.EnvID}
	switch strings.ToUpper(env.Ret) {
	case "FULL":
		mo.Return = smtp.DSNReturnFull
	case "HDRS":
		mo.Return = smtp.DSNReturnHeaders
	}
	s.uses++
	s.brokeAtMail = false
	if err := c.Mail(env.From, mo); err != nil {
		if !isReply(err) || replyCode(err) == 421 {
			// No reply, or 421 "closing transmission channel" (RFC 5321
			// §3.8), as a server that dropped an idle client sends.
			s.broken, s.brokeAtMail = true, true
		}
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
	}
	accepted := 0
	for i, r := range env.Recipients {
		err := c.Rcpt(r.Address, rcptOptions(r))
		if err == nil {
			accepted++
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// Not a reply: the connection broke, nothing more can happen.
			s.broken = true
			e := s.classify(err, sluicev1.Reason_REASON_REMOTE)
			return failAll(e, func(j int) bool { return j >= i || out[j].Err == nil })
		}
		out[i].Err = status.FromReply(se, sluicev1.Reason_REASON_REMOTE, s.RemoteHost())
	}
	open := func(i int) bool { return out[i].Err == nil }
	if accepted == 0 {
		if err := c.Reset(); err != nil {
			s.broken = true
		}
		return out
	}
	wc, err := c.Data()
	if err != nil {
		if !isReply(err) {
			s.broken = true
		} else if c.Reset() != nil {
			// The refused DATA left MAIL and RCPT open on the server.
			s.broken = true
		}
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), open)
	}
	if _, err := io.Copy(deadlineWriter{wc, s.conn, s.d.cfg.CommandTimeout}, body); err != nil {
		// The content could not be sent; what the server does with a
		// half message is its business, the attempt has failed.
		s.broken = true
		e := s.classify(err, sluicev1.Reason_REASON_REMOTE)
		if e.Reason == sluicev1.Reason_REASON_INTERNAL {
			e.Reason = sluicev1.Reason_REASON_REMOTE
		}
		return failAll(e, open)
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		if !isReply(err) {
			s.broken = true
		}
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), open)
	}
	enh, text := "2.0.0", resp.StatusText
	if ec, rest, ok := splitEnhanced(resp.StatusText); ok {
		enh, text = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2]), rest
	}
	for i := range out {
		if out[i].Err == nil {
			out[i] = Outcome{Code: 250, Enhanced: enh, Reply: text}
		}
	}
	return out
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

// Reusable reports whether another transaction may run on the session: the
// last one ended with the server ready for MAIL (RFC 5321 §4.1.4: after a
// completed DATA, or after RSET), and the connection did not break.
func (s *Session) Reusable() bool { return s.client != nil && !s.broken }

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

// handOver gives the connection to go-smtp, replaying the greeting, and
// lets it send its own EHLO with our host name. It does so once.
func (s *Session) handOver() error {
	if s.client != nil {
		return nil
	}
	// The buffered reader of the raw phase holds nothing: every reply so
	// far was read whole and servers do not speak unprompted.
	replay := &replayConn{Conn: s.conn, r: io.MultiReader(strings.NewReader(s.greet+"\r\n"), s.text.R)}
	c := smtp.NewClient(replay)
	c.CommandTimeout = s.d.cfg.CommandTimeout
	c.SubmissionTimeout = s.d.cfg.DataTimeout
	s.client = c
	return c.Hello(s.d.cfg.Hostname)
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// deadlineWriter renews the write deadline before each write of the
// content, so a slow but live server is not cut off by a total timeout.
type deadlineWriter struct {
	w       io.Writer
	conn    net.Conn
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.w.Write(p)
}

// rcptOptions maps the job's RFC 3461 parameters; go-smtp sends them only
// when the server offers DSN.
func rcptOptions(r Recipient) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	n := r.Notify
	switch {
	case n&uint32(sluicev1.Notify_NOTIFY_NEVER) != 0:
		o.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
	case n != 0:
		if n&uint32(sluicev1.Notify_NOTIFY_SUCCESS) != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifySuccess)
		}
		if n&uint32(sluicev1.Notify_NOTIFY_FAILURE) != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyFailure)
		}
		if n&uint32(sluicev1.Notify_NOTIFY_DELAY) != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyDelayed)
		}
	}
	if typ, addr, ok := strings.Cut(r.ORCPT, ";"); ok && addr != "" {
		switch strings.ToLower(typ) {
		case "rfc822":
			if printableASCII(addr) {
				o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
			}
		case "utf-8":
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		}
	}
	return o
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// quitTimeout bounds the goodbye: the transaction is over, a server slow to
// answer QUIT does not deserve our time.
const quitTimeout = 5 * time.Second

// Close ends the session politely (QUIT) when it can, and closes the
// connection. It is safe to call more than once.
func (s *Session) Close() {
	s.closeMu.Do(func() {
		if s.client != nil {
			// go-smtp sets its own deadline per command.
			s.client.CommandTimeout = quitTimeout
			_ = s.client.Quit()
			_ = s.client.Close()
		} else {
			s.conn.SetDeadline(time.Now().Add(quitTimeout))
			_ = s.text.PrintfLine("QUIT")
			_ = s.conn.Close()
		}
		_ = s.raw.Close()
		s.stop()
		s.d.active.Add(context.Background(), -1)
	})
}
