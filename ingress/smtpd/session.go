package smtpd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/ingress/address"
	"github.com/sluice-mta/sluice/ingress/auth"
	"github.com/sluice-mta/sluice/ingress/received"
	"github.com/sluice-mta/sluice/ingress/recipients"
	"github.com/sluice-mta/sluice/ingress/relay"
	"github.com/sluice-mta/sluice/ingress/smtpconn"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// backend makes the sessions of one listener.
type backend struct {
	s *Server
	l *listener
}

var _ smtp.Backend = (*backend)(nil)

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	se := &session{s: b.s, l: b.l, conn: c, front: b.l.fl.lookup(c.Conn().RemoteAddr())}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		se.client = ap
	}
	b.s.metrics.sessions.Add(b.s.ctx, 1)
	return se, nil
}

// session is one SMTP connection's state. go-smtp calls its methods from
// the connection's goroutine, except Data under BDAT (its own goroutine) and
// Logout (from whoever closes the connection), so the envelope is guarded.
type session struct {
	s      *Server
	l      *listener
	conn   *smtp.Conn
	front  *smtpconn.Conn // TLS state and MT-PRIORITY; nil only if lost
	client netip.AddrPort
	logout sync.Once

	mu      sync.Mutex
	env     *envelope
	user    string    // authenticated user name, "" before AUTH
	account auth.User // the authenticated user's entry
}

