// Package courier makes one delivery attempt of a job: it finds the
// destination's hosts (package mx), tries them in order, and runs one SMTP
// transaction for all of the job's recipients (package smtpclient) on the
// first server that lets it. It returns one result per recipient and records
// the steps as trace spans: dns.mx, dns.address, smtp.connect,
// smtp.starttls and smtp.transaction.
//
// Which failures move on to the next address or MX host, and which end the
// attempt, follows RFC 5321 §5.1 and Postfix's habits:
//
//   - connection refused or timed out, a 4xx/5xx greeting or EHLO reply, a
//     failed STARTTLS: the next address, then the next host. A server whose
//     STARTTLS fails is never retried without TLS in the same attempt.
//   - the TLS policy (WithTLSPolicy, package tlspolicy) is chosen for every
//     host before the first connection, in a tls.policy span: a host the
//     policy refuses (outside an enforced MTA-STS policy, a failed TLSA
//     lookup) is skipped; a server without STARTTLS, or whose certificate
//     fails a required check, is left for the next host and never sent
//     anything in clear text. These failures are temporary, with reason
//     REASON_TLS and a text naming the policy and the cause.
//   - a job with require_tls (RFC 8689) needs TLS with a certificate
//     verified by DANE or by webpki against the MX host name, whatever the
//     destination's policy, and a server that offers REQUIRETLS: at any
//     other server, the next host; 550 5.7.30 "REQUIRETLS support
//     required: <host> <cause>" if none qualifies.
//   - once MAIL FROM was sent, the replies are the answer of the destination
//     and the attempt ends with them.
//
// When no server was reached, the recipients get the first temporary error
// met, or the first error if every one was permanent: a dead primary MX is
// worth a retry even when a backup refused.
//
// With a Signer (WithSigner), the message is DKIM-signed once a server is
// ready for the transaction and before MAIL FROM, in a dkim.sign span: the
// signer reads the whole body (spooling it, see package dkim) and the
// DKIM-Signature fields go in front of it. Signing when a server is ready,
// not before connecting, means an attempt that reaches nobody does not read
// a large body for nothing. A failure to read the body for signing defers
// the recipients (451 4.3.0): sending unsigned mail could make it fail
// DMARC at the destination.
package courier

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/smtpclient"
	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Router finds the hosts of a destination; *mx.Resolver implements it.
type Router interface {
	Route(ctx context.Context, domain string) (mx.Route, error)
	Addrs(ctx context.Context, host string) ([]netip.Addr, error)
}

var _ Router = (*mx.Resolver)(nil)

// Signer signs a message before it is sent; *dkim.Signer implements it.
type Signer interface {
	Sign(body io.Reader, envelopeFrom string) (*dkim.Signed, error)
}

var _ Signer = (*dkim.Signer)(nil)

// Courier makes delivery attempts. It is safe for concurrent use.
type Courier struct {
	router Router
	dialer *smtpclient.Dialer
	tracer trace.Tracer
	signer Signer
	cache  *connCache
	// policy decides TLS requirements (see tls.go); nil is "may".
	policy      TLSPolicy
	tlsSessions metric.Int64Counter
	// reports counts TLS sessions for TLS-RPT; nil counts nothing.
	reports TLSReporter
}

// Option configures a Courier.
type Option func(*Courier)

// WithSigner makes the courier DKIM-sign every message with s; nil (or a
// *dkim.Signer without keys) sends mail unsigned.
func WithSigner(s *dkim.Signer) Option {
	return func(c *Courier) {
		if s != nil && !s.Empty() {
			c.signer = s
		}
	}
}

// WithConnectionReuse keeps sessions open for the next delivery to the same
// site (see CacheConfig). Close the Courier to close them.
func WithConnectionReuse(cfg CacheConfig) Option {
	return func(c *Courier) { c.cache = newConnCache(cfg) }
}

// Close closes the idle sessions kept for reuse; safe to call twice.
func (c *Courier) Close() { c.cache.close() }

