package courier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/smtpclient"
	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlsrpt"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// This file is the TLS step of an attempt: choose the policy of each MX
// host before connecting (package tlspolicy), then enforce it during
// STARTTLS, and record what TLS the attempt got.

// TLSPolicy decides what TLS a destination requires; *tlspolicy.Engine
// implements it.
type TLSPolicy interface {
	Decide(ctx context.Context, domain string, static bool) *tlspolicy.Decision
}

var _ TLSPolicy = (*tlspolicy.Engine)(nil)

// TLSReporter counts TLS sessions for TLS reports (RFC 8460);
// *tlsrpt.Recorder implements it.
type TLSReporter interface {
	Record(s tlsrpt.Session)
}

var _ TLSReporter = (*tlsrpt.Recorder)(nil)

// WithTLSReports makes the courier count every TLS session, and every host
// its policy refused, with rep. Nothing is counted under policy none, which
// does not try TLS.
func WithTLSReports(rep TLSReporter) Option {
	return func(c *Courier) { c.reports = rep }
}

// report counts a session to ip under r; result is "" for a success or an
// RFC 8460 result type.
func (c *Courier) report(r *tlspolicy.Requirement, ip, result, detail string) {
	if c.reports == nil || r.Policy == "none" || r.Domain == "" {
		return
	}
	c.reports.Record(tlsrpt.Session{Domain: r.Domain, PolicyType: r.ReportType(), PolicyString: r.PolicyString,
		MXHosts: r.MXPatterns, MXHost: r.Host, IP: ip, Result: result, Detail: detail})
}

// peerIP is the address of the session's server.
func peerIP(s *smtpclient.Session) string { return s.Addr().Addr().String() }

// WithTLSPolicy makes the courier apply p to every attempt and count TLS
// sessions in m's sluice_deliverer_tls_sessions_total. Without it every
// destination gets "may": STARTTLS when offered, unverified.
func WithTLSPolicy(p TLSPolicy, m metric.Meter) Option {
	return func(c *Courier) {
		c.policy = p
		if m != nil {
			c.tlsSessions, _ = m.Int64Counter("sluice_deliverer_tls_sessions_total",
				metric.WithDescription("TLS outcome of each connection the deliverer tried to use, by policy (none, may, encrypt, verify, dane, mta-sts) "+
					"and result (verified, encrypted: TLS without verification, plaintext, failed: the policy refused the server, refused: the host was not tried)."))
		}
	}
}

// tlsResult values of the result label of sluice_deliverer_tls_sessions_total.
const (
	tlsVerified  = "verified"
	tlsEncrypted = "encrypted"
	tlsPlain     = "plaintext"
	tlsFailed    = "failed"
	tlsRefused   = "refused"
)

// hostPolicies are the requirements of an attempt's MX hosts, decided
// before the first connection.
type hostPolicies struct {
	dec   *tlspolicy.Decision
	hosts map[string]*tlspolicy.Requirement
	// requireTLS: the job was sent with REQUIRETLS (RFC 8689), which
	// raises every host's requirement to verified TLS.
	requireTLS bool
}

// may is the requirement without a policy engine: today's opportunistic TLS.
func may(host string) *tlspolicy.Requirement {
	return &tlspolicy.Requirement{Policy: "may", Host: host, StartTLS: true}
}

// choosePolicy decides the TLS requirement of every host of route for
// job, in a tls.policy span.
func (c *Courier) choosePolicy(ctx context.Context, route mx.Route, job *sluicev1.Job) *hostPolicies {
	hp := &hostPolicies{hosts: map[string]*tlspolicy.Requirement{}, requireTLS: job.RequireTls}
	if c.policy == nil {
		return hp
	}
	ctx, span := c.tracer.Start(ctx, "tls.policy", trace.WithAttributes(attribute.String("sluice.destination_domain", route.Domain),
		attribute.Bool("sluice.requiretls", job.RequireTls)))
	defer span.End()
	hp.dec = c.policy.Decide(ctx, route.Domain, route.Static)
	span.SetAttributes(attribute.String("sluice.tls.mode", string(hp.dec.Mode)))
	for _, h := range route.Hosts {
		r := hp.For(ctx, h.Name, h.Port)
		if span.IsRecording() {
			span.AddEvent("sluice.tls.host", trace.WithAttributes(append(reqAttrs(r), attribute.String("server.address", h.Name))...))
		}
	}
	return hp
}

