// Package smtpd is the ingress's SMTP server: a go-smtp backend whose
// sessions check the envelope (address syntax, relay policy, limits), turn
// an accepted transaction into a sluicev1.Message with a Received header,
// and answer 250 only once the store has JetStream's acknowledgement.
//
// It runs up to three listeners (see Settings): relay and inbound MX on one
// port-25 listener, whose policy depends on the client address and the
// recipient's domain, and submission on 587 (STARTTLS) and 465 (implicit
// TLS), which accept mail only after AUTH PLAIN or LOGIN over TLS. Every
// connection sits behind an smtpconn.Conn, which terminates TLS and passes
// go-smtp plaintext.
//
// One trace starts per DATA transaction (span "ingress.receive") and travels
// with the stored message, so the scheduler, deliverer and bouncer continue
// it.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/auth"
	"github.com/sluice-mta/sluice/ingress/authres"
	"github.com/sluice-mta/sluice/ingress/guard"
	"github.com/sluice-mta/sluice/ingress/inflow"
	"github.com/sluice-mta/sluice/ingress/recipients"
	"github.com/sluice-mta/sluice/ingress/relay"
	"github.com/sluice-mta/sluice/ingress/smtpconn"
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
	// LocalDomains are accepted from any client (inbound MX) in addition to
	// Settings.MX.AcceptedDomains.
	LocalDomains []string
	Store        Storer
	// Inflow, when set, makes MAIL FROM wait while delivery is behind
	// (package inflow); nil never waits.
	Inflow *inflow.Gate
	Tracer trace.Tracer
	Meter  metric.Meter
	Logger *slog.Logger
}

// Server is a running SMTP ingress.
type Server struct {
	opts    Options
	policy  relay.Policy
	metrics *metrics
	pm      *policyMetrics
	log     *slog.Logger
	guard   *guard.Guard // on every listener (protect.go)
	// resolver answers the SPF, DKIM and DMARC queries (inbound.go).
	resolver authres.Resolver

	// creds are the submission users (nil without submission); rcpts the
	// known recipients of the accepted domains (nil: every local part).
	creds *auth.Credentials
	rcpts *recipients.List

	// ctx is the parent of every storage request; cancelled when a
	// shutdown runs out of grace.
	ctx    context.Context
	cancel context.CancelFunc

	listeners  []*listener
	reloadStop chan struct{}
	reloadDone chan struct{}
	draining   atomic.Bool
	inflight   sync.WaitGroup // DATA transactions in progress
	inflightMu sync.Mutex     // orders inflight.Add against draining
	stopOnce   sync.Once
	stopErr    error
}

// New returns a server that is not yet listening. It reads the TLS
// certificate, the credentials file and the recipients file named in the
// settings; errors name the setting.
func New(o Options) (*Server, error) {
	if err := o.Settings.Validate(); err != nil {
		return nil, err
	}
	if o.Store == nil || o.Tracer == nil || o.Meter == nil || o.Logger == nil {
		return nil, errors.New("smtpd: Store, Tracer, Meter and Logger are required")
	}
	set := o.Settings
	trusted, err := set.Trusted()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Meter)
	if err != nil {
		return nil, err
	}
	pm, err := newPolicyMetrics(o.Meter)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts: o,
		policy: relay.Policy{
			Trusted:      trusted,
			LocalDomains: append(append([]string(nil), set.MX.AcceptedDomains...), o.LocalDomains...),
		},
		metrics: m,
		pm:      pm,
		log:     o.Logger,
	}
	if s.guard, err = s.newGuard(); err != nil {
		return nil, err
	}
	s.resolver = authres.NewResolver(set.DNSServer)
	var tlsCfg *tls.Config
	if set.TLS.Enabled() {
		cert, err := tls.LoadX509KeyPair(set.TLS.CertFile, set.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("ingress.tls.cert_file: %w", err)
		}
		// RFC 8314 §4.1 and RFC 8996: TLS 1.2 or newer.
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if set.Submission.Enabled() {
		if s.creds, err = auth.Load(set.Submission.CredentialsFile); err != nil {
			return nil, fmt.Errorf("ingress.submission.credentials_file: %w", err)
		}
	}
	if set.MX.RecipientsFile != "" {
		if s.rcpts, err = recipients.Load(set.MX.RecipientsFile, set.MX.RecipientDelimiter); err != nil {
			return nil, fmt.Errorf("ingress.mx.recipients_file: %w", err)
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	front := smtpconn.Config{TLS: tlsCfg, RequireTLS: true, MaxLineLength: set.MaxLineLength, HandshakeTimeout: set.ReadTimeout}
	if set.Listen != "" {
		s.addListener(&listener{name: ListenerSMTP, addr: set.Listen, front: front})
	}
	if set.Submission.Listen != "" {
		s.addListener(&listener{name: ListenerSubmission, addr: set.Submission.Listen, submission: true, front: front})
	}
	if set.Submission.ListenTLS != "" {
		implicit := front
		implicit.Implicit = true
		s.addListener(&listener{name: ListenerSubmissions, addr: set.Submission.ListenTLS, submission: true, front: implicit})
	}
	return s, nil
}

// addListener creates the go-smtp server of one listener.
func (s *Server) addListener(l *listener) {
	set := s.opts.Settings
	srv := smtp.NewServer(s.protected(&backend{s: s, l: l}))
	srv.Domain = set.Hostname
	srv.MaxMessageBytes = set.MaxMessageBytes
	// The recipient limit is enforced by the session, with RFC 5321's
	// "452 Too many recipients" wording; go-smtp's own check would answer
	// first with different text.
	srv.MaxRecipients = 0
	srv.MaxLineLength = set.MaxLineLength
	srv.ReadTimeout = set.ReadTimeout
	srv.WriteTimeout = set.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableMTPRIORITY = true
	// RFC 6710 §10.2: we keep the client's priority value as given and
	// map it to our classes in the scheduler; no specific profile.
	srv.MtPriorityProfile = smtp.PriorityUnspecified
	// TLS is terminated by smtpconn, so go-smtp never sees it: it has no
	// TLS configuration of its own, lets the session decide about AUTH
	// (which refuses it on clear connections with 538 5.7.11 and does not
	// advertise it there), and parses REQUIRETLS, which the session refuses
	// on clear connections. smtpconn advertises STARTTLS and REQUIRETLS.
	srv.AllowInsecureAuth = true
	srv.EnableREQUIRETLS = true
	srv.ErrorLog = errorLog{s}
	l.srv = srv
	l.done = make(chan struct{})
	s.listeners = append(s.listeners, l)
}

// Start listens on every configured address and serves in the background.
func (s *Server) Start() error {
	for i, l := range s.listeners {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, started := range s.listeners[:i] {
				_ = started.ln.Close()
				started.ln, started.fl = nil, nil
			}
			return fmt.Errorf("smtpd: %s listener on %s: %w", l.name, l.addr, err)
		}
		l.ln = newTrackingListener(ln, s.opts.Settings.ReadTimeout)
		l.fl = newFrontListener(l.ln, l.front)
	}
	for _, l := range s.listeners {
		go func() {
			defer close(l.done)
			// Serve returns when the listener is closed by Shutdown.
			_ = l.srv.Serve(s.guard.Listen(l.fl))
		}()
	}
	if iv := s.opts.Settings.ReloadInterval; iv > 0 && (s.creds != nil || s.rcpts != nil) {
		s.reloadStop, s.reloadDone = make(chan struct{}), make(chan struct{})
		go s.pollFiles(iv)
	}
	return nil
}

// Addr is the address of the relay/MX listener (or, without one, of the
// first listener), once started.
func (s *Server) Addr() net.Addr {
	if len(s.listeners) == 0 || s.listeners[0].ln == nil {
		return nil
	}
	return s.listeners[0].ln.Addr()
}

// ListenerAddr is the address of the named listener (ListenerSMTP,
// ListenerSubmission, ListenerSubmissions), or nil when it is not running.
func (s *Server) ListenerAddr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.name == name && l.ln != nil {
			return l.ln.Addr()
		}
	}
	return nil
}

