package smtpd

import (
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/ingress/guard"
)

// This file is the server's protection against its clients and against
// its own bugs: the guard on every listener (package guard), the storage
// check before a transaction starts, and a wrapper around every session
// that recovers and counts panics and makes sure that only our own
// replies, never an error's text, reach a client.

// errStorageDown refuses a transaction while the service knows its
// storage is unreachable (RFC 3463 4.3.2 "system not accepting network
// messages"): nothing could be stored, so the client should not send it.
var errStorageDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service temporarily unavailable, try again later"}

// errInternal replaces any error a session method returns that is not one
// of our replies: unknown errors are temporary, and their text stays in
// the log.
var errInternal = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary local problem, please try again later"}

// availability is implemented by a Storer that knows whether it can take
// messages now (*store.Store: whether NATS is connected).
type availability interface {
	Available() bool
}

// storageAvailable reports whether the store is known to be able to take
// messages; a store that cannot tell is assumed available.
func (s *Server) storageAvailable() bool {
	a, ok := s.opts.Store.(availability)
	return !ok || a.Available()
}

// newGuard makes the guard of the server's listeners with the configured
// limits.
func (s *Server) newGuard() (*guard.Guard, error) {
	set := s.opts.Settings
	return guard.New(guard.Options{
		MaxLineLength:           set.MaxLineLength,
		ReadTimeout:             set.ReadTimeout,
		WriteTimeout:            set.WriteTimeout,
		DataTimeout:             set.DataTimeout,
		MaxErrors:               set.MaxErrors,
		MaxCommands:             set.MaxCommandsWithoutMail,
		MaxConnections:          set.MaxConnections,
		MaxConnectionsPerClient: set.MaxConnectionsPerClient,
		Exempt:                  s.policy.IsTrusted,
		Available:               s.storageAvailable,
		Meter:                   s.opts.Meter,
		Logger:                  s.log,
	})
}

// contentReader reads a transaction's content under the guard's content
// rules: bare CR or LF, line length, header section size.
func (s *Server) contentReader(r io.Reader) io.Reader {
	return guard.NewContentReader(r, guard.ContentLimits{
		MaxLineLength:  s.opts.Settings.MaxLineLength,
		MaxHeaderBytes: s.opts.Settings.MaxHeaderBytes,
	})
}

// protected wraps a backend so that every session it makes is protected.
func (s *Server) protected(b smtp.Backend) smtp.Backend {
	return protectedBackend{b: b, s: s}
}

type protectedBackend struct {
	b smtp.Backend
	s *Server
}

func (p protectedBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	defer p.s.recovered("new_session", true)
	se, err := p.b.NewSession(c)
	if err != nil {
		return nil, p.s.reply("new_session", err)
	}
	ps := &protectedSession{in: se, s: p.s}
	ps.gc, _ = c.Conn().(*guard.Conn)
	return ps, nil
}

// protectedSession forwards to the real session. go-smtp recovers a panic
// in a command (it answers 421 and closes the connection) but does not
// count it, and Logout runs outside that recovery, from Close, where a
// panic would end the process.
type protectedSession struct {
	in smtp.Session
	s  *Server
	gc *guard.Conn // the guarded connection; nil only in tests without a guard
}

var (
	_ smtp.Session     = (*protectedSession)(nil)
	_ smtp.AuthSession = (*protectedSession)(nil)
)

func (p *protectedSession) Reset() {
	defer p.s.recovered("reset", true)
	p.in.Reset()
}

func (p *protectedSession) Logout() error {
	defer p.s.recovered("logout", false)
	if err := p.in.Logout(); err != nil {
		p.s.log.Warn("session logout", "err", err)
	}
	return nil
}

func (p *protectedSession) Mail(from string, opts *smtp.MailOptions) error {
	defer p.s.recovered("mail", true)
	return p.s.reply("mail", p.in.Mail(from, opts))
}

func (p *protectedSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	defer p.s.recovered("rcpt", true)
	return p.s.reply("rcpt", p.in.Rcpt(to, opts))
}

