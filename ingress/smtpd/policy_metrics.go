package smtpd

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Values of the result label of sluice_ingress_auth_attempts_total.
const (
	// authSuccess: the user authenticated.
	authSuccess = "success"
	// authFailure: unknown user or wrong password (535 5.7.8).
	authFailure = "failure"
	// authMalformed: the SASL exchange was malformed or cancelled.
	authMalformed = "malformed"
)

// Values of the reason label of sluice_ingress_refused_total.
const (
	// refusedRelay: a recipient outside our domains from a client that is
	// neither trusted nor authenticated (554 5.7.1).
	refusedRelay = "relay_denied"
	// refusedUnknownUser: a recipient in an accepted domain that is not in
	// the recipients list, or asks for sender routing (550 5.1.1).
	refusedUnknownUser = "unknown_user"
	// refusedAuthRequired: MAIL on a submission listener before AUTH
	// (530 5.7.0).
	refusedAuthRequired = "auth_required"
	// refusedSenderDomain: an authenticated user's sender outside its
	// domains (553 5.7.1).
	refusedSenderDomain = "sender_domain"
	// refusedRequireTLS: REQUIRETLS on a connection without TLS.
	refusedRequireTLS = "requiretls_without_tls"
)

// policyMetrics count the decisions of the listeners' policies.
type policyMetrics struct {
	// auth counts AUTH exchanges by mechanism (PLAIN, LOGIN) and result
	// (success, failure, malformed).
	auth metric.Int64Counter
	// refused counts refused MAIL and RCPT commands by reason (see the
	// refused* constants) and listener (smtp, submission, submissions).
	refused metric.Int64Counter
}

func newPolicyMetrics(m metric.Meter) (*policyMetrics, error) {
	var (
		out policyMetrics
		err error
	)
	if out.auth, err = m.Int64Counter("sluice_ingress_auth_attempts_total",
		metric.WithDescription("SMTP AUTH exchanges, by mechanism (PLAIN, LOGIN) and result (success, failure, malformed).")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	if out.refused, err = m.Int64Counter("sluice_ingress_refused_total",
		metric.WithDescription("MAIL and RCPT commands refused by policy, by reason (relay_denied, unknown_user, auth_required, sender_domain, requiretls_without_tls) and listener.")); err != nil {
		return nil, fmt.Errorf("smtpd metrics: %w", err)
	}
	return &out, nil
}

func refusedAttrs(reason, listener string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("reason", reason), attribute.String("listener", listener))
}

func authAttrs(mech, result string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("mechanism", mech), attribute.String("result", result))
}