// New returns a Courier.
func New(router Router, dialer *smtpclient.Dialer, tracer trace.Tracer, opts ...Option) *Courier {
	c := &Courier{router: router, dialer: dialer, tracer: tracer}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Slot is the right to hold one connection to a site open, shared by the
// fleet (*shaping.Lease). The courier releases it when the connection it
// covers closes.
type Slot interface {
	Release()
}

// Ticket is what one attempt may use to reach its site: an idle session of
// the site taken from the cache, which keeps the slot it was opened with,
// or a slot for a new connection. The attempt that receives it owns it.
type Ticket struct {
	site    string
	slot    Slot
	maxUses int
	idle    *smtpclient.Session
}

// NewTicket returns a ticket for a new connection to site covered by slot
// (nil: no limit), whose session carries at most maxUses transactions (0:
// CacheConfig.MaxUses).
func NewTicket(site string, slot Slot, maxUses int) *Ticket {
	return &Ticket{site: site, slot: slot, maxUses: maxUses}
}

// Idle takes an idle session of site from the cache, or returns nil. Its
// connection already holds a slot of the site.
func (c *Courier) Idle(site string) *Ticket {
	e, ok := c.cache.get(site)
	if !ok {
		return nil
	}
	return &Ticket{site: site, slot: e.slot, maxUses: e.maxUses, idle: e.s}
}

// AwaitIdle waits up to d for a session of site that another attempt of
// this deliverer is about to finish with, unless max attempts already wait
// (a caller passes the number of connections it holds to the site, so that
// no more attempts wait than sessions will come back). It returns the
// session's ticket; or nil and true when one of those sessions was closed
// instead, so that a slot of the site is free again; or nil and false.
func (c *Courier) AwaitIdle(ctx context.Context, site string, max int, d time.Duration) (*Ticket, bool) {
	e, ok := c.cache.await(ctx, site, max, d)
	if !ok {
		return nil, false
	}
	if e.s == nil {
		return nil, true
	}
	return &Ticket{site: site, slot: e.slot, maxUses: e.maxUses, idle: e.s}, false
}

// Unused gives back a ticket that was not used: its idle session goes back
// to the cache (or to an attempt waiting for one) with its slot; a slot
// without a session is released.
func (c *Courier) Unused(t *Ticket) {
	if t.idle != nil {
		c.cache.put(t.site, idleSession{s: t.idle, slot: t.slot, maxUses: t.maxUses})
		t.idle, t.slot = nil, nil
		return
	}
	t.Release()
}

// Release gives back a ticket that will not be used: its idle session is
// closed and its slot released.
func (t *Ticket) Release() {
	if t.idle != nil {
		t.idle.Close()
		t.idle = nil
	}
	if t.slot != nil {
		t.slot.Release()
		t.slot = nil
	}
}

// Deliver makes one attempt to deliver body to the recipients of job,
// without connection limits, and returns a result per recipient (see
// DeliverVia).
func (c *Courier) Deliver(ctx context.Context, job *sluicev1.Job, body io.Reader) []*sluicev1.RecipientResult {
	route, err := c.Route(ctx, job.Domain)
	if err != nil {
		return RouteFailed(job, err)
	}
	t := c.Idle(route.Site)
	if t == nil {
		t = NewTicket(route.Site, nil, 0)
	}
	return c.DeliverVia(ctx, job, route, t, body)
}

// RouteFailed is the result of every recipient of a job whose route could
// not be found (an error of Route).
func RouteFailed(job *sluicev1.Job, err error) []*sluicev1.RecipientResult {
	return results(job, all(len(job.Recipients), status.Classify(err, sluicev1.Reason_REASON_DNS, "")))
}

// DeliverVia makes one attempt to deliver body to the recipients of job at
// the hosts of route, with the ticket's session or a new connection under
// its slot, and returns a result per recipient, in the job's order, with
// notify and orcpt copied for the bouncer. It takes the ticket over: the
// session goes back to the cache with its slot, or is closed and the slot
// released.
func (c *Courier) DeliverVia(ctx context.Context, job *sluicev1.Job, route mx.Route, t *Ticket, body io.Reader) []*sluicev1.RecipientResult {
	return results(job, c.attempt(ctx, job, route, t, body))
}

func results(job *sluicev1.Job, outcomes []outcome) []*sluicev1.RecipientResult {
	res := make([]*sluicev1.RecipientResult, len(job.Recipients))
	for i, r := range job.Recipients {
		rr := &sluicev1.RecipientResult{Address: r.Address, Notify: r.Notify, Orcpt: r.Orcpt}
		o := outcomes[i]
		rr.Tls = o.tls
		if o.err == nil {
			rr.Outcome = sluicev1.Outcome_OUTCOME_DELIVERED
			rr.Code, rr.EnhancedCode, rr.Text, rr.RemoteHost = 250, o.enhanced, o.text, o.host
		} else {
			rr.Outcome = o.err.Outcome()
			rr.Reason = o.err.Reason
			rr.Code, rr.EnhancedCode, rr.Text, rr.RemoteHost = uint32(o.err.Code), o.err.Enhanced, o.err.Text, o.err.RemoteHost
		}
		res[i] = rr
	}
	return res
}

type outcome struct {
	err      *status.Error
	enhanced string
	text     string
	host     string
	// tls is the TLS of the session of the transaction.
	tls *sluicev1.TlsOutcome
}

func all(n int, e *status.Error) []outcome {
	out := make([]outcome, n)
	for i := range out {
		out[i].err = e
	}
	return out
}

func (c *Courier) attempt(ctx context.Context, job *sluicev1.Job, route mx.Route, t *Ticket, body io.Reader) []outcome {
	n := len(job.Recipients)
	// Whatever happens, the ticket's slot ends up with a cached session or
	// released.
	defer t.Release()
	// The message is signed once per attempt, when a server is first ready
	// for it, and the same signed content serves a retry on a new
	// connection after a cached one turned out dead.
	var signed struct {
		msg   io.Reader
		added int64
		done  func()
		err   *status.Error
		ok    bool
	}
	message := func() (io.Reader, int64, *status.Error) {
		if !signed.ok {
			signed.msg, signed.added, signed.done, signed.err = c.sign(ctx, job, body)
			signed.ok = true
		}
		return signed.msg, signed.added, signed.err
	}
	defer func() {
		if signed.done != nil {
			signed.done()
		}
	}()
	attemptSpan := trace.SpanFromContext(ctx)
	policies := c.choosePolicy(ctx, route, job)
	if sess := t.idle; sess != nil {
		t.idle = nil
		if out, ok := c.reuse(ctx, sess, t, job, message, policies); ok {
			return out
		}
		// The session was closed; its slot serves the new connection.
	}
	var err error
	var failures []*status.Error
	for _, h := range route.Hosts {
		req := policies.For(ctx, h.Name, h.Port)
		if req.Refused != "" {
			failures = append(failures, c.refused(ctx, req))
			continue
		}
		addrs := h.Addrs
		if len(addrs) == 0 {
			addrs, err = c.addrs(ctx, h.Name)
			if err != nil {
				e := status.Classify(err, sluicev1.Reason_REASON_DNS, "")
				if e.Permanent {
					// An MX host without addresses is a broken record that
					// its owner will likely fix: defer, like Postfix.
					e = &status.Error{Code: 451, Enhanced: "4.4.3", Reason: sluicev1.Reason_REASON_DNS, Err: e,
						Text: fmt.Sprintf("MX host %s of %s: %s", h.Name, route.Domain, e.Text)}
				}
				failures = append(failures, e)
				continue
			}
		}
	addrLoop:
		for _, a := range addrs {
			if err := ctx.Err(); err != nil {
				failures = append(failures, status.Classify(err, sluicev1.Reason_REASON_INTERNAL, ""))
				break
			}
			sess, err := c.connect(ctx, h, a)
			if err != nil {
				failures = append(failures, status.Classify(err, sluicev1.Reason_REASON_CONNECT, ""))
				continue
			}
			tlsOut, e := c.secure(ctx, sess, job, req, true)
			if e != nil {
				sess.Close()
				failures = append(failures, e)
				if e.Reason == sluicev1.Reason_REASON_REQUIRE_TLS {
					// Another address of the same host is the same server.
					break addrLoop
				}
				continue
			}
			recordTLS(attemptSpan, tlsOut)
			msg, added, e := message()
			if e != nil {
				sess.Close()
				return all(n, e)
			}
			out := withTLS(c.transaction(ctx, sess, h, job, msg, added), tlsOut)
			c.keep(t, sess)
			return out
		}
	}
	return all(n, pick(failures, route.Domain))
}

// keep hands a session and the ticket's slot to the cache.
func (c *Courier) keep(t *Ticket, sess *smtpclient.Session) {
	c.cache.put(t.site, idleSession{s: sess, slot: t.slot, maxUses: t.maxUses})
	t.slot = nil
}

// reuse runs the transaction on a cached session. It reports false, having
// sent nothing and closed the session, when the session turns out to be dead
// before MAIL FROM was accepted (servers close idle connections) or cannot
// carry this job (require_tls), and the attempt continues with a new
// connection under the same slot.
func (c *Courier) reuse(ctx context.Context, sess *smtpclient.Session, t *Ticket, job *sluicev1.Job, message func() (io.Reader, int64, *status.Error), policies *hostPolicies) ([]outcome, bool) {
	sess.Bind(ctx)
	// The session was opened for another job, perhaps under another
	// domain's policy: it serves this one only if it meets this one's.
	req := policies.For(ctx, sess.Host(), int(sess.Addr().Port()))
	if !fits(sess, req, job) {
		sess.Close()
		return nil, false
	}
	tlsOut, e := c.secure(ctx, sess, job, req, false)
	if e != nil {
		sess.Close()
		return nil, false
	}
	recordTLS(trace.SpanFromContext(ctx), tlsOut)
	msg, added, e := message()
	if e != nil {
		c.keep(t, sess)
		return all(len(job.Recipients), e), true
	}
	h := mx.Host{Name: sess.Host(), Port: int(sess.Addr().Port())}
	out := withTLS(c.transaction(ctx, sess, h, job, msg, added), tlsOut)
	if sess.BrokeBeforeMail() {
		// Nothing of the message was read: DATA was never reached.
		sess.Close()
		return nil, false
	}
	c.keep(t, sess)
	return out, true
}

// pick chooses the error reported when no server took the transaction.
func pick(failures []*status.Error, domain string) *status.Error {
	if len(failures) == 0 {
		return status.Temporary(sluicev1.Reason_REASON_DNS, 451, "4.4.3", fmt.Sprintf("no usable mail server for %s", domain))
	}
	for _, f := range failures {
		if !f.Permanent {
			return f
		}
	}
	return failures[0]
}

// Route finds the hosts of domain, in a dns.mx span. Its error is a
// *status.Error or one that RouteFailed classifies.
func (c *Courier) Route(ctx context.Context, domain string) (mx.Route, error) {
	ctx, span := c.tracer.Start(ctx, "dns.mx", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("sluice.destination_domain", domain)))
	defer span.End()
	r, err := c.router.Route(ctx, domain)
	if err != nil {
		fail(span, status.Classify(err, sluicev1.Reason_REASON_DNS, ""))
		return r, err
	}
	hosts := make([]string, len(r.Hosts))
	for i, h := range r.Hosts {
		hosts[i] = fmt.Sprintf("%d %s:%d", h.Preference, h.Name, h.Port)
	}
	span.SetAttributes(attribute.StringSlice("sluice.mx.hosts", hosts), attribute.String("sluice.site", r.Site),
		attribute.Bool("sluice.mx.static", r.Static), attribute.Bool("sluice.mx.implicit", r.Implicit))
	return r, nil
}

