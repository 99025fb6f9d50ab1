package smtpd

import (
	"context"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-mta/sluice/ingress/authres"
)

// errDMARCReject refuses a message that fails DMARC when the author's
// domain asks for rejection (RFC 7489 §6.6.4, §10.3: 550 5.7.1) and
// ingress.dmarc_reject is set.
var errDMARCReject = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Message rejected per the DMARC policy of the sender's domain"}

// inbound evaluates SPF, DKIM and DMARC on mail received as the inbound MX
// (from a client that is neither authenticated nor in a trusted network,
// so every recipient is in an accepted domain), and prepends the
// Authentication-Results field to content, after removing fields that
// forge our verdicts (RFC 8601 §5). Mail from trusted networks and users
// is not ours to judge and passes unchanged. It returns a reply when the
// message is refused.
func (s *Server) inbound(ctx context.Context, se *session, from, user string, content *content) *smtp.SMTPError {
	if user != "" || s.policy.IsTrusted(se.client.Addr()) {
		return nil
	}
	host := s.opts.Settings.Hostname
	msg := content.Bytes()
	r := authres.Check(ctx, s.resolver, host, authres.Input{
		Client: se.client.Addr(), Helo: se.conn.Hostname(), MailFrom: from, Message: msg,
	})
	s.metrics.authResults.Add(ctx, 1, authResultAttrs("spf", r.SPF))
	dkim := authres.None
	for _, d := range r.DKIM {
		s.metrics.authResults.Add(ctx, 1, authResultAttrs("dkim", d.Result))
		if d.Result == authres.Pass || dkim == authres.None {
			dkim = d.Result
		}
	}
	if len(r.DKIM) == 0 {
		s.metrics.authResults.Add(ctx, 1, authResultAttrs("dkim", authres.None))
	}
	s.metrics.authResults.Add(ctx, 1, authResultAttrs("dmarc", r.DMARC.Result))
	trace.SpanFromContext(ctx).SetAttributes(
		attribute.String("sluice.spf", r.SPF),
		attribute.String("sluice.dkim", dkim),
		attribute.String("sluice.dmarc", r.DMARC.Result),
	)
	s.log.InfoContext(ctx, "inbound authentication", "client", se.client.String(),
		"spf", r.SPF, "dkim", dkim, "dmarc", r.DMARC.Result, "dmarc_policy", string(r.DMARC.Policy), "from_domain", r.DMARC.Domain)
	if r.DMARC.Reject && s.opts.Settings.DMARCReject {
		s.metrics.received.Add(ctx, 1, resultAttr(resultRejected))
		return errDMARCReject
	}
	stripped := authres.StripForged(msg, host)
	content.Reset()
	content.Write(r.Header)
	content.Write(stripped)
	return nil
}

func authResultAttrs(method, result string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("method", method), attribute.String("result", result))
}