// For is the requirement of host (asked now if the host was not in the
// route, as a cached session's may not be).
func (hp *hostPolicies) For(ctx context.Context, host string, port int) *tlspolicy.Requirement {
	if r, ok := hp.hosts[host]; ok {
		return r
	}
	var r *tlspolicy.Requirement
	switch {
	case hp.dec == nil && hp.requireTLS:
		r = tlspolicy.RequireTLS(may(host))
	case hp.dec == nil:
		return may(host)
	case hp.requireTLS:
		r = hp.dec.RequireTLS(ctx, hp.dec.Host(ctx, host, port))
	default:
		r = hp.dec.Host(ctx, host, port)
	}
	hp.hosts[host] = r
	return r
}

func reqAttrs(r *tlspolicy.Requirement) []attribute.KeyValue {
	a := []attribute.KeyValue{attribute.String("sluice.tls.policy", r.Name()), attribute.Bool("sluice.tls.required", r.Required),
		attribute.Bool("sluice.tls.verify", r.Verifies())}
	if r.RequireTLS {
		a = append(a, attribute.Bool("sluice.tls.requiretls", true))
	}
	if r.Refused != "" {
		a = append(a, attribute.String("sluice.tls.refused", r.Refused))
	}
	if r.Reported != "" {
		a = append(a, attribute.String("sluice.tls.reported", r.Reported))
	}
	if r.Note != "" {
		a = append(a, attribute.String("sluice.tls.note", r.Note))
	}
	return a
}

// refused is the failure of a host the policy does not let us use.
func (c *Courier) refused(ctx context.Context, r *tlspolicy.Requirement) *status.Error {
	c.countTLS(r, tlsRefused)
	if !r.NotSecure {
		// A REQUIRETLS message refused for want of a secure MX answer is
		// the message's requirement, not the domain's policy failing: no
		// TLS report.
		c.report(r, "", r.RefusedType(), r.Refused)
	}
	trace.SpanFromContext(ctx).AddEvent("sluice.tls_refused", trace.WithAttributes(
		attribute.String("server.address", r.Host), attribute.String("sluice.tls.refused", r.Refused)))
	if r.NotSecure {
		return &status.Error{Permanent: true, Code: 550, Enhanced: "5.7.30", Reason: sluicev1.Reason_REASON_REQUIRE_TLS,
			RemoteHost: r.Host, Text: r.Refused}
	}
	return &status.Error{Code: 451, Enhanced: "4.7.5", Reason: sluicev1.Reason_REASON_TLS, RemoteHost: r.Host, Text: r.Refused}
}

func (c *Courier) countTLS(r *tlspolicy.Requirement, result string) {
	if c.tlsSessions == nil {
		return
	}
	c.tlsSessions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("policy", r.Policy), attribute.String("result", result)))
}

// tlsOutcome is what TLS one session got.
type tlsOutcome struct {
	req        *tlspolicy.Requirement
	state      *tls.ConnectionState
	verifiedBy string
	// reported is a failure a testing policy let through, and
	// reportedErr its error.
	reported    string
	reportedErr error
}

func (o tlsOutcome) attrs() []attribute.KeyValue {
	a := []attribute.KeyValue{
		attribute.String("sluice.tls.policy", o.req.Name()),
		attribute.Bool("sluice.tls", o.state != nil),
		attribute.Bool("sluice.tls.verified", o.verifiedBy != ""),
	}
	if o.state != nil {
		a = append(a, attribute.String("sluice.tls.version", tlsVersion(o.state.Version)),
			attribute.String("sluice.tls.cipher", tls.CipherSuiteName(o.state.CipherSuite)))
	}
	if o.verifiedBy != "" {
		a = append(a, attribute.String("sluice.tls.verified_by", o.verifiedBy))
	}
	if o.reported != "" {
		a = append(a, attribute.String("sluice.tls.reported", o.reported))
	}
	return a
}