// envelope is one transaction's MAIL FROM and RCPT TO.
type envelope struct {
	from       string
	opts       smtp.MailOptions
	rcpts      []*sluicev1.Recipient
	mtPriority *int
	// inflowWait is how long MAIL FROM waited for delivery to catch up.
	inflowWait time.Duration
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	// The MT-PRIORITY smtpconn took off this MAIL line, whatever happens
	// to the command.
	var prio smtpconn.Priority
	if se.front != nil {
		prio = se.front.TakeMTPriority()
		if se.front.NeedsHello() {
			return errHelloAfterTLS
		}
	}
	if se.s.draining.Load() {
		return errShuttingDown
	}
	if !se.s.storageAvailable() {
		return errStorageDown
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	se.mu.Lock()
	user, account := se.user, se.account
	se.mu.Unlock()
	// RFC 6409 §4.3 and RFC 4954 §6: submission is for authenticated users.
	if se.l.submission && user == "" {
		se.refused(refusedAuthRequired)
		return errAuthRequired
	}
	if prio.Err != nil {
		return errBadPriority
	}
	if opts.RequireTLS && !se.isTLS() {
		se.refused(refusedRequireTLS)
		return errRequireTLSClear
	}
	// The null reverse-path <> is valid (RFC 5321 §4.5.5) and used by
	// bounces; any other sender must be a routable address, because a DSN
	// may have to go back to it.
	domain := ""
	if from != "" {
		a, err := address.Parse(from, opts.UTF8)
		if err != nil {
			return badAddress(err, true)
		}
		domain = a.Domain
	}
	if user != "" && !account.MaySendFrom(domain) {
		se.refused(refusedSenderDomain)
		se.s.log.Info("sender not owned by user", "client", se.client.String(), "user", user, "sender_domain", domain)
		return errSenderNotOwned
	}
	env := &envelope{from: from, opts: *opts}
	// RFC 6710 leaves trust in a client's priority to local policy: only
	// authenticated users and trusted networks choose their queue class, so
	// a stranger on the MX port cannot jump the queue.
	if prio.Given && se.mayPrioritise(user) {
		v := prio.Value
		env.mtPriority = &v
	}
	// Delivery behind: the client waits here, before it sends anything
	// (at most ingress.inflow_delay), rather than the queue growing.
	env.inflowWait = se.s.opts.Inflow.Wait(se.s.ctx)
	se.mu.Lock()
	defer se.mu.Unlock()
	se.env = env
	return nil
}

// mayPrioritise reports whether the client's MT-PRIORITY is honoured.
func (se *session) mayPrioritise(user string) bool {
	return user != "" || se.s.policy.IsTrusted(se.client.Addr())
}

// refused counts a policy refusal.
func (se *session) refused(reason string) {
	se.s.pm.refused.Add(se.s.ctx, 1, refusedAttrs(reason, se.l.name))
}

// AuthMechanisms lists PLAIN and LOGIN on submission listeners once the
// connection is encrypted; go-smtp advertises AUTH only when the list is
// not empty (RFC 4954 §4: never offer plaintext passwords in the clear).
func (se *session) AuthMechanisms() []string {
	if !se.l.submission || !se.isTLS() {
		return nil
	}
	return []string{auth.Plain, auth.Login}
}

// Auth starts an AUTH exchange. Every error it or the mechanism returns is
// an *smtp.SMTPError, so go-smtp writes our reply and nothing else.
func (se *session) Auth(mech string) (sasl.Server, error) {
	if !se.l.submission {
		return nil, errAuthUnavailable
	}
	if !se.isTLS() {
		return nil, errEncryptionRequired
	}
	se.mu.Lock()
	inTx := se.env != nil
	se.mu.Unlock()
	if inTx {
		return nil, errAuthInTransaction
	}
	mech = strings.ToUpper(mech)
	check := func(name, password string) error {
		u, err := se.s.creds.Authenticate(name, password)
		if err != nil {
			se.s.pm.auth.Add(se.s.ctx, 1, authAttrs(mech, authFailure))
			se.s.log.Warn("authentication failed", "client", se.client.String(), "listener", se.l.name, "mechanism", mech)
			return errAuthFailed
		}
		se.s.pm.auth.Add(se.s.ctx, 1, authAttrs(mech, authSuccess))
		se.s.log.Info("authenticated", "client", se.client.String(), "listener", se.l.name, "mechanism", mech, "user", u.Name)
		se.mu.Lock()
		se.user, se.account = u.Name, u
		se.mu.Unlock()
		return nil
	}
	switch mech {
	case auth.Plain:
		return saslReplies{auth.NewPlain(check), se, mech}, nil
	case auth.Login:
		return saslReplies{auth.NewLogin(check), se, mech}, nil
	}
	return nil, errUnknownMechanism
}

// saslReplies turns a mechanism's own errors (go-sasl's say "sasl: invalid
// response") into RFC 4954 replies, so that no library text reaches the
// client.
type saslReplies struct {
	sasl.Server
	se   *session
	mech string
}

func (r saslReplies) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := r.Server.Next(response)
	if err == nil {
		return challenge, done, nil
	}
	var reply *smtp.SMTPError
	if errors.As(err, &reply) {
		return nil, true, reply
	}
	r.se.s.pm.auth.Add(r.se.s.ctx, 1, authAttrs(r.mech, authMalformed))
	return nil, true, errAuthMalformed
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if opts == nil {
		opts = &smtp.RcptOptions{}
	}
	se.mu.Lock()
	defer se.mu.Unlock()
	if se.env == nil {
		return errNoTransaction
	}
	if len(se.env.rcpts) >= se.s.opts.Settings.MaxRecipients {
		return errTooManyRecipients
	}
	a, err := address.Parse(to, se.env.opts.UTF8)
	if err != nil {
		return badAddress(err, false)
	}
	d := se.s.policy.Decide(relay.Request{Client: se.client.Addr(), AuthUser: se.user, Domain: a.Domain})
	if !d.Allowed {
		se.refused(refusedRelay)
		se.s.log.Info("relay denied", "client", se.client.String(), "helo", se.conn.Hostname(), "listener", se.l.name, "domain", a.Domain, "reason", d.Reason.String())
		return errRelayDenied
	}
	// Our own domains: refuse unknown users now, whoever the client is,
	// rather than accept and bounce (backscatter). Sender-routed local
	// parts (user%host, host!user, "user@host") are never local users.
	if d.Reason == relay.AllowedLocalDomain && !se.knownRecipient(a) {
		se.refused(refusedUnknownUser)
		se.s.log.Info("unknown recipient", "client", se.client.String(), "listener", se.l.name, "domain", a.Domain)
		return errUnknownUser
	}
	se.env.rcpts = append(se.env.rcpts, &sluicev1.Recipient{
		Address: to,
		Notify:  notifyBits(opts.Notify),
		Orcpt:   orcpt(opts),
	})
	// RFC 6710 §3 defines MT-PRIORITY on MAIL FROM (see smtpconn); go-smtp
	// also takes it on RCPT TO, which we keep for older clients. A message
	// has one priority: the first value given wins.
	if opts.MTPriority != nil && se.env.mtPriority == nil && se.mayPrioritise(se.user) {
		p := *opts.MTPriority
		se.env.mtPriority = &p
	}
	return nil
}