func (c *Courier) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	ctx, span := c.tracer.Start(ctx, "dns.address", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", host)))
	defer span.End()
	a, err := c.router.Addrs(ctx, host)
	if err != nil {
		fail(span, status.Classify(err, sluicev1.Reason_REASON_DNS, ""))
		return nil, err
	}
	s := make([]string, len(a))
	for i := range a {
		s[i] = a[i].String()
	}
	span.SetAttributes(attribute.StringSlice("sluice.dns.addresses", s))
	return a, nil
}

func serverAttrs(h mx.Host, a netip.Addr) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("server.address", h.Name),
		attribute.Int("server.port", h.Port),
		attribute.String("network.peer.address", a.String()),
	}
}

func (c *Courier) connect(ctx context.Context, h mx.Host, a netip.Addr) (*smtpclient.Session, error) {
	_, span := c.tracer.Start(ctx, "smtp.connect", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(serverAttrs(h, a)...))
	defer span.End()
	// The session lives on after this span, so it gets the attempt's ctx.
	s, err := c.dialer.Connect(ctx, h.Name, netip.AddrPortFrom(a, uint16(h.Port)))
	if err != nil {
		fail(span, status.Classify(err, sluicev1.Reason_REASON_CONNECT, ""))
		return nil, err
	}
	return s, nil
}