// fits reports whether a cached session may carry a job whose host has
// requirement r: it has the TLS r requires and was verified the way r
// verifies, and it is not clear text to a server that offered STARTTLS
// when r wants TLS.
func fits(s *smtpclient.Session, r *tlspolicy.Requirement, job *sluicev1.Job) bool {
	if r.Refused != "" {
		return false
	}
	if s.TLS() == nil {
		return !r.Required && !job.RequireTls && !(r.StartTLS && s.Offers("STARTTLS"))
	}
	// A REQUIRETLS job's requirement is Required and verifies, so only a
	// session verified the same way carries it.
	return !r.Required || !r.Verifies() || s.Verified() == r.Key()
}

// startTLS runs STARTTLS under requirement r. The error is a *status.Error
// whose text names the policy and the cause.
func (c *Courier) startTLS(ctx context.Context, s *smtpclient.Session, r *tlspolicy.Requirement) (tlsOutcome, *status.Error) {
	out := tlsOutcome{req: r}
	ctx, span := c.tracer.Start(ctx, "smtp.starttls", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", s.RemoteHost())))
	defer span.End()
	var check func(tls.ConnectionState) error
	if r.Verifies() {
		check = func(cs tls.ConnectionState) error {
			by, err := r.Check(cs)
			if err == nil {
				out.verifiedBy = by
				return nil
			}
			if !r.Required {
				// MTA-STS testing (RFC 8461 §5): deliver and report.
				out.reported, out.reportedErr = err.Error(), err
				return nil
			}
			return &status.Error{Code: 451, Enhanced: "4.7.5", Reason: sluicev1.Reason_REASON_TLS, Text: err.Error(), Err: err}
		}
	}
	_, err := s.StartTLS(ctx, check)
	if err != nil {
		e := status.Classify(err, sluicev1.Reason_REASON_TLS, s.RemoteHost())
		var f *tlspolicy.Failure
		if r.RequireTLS {
			cause := r.Host + " TLS failed: " + e.Text
			if errors.As(err, &f) {
				cause = f.Cause
			}
			e = requireTLSFailure(s, cause)
		} else if r.Required && !errors.As(err, &f) {
			// A handshake or STARTTLS failure under a policy that
			// requires TLS: say which policy keeps us from sending in
			// clear text instead.
			e2 := *e
			e2.Text = fmt.Sprintf("%s: %s TLS failed: %s", r.Name(), r.Host, e.Text)
			e = &e2
		}
		c.countTLS(r, tlsFailed)
		c.report(r, peerIP(s), r.ResultType(err), e.Text)
		span.SetAttributes(reqAttrs(r)...)
		fail(span, e)
		return out, e
	}
	out.state = s.TLS()
	if out.verifiedBy != "" {
		s.SetVerified(r.Key(), out.verifiedBy)
	}
	span.SetAttributes(out.attrs()...)
	if st := s.TLS(); st != nil {
		span.SetAttributes(attribute.String("tls.protocol.version", tlsVersion(st.Version)),
			attribute.String("tls.cipher", tls.CipherSuiteName(st.CipherSuite)))
	}
	if out.reported != "" {
		span.AddEvent("sluice.tls_reported", trace.WithAttributes(attribute.String("sluice.tls.reported", out.reported)))
	}
	return out, nil
}

// secure applies requirement r to a session, new (fresh) or cached, and
// REQUIRETLS (RFC 8689) when the job asks for it: r then comes from
// Decision.RequireTLS (see hostPolicies.For), so the session has verified
// TLS or secure has failed, and the server must offer REQUIRETLS.
func (c *Courier) secure(ctx context.Context, s *smtpclient.Session, job *sluicev1.Job, r *tlspolicy.Requirement, fresh bool) (tlsOutcome, *status.Error) {
	out := tlsOutcome{req: r, state: s.TLS()}
	if fresh {
		if r.StartTLS && s.Offers("STARTTLS") {
			var e *status.Error
			if out, e = c.startTLS(ctx, s, r); e != nil {
				return out, e
			}
		}
		switch {
		case s.TLS() == nil && r.Required:
			c.countTLS(r, tlsFailed)
			c.report(r, peerIP(s), "starttls-not-supported", r.Host+" does not offer STARTTLS")
			if r.RequireTLS {
				return out, requireTLSFailure(s, r.Host+" does not offer STARTTLS")
			}
			return out, &status.Error{Code: 451, Enhanced: "4.7.4", Reason: sluicev1.Reason_REASON_TLS, RemoteHost: s.RemoteHost(),
				Text: fmt.Sprintf("%s: %s does not offer STARTTLS; TLS is required", r.Name(), r.Host)}
		case s.TLS() == nil:
			c.countTLS(r, tlsPlain)
			c.report(r, peerIP(s), "starttls-not-supported", r.Host+" does not offer STARTTLS")
		case out.verifiedBy != "":
			c.countTLS(r, tlsVerified)
			c.report(r, peerIP(s), "", "")
		case out.reportedErr != nil:
			// An MTA-STS testing policy's failure, delivered anyway: the
			// report is how the domain learns of it (RFC 8461 §5).
			c.countTLS(r, tlsEncrypted)
			c.report(r, peerIP(s), r.ResultType(out.reportedErr), out.reported)
		default:
			c.countTLS(r, tlsEncrypted)
			c.report(r, peerIP(s), "", "")
		}
	} else if s.Verified() != "" && s.Verified() == r.Key() {
		out.verifiedBy = s.VerifiedBy()
	}
	if r.Reported != "" && out.reported == "" {
		out.reported = r.Reported
	}
	if !job.RequireTls {
		return out, nil
	}
	switch {
	case s.TLS() == nil:
		return out, requireTLSFailure(s, r.Host+" does not offer STARTTLS")
	case out.verifiedBy == "":
		// Not reached with a requirement from Decision.RequireTLS, whose
		// check fails the handshake instead; kept so that no path sends
		// a REQUIRETLS message over an unverified connection.
		return out, requireTLSFailure(s, r.Host+" certificate not verified")
	case !s.Offers("REQUIRETLS"):
		return out, requireTLSFailure(s, r.Host+" does not offer REQUIRETLS")
	}
	return out, nil
}

// requireTLSFailure is the failure of a REQUIRETLS message at a server
// that cannot take it: RFC 8689 §4.2.1 forbids sending it there (another
// MX host may still be tried), and §5 returns it to the sender with
// 5.7.30 "REQUIRETLS support required" when no host can. It is permanent,
// like the bounce the RFC asks for: a retry would meet the same server.
func requireTLSFailure(s *smtpclient.Session, cause string) *status.Error {
	return &status.Error{Permanent: true, Code: 550, Enhanced: "5.7.30", Reason: sluicev1.Reason_REASON_REQUIRE_TLS,
		RemoteHost: s.RemoteHost(), Text: "REQUIRETLS support required: " + cause}
}

// withTLS records the session's TLS in every recipient's outcome, for the
// result (RecipientResult.tls).
func withTLS(out []outcome, o tlsOutcome) []outcome {
	if o.req == nil {
		return out
	}
	t := &sluicev1.TlsOutcome{Policy: o.req.Name(), VerifiedBy: o.verifiedBy, Reported: o.reported}
	if o.state != nil {
		t.Version, t.Cipher = tlsVersion(o.state.Version), tls.CipherSuiteName(o.state.CipherSuite)
	}
	for i := range out {
		out[i].tls = t
	}
	return out
}

// recordTLS puts the TLS outcome of the session that carried the
// transaction on the attempt's span (the caller's).
func recordTLS(span trace.Span, o tlsOutcome) {
	if o.req == nil {
		return
	}
	span.SetAttributes(o.attrs()...)
}