func (se *session) Reset() {
	se.mu.Lock()
	defer se.mu.Unlock()
	se.env = nil
}

func (se *session) Logout() error {
	se.logout.Do(func() { se.s.metrics.sessions.Add(context.Background(), -1) })
	return nil
}

// Data receives the content, stores the message and gives the reply. Every
// return is an *smtp.SMTPError (see replies.go), including the 250.
func (se *session) Data(r io.Reader) error {
	se.mu.Lock()
	env := se.env
	user := se.user
	se.mu.Unlock()
	if env == nil || len(env.rcpts) == 0 {
		return errNoTransaction
	}
	// Counting a transaction and Shutdown's decision to wait for them
	// are ordered by inflightMu: a WaitGroup must not grow from zero while
	// someone waits on it. A transaction starting after Shutdown began is
	// refused like a new MAIL.
	se.s.inflightMu.Lock()
	if se.s.draining.Load() {
		se.s.inflightMu.Unlock()
		return errShuttingDown
	}
	se.s.inflight.Add(1)
	se.s.inflightMu.Unlock()
	defer se.s.inflight.Done()

	ctx, span := se.s.opts.Tracer.Start(se.s.ctx, "ingress.receive",
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("client.address", se.client.Addr().String()),
			attribute.Int("client.port", int(se.client.Port())),
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.Int("sluice.recipients", len(env.rcpts)),
		))
	defer span.End()

	// Read the whole content before storing: a transaction is stored
	// completely or not at all, and go-smtp has already capped its size.
	var data content
	defer data.Release()
	if _, err := data.ReadFrom(se.s.contentReader(r)); err != nil {
		reply := readFailure(err)
		span.SetStatus(codes.Error, "reading DATA failed")
		span.SetAttributes(attribute.Int("sluice.smtp.code", reply.Code))
		se.s.metrics.received.Add(ctx, 1, resultAttr(resultRejected))
		se.s.log.InfoContext(ctx, "message not received", "client", se.client.String(), "reply", reply.Code, "err", err)
		return reply
	}
	// Mail for our domains from strangers: authentication results, and
	// DMARC p=reject when configured (inbound.go).
	if refuse := se.s.inbound(ctx, se, env.from, user, &data); refuse != nil {
		return refuse
	}

	now := time.Now()
	qid := wire.NewQueueID(now)
	forRcpt := ""
	if len(env.rcpts) == 1 {
		forRcpt = env.rcpts[0].GetAddress()
	}
	header := received.Fields{
		Helo:     se.conn.Hostname(),
		Client:   se.client.Addr(),
		By:       se.s.opts.Settings.Hostname,
		Protocol: received.Protocol(se.isTLS(), user != ""),
		ID:       qid,
		For:      forRcpt,
		Date:     now,
	}.Header()
	size := int64(len(header) + data.Len())
	span.SetAttributes(
		attribute.String("sluice.queue_id", qid),
		attribute.String("messaging.destination.name", wire.MessageSubject(qid)),
		attribute.Int64("messaging.message.body.size", size),
	)
	if env.inflowWait > 0 {
		// The trace shows where the message waited and why.
		span.SetAttributes(attribute.Int64("sluice.inflow_wait_ms", env.inflowWait.Milliseconds()))
	}

	m := &sluicev1.Message{
		QueueId:          qid,
		MailFrom:         env.from,
		Recipients:       env.rcpts,
		ReceivedUnixNano: now.UnixNano(),
		ClientAddr:       se.client.Addr().String(),
		Helo:             se.conn.Hostname(),
		AuthUser:         user,
		Ret:              string(env.opts.Return),
		Envid:            env.opts.EnvelopeID,
		Smtputf8:         env.opts.UTF8,
		BodyType:         string(env.opts.Body),
		RequireTls:       env.opts.RequireTLS,
	}
	if env.mtPriority != nil {
		m.MtPriority, m.HasMtPriority = int32(*env.mtPriority), true
	}

	start := time.Now()
	rcpt, err := se.s.opts.Store.Put(ctx, m, io.MultiReader(bytes.NewReader(header), data.Reader()), size)
	elapsed := time.Since(start).Seconds()
	if err != nil {
		se.s.metrics.storeDuration.Record(ctx, elapsed, resultAttr(resultFailed))
		se.s.metrics.received.Add(ctx, 1, resultAttr(resultFailed))
		span.RecordError(err)
		span.SetStatus(codes.Error, "store failed")
		span.SetAttributes(attribute.Int("sluice.smtp.code", errStorage.Code))
		full := errors.Is(err, store.ErrFull)
		se.s.log.WarnContext(ctx, "message not stored", "queue_id", qid, "client", se.client.String(), "queue_full", full, "err", err)
		return errStorage
	}
	se.s.metrics.storeDuration.Record(ctx, elapsed, resultAttr(resultAccepted))
	se.s.metrics.received.Add(ctx, 1, resultAttr(resultAccepted))
	se.s.metrics.size.Record(ctx, size)
	span.SetAttributes(attribute.Int64("sluice.msg_seq", int64(rcpt.Seq)), attribute.Int("sluice.smtp.code", 250))
	se.s.log.InfoContext(ctx, "message accepted", "queue_id", qid, "client", se.client.String(),
		"from", env.from, "recipients", len(env.rcpts), "size", size, "seq", rcpt.Seq, "duplicate", rcpt.Duplicate)
	return queued(qid)
}