// sign returns the message to send, how many bytes signing added, and a
// function that releases the signer's spool.
func (c *Courier) sign(ctx context.Context, job *sluicev1.Job, body io.Reader) (io.Reader, int64, func(), *status.Error) {
	if c.signer == nil {
		return body, 0, func() {}, nil
	}
	_, span := c.tracer.Start(ctx, "dkim.sign")
	defer span.End()
	signed, err := c.signer.Sign(body, job.MailFrom)
	if err != nil {
		e := status.Temporary(sluicev1.Reason_REASON_INTERNAL, 451, "4.3.0", "cannot read the message to sign it")
		e.Err = err
		span.RecordError(err)
		fail(span, e)
		return nil, 0, nil, e
	}
	span.SetAttributes(attribute.String("sluice.dkim.domain", signed.Domain),
		attribute.StringSlice("sluice.dkim.selectors", signed.Selectors))
	return signed, signed.Added, func() { _ = signed.Close() }, nil
}

func (c *Courier) transaction(ctx context.Context, s *smtpclient.Session, h mx.Host, job *sluicev1.Job, body io.Reader, added int64) []outcome {
	ctx, span := c.tracer.Start(ctx, "smtp.transaction", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(serverAttrs(h, s.Addr().Addr())...),
		trace.WithAttributes(attribute.Int("sluice.recipients", len(job.Recipients)),
			attribute.Bool("sluice.smtp.tls", s.TLS() != nil),
			attribute.Int("sluice.smtp.connection_use", s.Uses()+1)))
	defer span.End()
	n := len(job.Recipients)
	env := smtpclient.Envelope{
		From:       job.MailFrom,
		Size:       job.BodySize,
		SMTPUTF8:   job.Smtputf8,
		RequireTLS: job.RequireTls,
		Ret:        job.Ret,
		EnvID:      job.Envid,
	}
	if env.Size > 0 {
		// RFC 1870 §4: the declared size should be the size we send.
		env.Size += added
	}
	for _, r := range job.Recipients {
		env.Recipients = append(env.Recipients, smtpclient.Recipient{Address: r.Address, Notify: r.Notify, ORCPT: r.Orcpt})
	}
	res := s.Send(ctx, env, body)
	out := make([]outcome, n)
	var firstErr *status.Error
	delivered := 0
	for i, o := range res {
		if o.Err != nil {
			out[i].err = o.Err
			if firstErr == nil {
				firstErr = o.Err
			}
			continue
		}
		delivered++
		out[i] = outcome{enhanced: o.Enhanced, text: o.Reply, host: s.RemoteHost()}
		if delivered == 1 {
			span.SetAttributes(attribute.Int("sluice.smtp.code", o.Code),
				attribute.String("sluice.smtp.enhanced_code", o.Enhanced),
				attribute.String("sluice.smtp.text", o.Reply))
		}
	}
	span.SetAttributes(attribute.Int("sluice.recipients.delivered", delivered))
	if firstErr != nil {
		if delivered == 0 {
			fail(span, firstErr)
		} else {
			span.SetStatus(codes.Error, fmt.Sprintf("%d of %d recipients not delivered: %s", n-delivered, n, firstErr.Error()))
		}
	}
	return out
}

// fail marks span as failed with the error's reply.
func fail(span trace.Span, e *status.Error) {
	span.SetAttributes(
		attribute.Int("sluice.smtp.code", e.Code),
		attribute.String("sluice.smtp.enhanced_code", e.Enhanced),
		attribute.String("sluice.smtp.text", e.Text),
		attribute.String("sluice.reason", ReasonName(e.Reason)),
		attribute.Bool("sluice.permanent", e.Permanent),
	)
	span.SetStatus(codes.Error, e.Error())
}

// ReasonName is the lower-case name of a reason used in spans and metric
// labels: "dns", "connect", "tls", ..., "none" for unspecified.
func ReasonName(r sluicev1.Reason) string {
	if r == sluicev1.Reason_REASON_UNSPECIFIED {
		return "none"
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0304:
		return "1.3"
	case 0x0303:
		return "1.2"
	case 0x0302:
		return "1.1"
	case 0x0301:
		return "1.0"
	}
	return fmt.Sprintf("0x%04x", v)
}