// Reload re-reads the credentials and recipients files (main calls it on
// SIGHUP). A file that fails to load keeps its previous contents, and the
// error says which.
func (s *Server) Reload() error {
	var errs []error
	if s.creds != nil {
		if err := s.creds.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("ingress.submission.credentials_file: %w", err))
		} else {
			s.log.Info("credentials reloaded", "users", s.creds.Len())
		}
	}
	if s.rcpts != nil {
		if err := s.rcpts.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("ingress.mx.recipients_file: %w", err))
		} else {
			s.log.Info("recipients reloaded", "entries", s.rcpts.Len())
		}
	}
	return errors.Join(errs...)
}

// pollFiles reloads the credentials and recipients files when they change,
// until Shutdown. Polling the modification time works where signals do
// not reach (a Kubernetes Secret or ConfigMap updated in place).
func (s *Server) pollFiles(every time.Duration) {
	defer close(s.reloadDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.reloadStop:
			return
		case <-t.C:
		}
		if s.creds != nil {
			if changed, err := s.creds.ReloadIfChanged(); err != nil {
				s.log.Error("credentials not reloaded; keeping the previous users", "err", err)
			} else if changed {
				s.log.Info("credentials reloaded", "users", s.creds.Len())
			}
		}
		if s.rcpts != nil {
			if changed, err := s.rcpts.ReloadIfChanged(); err != nil {
				s.log.Error("recipients not reloaded; keeping the previous list", "err", err)
			} else if changed {
				s.log.Info("recipients reloaded", "entries", s.rcpts.Len())
			}
		}
	}
}

// Shutdown stops accepting connections and new transactions, lets DATA
// transactions in progress finish until ctx is done, then closes every
// connection and waits for the server's goroutines. It is safe to call more
// than once; later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.inflightMu.Lock()
		s.draining.Store(true)
		s.inflightMu.Unlock()
		if s.reloadStop != nil {
			close(s.reloadStop)
			<-s.reloadDone
		}
		running := s.listeners[:0:0]
		for _, l := range s.listeners {
			if l.ln != nil {
				running = append(running, l)
				_ = l.ln.Close()
			}
		}
		if len(running) == 0 {
			s.cancel()
			return
		}
		finished := make(chan struct{})
		go func() { s.inflight.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-ctx.Done():
			s.stopErr = fmt.Errorf("smtpd: transactions still running at shutdown: %w", ctx.Err())
		}
		// Abort what is still waiting for storage; the clients get 451.
		s.cancel()
		for _, l := range running {
			l.ln.closeAll()
		}
		<-finished
		for _, l := range running {
			<-l.done
			// With every connection closed, this only waits for go-smtp's
			// connection goroutines to notice and return.
			if err := l.srv.Shutdown(context.Background()); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("smtp server shutdown", "listener", l.name, "err", err)
			}
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