// readFailure maps an error from reading DATA to a reply. go-smtp's own
// size error is already the right reply (552 5.3.4, RFC 1870 §6.2 and RFC
// 3463 "message too big for system") and is passed through unchanged.
func readFailure(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, smtp.ErrTooLongLine):
		return errLineTooLong
	}
	// The client went away or timed out: it will not read a reply, and
	// nothing was stored, so the transaction simply failed.
	return errStorage
}

// knownRecipient checks a recipient of an accepted domain against the
// recipients list; without a list every local part that does not ask for
// sender routing is accepted.
func (se *session) knownRecipient(a address.Address) bool {
	if se.s.rcpts == nil {
		return !recipients.SenderRouted(a.Local)
	}
	return se.s.rcpts.Has(a.Local, a.Domain)
}

// isTLS reports whether the connection is encrypted. smtpconn terminates
// TLS, so go-smtp's own TLSConnectionState never reports it.
func (se *session) isTLS() bool {
	if se.front == nil {
		return false
	}
	_, ok := se.front.TLS()
	return ok
}

// notifyBits converts RFC 3461 §4.1 NOTIFY keywords to the sluicev1 bit set.
func notifyBits(ns []smtp.DSNNotify) uint32 {
	var bits uint32
	for _, n := range ns {
		switch n {
		case smtp.DSNNotifyNever:
			bits |= uint32(sluicev1.Notify_NOTIFY_NEVER)
		case smtp.DSNNotifySuccess:
			bits |= uint32(sluicev1.Notify_NOTIFY_SUCCESS)
		case smtp.DSNNotifyFailure:
			bits |= uint32(sluicev1.Notify_NOTIFY_FAILURE)
		case smtp.DSNNotifyDelayed:
			bits |= uint32(sluicev1.Notify_NOTIFY_DELAY)
		}
	}
	return bits
}

// orcpt renders RFC 3461 §4.2 ORCPT as "addr-type;address" with the
// address xtext-decoded (go-smtp decodes it), or "" when not given.
func orcpt(o *smtp.RcptOptions) string {
	if o.OriginalRecipient == "" {
		return ""
	}
	t := string(o.OriginalRecipientType)
	if t == "" {
		t = string(smtp.DSNAddressTypeRFC822)
	}
	return strings.ToLower(t) + ";" + o.OriginalRecipient
}