func (p *protectedSession) Data(r io.Reader) error {
	// go-smtp may run Data on its BDAT goroutine; from now on the
	// connection may end without that goroutine finding the session gone
	// (see guard.Conn).
	if p.gc != nil {
		p.gc.DataStarted()
	}
	defer p.s.recovered("data", true)
	if p.gc != nil {
		// DATA content read in runs rather than by go-smtp's reader, one
		// octet at a time (see guard.Content); BDAT chunks come as they
		// are.
		if c, ok := p.gc.DataContent(p.s.opts.Settings.MaxMessageBytes, smtp.ErrDataTooLarge); ok {
			defer c.Close()
			r = c
		}
	}
	return p.s.reply("data", p.in.Data(r))
}

func (p *protectedSession) AuthMechanisms() []string {
	defer p.s.recovered("auth", true)
	if a, ok := p.in.(smtp.AuthSession); ok {
		return a.AuthMechanisms()
	}
	return nil
}

func (p *protectedSession) Auth(mech string) (sasl.Server, error) {
	defer p.s.recovered("auth", true)
	a, ok := p.in.(smtp.AuthSession)
	if !ok {
		return nil, smtp.ErrAuthUnsupported
	}
	srv, err := a.Auth(mech)
	if err != nil {
		return nil, p.s.reply("auth", err)
	}
	return protectedSASL{in: srv, s: p.s}, nil
}

type protectedSASL struct {
	in sasl.Server
	s  *Server
}

func (p protectedSASL) Next(response []byte) ([]byte, bool, error) {
	defer p.s.recovered("auth", true)
	challenge, done, err := p.in.Next(response)
	if err != nil {
		return nil, true, p.s.reply("auth", err)
	}
	return challenge, done, nil
}

// reply passes our replies (and nil) through and replaces anything else
// by errInternal, logging the original: go-smtp would write its text to
// the client, and from Data as a permanent 554.
func (s *Server) reply(where string, err error) error {
	if err == nil {
		return nil
	}
	// go-smtp looks for *smtp.SMTPError by type assertion, not errors.As.
	if _, ok := err.(*smtp.SMTPError); ok {
		return err
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	s.log.Error("session error without an SMTP reply; answering 451", "method", where, "err", err)
	return errInternal
}

// recovered is deferred by every protected method. It counts and logs a
// panic with its stack; with again it panics again, so that go-smtp's own
// recovery answers 421 and closes the connection (the session's state
// cannot be trusted after a panic); without, it swallows the panic (for
// Logout, which go-smtp calls without recovery).
func (s *Server) recovered(where string, again bool) {
	v := recover()
	if v == nil {
		return
	}
	s.metrics.panics.Add(s.ctx, 1, metric.WithAttributes(attribute.String("method", where)))
	s.log.Error("panic in SMTP session", "method", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if again {
		panic(sessionPanic{v})
	}
}

// sessionPanic is what a protected method panics with again once it has
// counted and logged a panic, so that go-smtp's report of the same panic
// (through errorLog) is known and neither counted nor logged twice.
type sessionPanic struct{ v any }

func (p sessionPanic) String() string { return fmt.Sprint(p.v) }

// errorLog is go-smtp's Logger. go-smtp reports connection errors through
// it, and every panic it recovers ("panic serving ADDR: VALUE\nSTACK", from
// a command, or from its BDAT goroutine), stack included. A panic that
// did not go through a protected method (go-smtp's own, or one around a
// session call) is counted with method "smtp" and logged once, at warning
// level and without the stack, so that no client can fill the log with
// stack traces.
type errorLog struct{ s *Server }

func (e errorLog) Printf(format string, v ...any) {
	if strings.HasPrefix(format, "panic serving ") && len(v) >= 2 {
		e.s.libraryPanic(v[0], v[1])
		return
	}
	e.s.log.Warn(fmt.Sprintf(format, v...))
}

func (e errorLog) Println(v ...any) { e.s.log.Warn(fmt.Sprint(v...)) }

// libraryPanic counts and logs a panic go-smtp recovered while serving
// client, unless a protected method has already done so.
func (s *Server) libraryPanic(client, v any) {
	if _, ours := v.(sessionPanic); ours {
		return
	}
	s.metrics.panics.Add(s.ctx, 1, metric.WithAttributes(attribute.String("method", "smtp")))
	s.log.Warn("panic recovered by go-smtp; connection closed", "client", fmt.Sprint(client), "panic", fmt.Sprint(v))
}
