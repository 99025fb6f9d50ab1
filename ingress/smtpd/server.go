// Package smtpd is the ingress's SMTP server: a go-smtp backend whose
// sessions check the envelope (address syntax, relay policy, limits), turn
// an accepted transaction into a sluicev1.Message with a Received header,
// and answer 250 only once the store has JetStream's acknowledgement.
//
// One trace starts per DATA transaction (span "ingress.receive") and travels
// with the stored message, so the scheduler, deliverer and bouncer continue
// it.
package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/relay"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Storer makes a message durable; *store.Store implements it. Put returns
// only after JetStream acknowledged the write, and its errors wrap
// store.ErrFull or store.ErrUnavailable.
type Storer interface {
	Put(ctx context.Context, m *sluicev1.Message, body io.Reader, size int64) (store.Receipt, error)
}

var _ Storer = (*store.Store)(nil)

// Options configure a Server.
type Options struct {
	// Settings is the ingress configuration section.
	Settings ingress.Settings
	// LocalDomains are domains accepted from any client (inbound MX). Empty
	// until the ingress serves as an MX.
	LocalDomains []string
	Store        Storer
	Tracer       trace.Tracer
	Meter        metric.Meter
	Logger       *slog.Logger
}

// Server is a running SMTP ingress.
type Server struct {
	opts    Options
	policy  relay.Policy
	metrics *metrics
	log     *slog.Logger
	srv     *smtp.Server

	// ctx is the parent of every storage request; cancelled when a
	// shutdown runs out of grace.
	ctx    context.Context
	cancel context.CancelFunc

	ln        *trackingListener
	serveDone chan struct{}
	draining  atomic.Bool
	inflight  sync.WaitGroup // DATA transactions in progress
	stopOnce  sync.Once
	stopErr   error
}

// New returns a server that is not yet listening.
func New(o Options) (*Server, error) {
	if err := o.Settings.Validate(); err != nil {
		return nil, err
	}
	if o.Store == nil || o.Tracer == nil || o.Meter == nil || o.Logger == nil {
		return nil, errors.New("smtpd: Store, Tracer, Meter and Logger are required")
	}
	trusted, err := o.Settings.Trusted()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Meter)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:      o,
		policy:    relay.Policy{Trusted: trusted, LocalDomains: o.LocalDomains},
		metrics:   m,
		log:       o.Logger,
		serveDone: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = o.Settings.Hostname
	srv.MaxMessageBytes = o.Settings.MaxMessageBytes
	// The recipient limit is enforced by the session, with RFC 5321's
	// "452 Too many recipients" wording; go-smtp's own check would answer
	// first with different text.
	srv.MaxRecipients = 0
	srv.MaxLineLength = o.Settings.MaxLineLength
	srv.ReadTimeout = o.Settings.ReadTimeout
	srv.WriteTimeout = o.Settings.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableMTPRIORITY = true
	// RFC 6710 §10.2: we keep the client's priority value as given and
	// map it to our classes in the scheduler; no specific profile.
	srv.MtPriorityProfile = smtp.PriorityUnspecified
	srv.ErrorLog = slogPrinter{s.log}
	s.srv = srv
	return s, nil
}

// Start listens on Settings.Listen and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Settings.Listen)
	if err != nil {
		return fmt.Errorf("smtpd: listen %s: %w", s.opts.Settings.Listen, err)
	}
	s.ln = newTrackingListener(ln, s.opts.Settings.ReadTimeout)
	go func() {
		defer close(s.serveDone)
		// Serve returns when the listener is closed by Shutdown.
		_ = s.srv.Serve(s.ln)
	}()
	return nil
}

// Addr is the address the server listens on, once started.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting connections and new transactions, lets DATA
// transactions in progress finish until ctx is done, then closes every
// connection and waits for the server's goroutines. It is safe to call more
// than once; later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.draining.Store(true)
		if s.ln == nil {
			s.cancel()
			return
		}
		_ = s.ln.Close()
		finished := make(chan struct{})
		go func() { s.inflight.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-ctx.Done():
			s.stopErr = fmt.Errorf("smtpd: transactions still running at shutdown: %w", ctx.Err())
		}
		// Abort what is still waiting for storage; the clients get 451.
		s.cancel()
		s.ln.closeAll()
		<-finished
		<-s.serveDone
		// With every connection closed, this only waits for go-smtp's
		// connection goroutines to notice and return.
		if err := s.srv.Shutdown(context.Background()); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("smtp server shutdown", "err", err)
		}
	})
	return s.stopErr
}

// Close stops the server at once: transactions waiting for storage are
// aborted with 451.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// slogPrinter adapts the logger to go-smtp's Logger, which reports
// connection errors and recovered panics.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) { p.log.Warn(fmt.Sprintf(format, v...)) }
func (p slogPrinter) Println(v ...any)               { p.log.Warn(fmt.Sprint(v...)) }
