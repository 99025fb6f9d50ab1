package tlspolicy

import (
	"crypto/x509"
	"errors"

	"github.com/sluice-mta/sluice/deliverer/dane"
)

// This file names failures the way TLS reports do (RFC 8460 §4.3).

// ReportType is the RFC 8460 policy type of the requirement: "sts" for an
// MTA-STS policy, "tlsa" for DANE, "no-policy-found" for the rest (none,
// may, encrypt, verify are the sender's own policies, not the domain's).
func (r *Requirement) ReportType() string {
	switch r.Policy {
	case "mta-sts":
		return "sts"
	case "dane":
		return "tlsa"
	}
	return "no-policy-found"
}

// ResultType is the RFC 8460 §4.3 result type of a failed STARTTLS or
// certificate check under r: certificate-expired,
// certificate-host-mismatch, certificate-not-trusted (webpki), tlsa-invalid
// (DANE, no record matches), or validation-failure (anything else, a
// handshake that failed among them).
func (r *Requirement) ResultType(err error) string {
	var inv x509.CertificateInvalidError
	var host x509.HostnameError
	var unknown x509.UnknownAuthorityError
	var mismatch *dane.MismatchError
	switch {
	case errors.As(err, &mismatch):
		return "tlsa-invalid"
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		return "certificate-expired"
	case errors.As(err, &host):
		return "certificate-host-mismatch"
	case errors.As(err, &unknown):
		return "certificate-not-trusted"
	}
	return "validation-failure"
}

// RefusedType is the result type of a host r refuses before connecting: a
// failed DNSSEC lookup under DANE (dnssec-invalid), an MX host outside the
// MTA-STS policy (validation-failure).
func (r *Requirement) RefusedType() string {
	if r.Policy == "dane" {
		return "dnssec-invalid"
	}
	return "validation-failure"
}

func prefixed(p string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = p + s
	}
	return out
}
