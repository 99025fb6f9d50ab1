package wire

import (
	"strings"
	"time"
)

// TLS reporting (RFC 8460): the deliverers count the outcome of every TLS
// session per UTC day, policy domain and policy type, and the bouncer's
// reporter turns a finished day's counts into the aggregate reports the
// domains ask for. Both meet in one key-value bucket:
//
//	sluice_tlsrpt  key-value  day.<YYYY-MM-DD>.<type>.<domain>  JSON TLSRPTCounts, updated by
//	                                                            compare-and-set by every deliverer
//	                          sent.<YYYY-MM-DD>.<domain>        the claim of the reporter that sends
//	                                                            the domain's report of that day
//
// <type> is sts, tlsa or no-policy-found (RFC 8460 §4.4 policy-type);
// <domain> is the policy domain in lower case, its dots key separators.
// Entries expire after TLSRPTKeep.
const BucketTLSRPT = "sluice_tlsrpt"

// TLSRPTKeep is how long counts and claims are kept: long enough for a
// reporter that was down for days to send what it still can.
const TLSRPTKeep = 8 * 24 * time.Hour

// TLSRPTMaxFailures bounds the failure-details entries a day's counts keep
// (RFC 8460 §4.4 allows a report to summarise): further distinct failures
// count in TLSRPTCounts.Failed only.
const TLSRPTMaxFailures = 32

// TLSRPTDay is the day token of t: its UTC date.
func TLSRPTDay(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// TLSRPTCountKey is the key of a day's counts for a policy domain and type.
func TLSRPTCountKey(day, policyType, domain string) string {
	return "day." + day + "." + policyType + "." + strings.ToLower(domain)
}

// TLSRPTSentKey is the key a reporter creates to claim a domain's report
// of a day.
func TLSRPTSentKey(day, domain string) string { return "sent." + day + "." + strings.ToLower(domain) }

// TLSRPTCounts is one key's value: the TLS sessions of one UTC day to the
// MX hosts of one policy domain under one policy type.
type TLSRPTCounts struct {
	Domain     string `json:"domain"`
	PolicyType string `json:"policy_type"`
	// PolicyString is the policy as RFC 8460 §4.4 reports it: the MTA-STS
	// policy's lines, or the TLSA records in presentation format.
	PolicyString []string `json:"policy_string,omitempty"`
	// MXHosts are the MTA-STS policy's mx patterns.
	MXHosts   []string `json:"mx_hosts,omitempty"`
	Succeeded int64    `json:"succeeded"`
	Failed    int64    `json:"failed"`
	// Failures counts failed sessions by kind, at most TLSRPTMaxFailures
	// entries.
	Failures []TLSRPTFailure `json:"failures,omitempty"`
}

// TLSRPTFailure is one kind of failed session (RFC 8460 §4.4
// failure-details).
type TLSRPTFailure struct {
	// ResultType is an RFC 8460 §4.3 result type: starttls-not-supported,
	// certificate-host-mismatch, certificate-expired,
	// certificate-not-trusted, validation-failure, tlsa-invalid,
	// dnssec-invalid, dane-required, sts-policy-fetch-error,
	// sts-policy-invalid, sts-webpki-invalid.
	ResultType  string `json:"result_type"`
	ReceivingMX string `json:"receiving_mx_hostname,omitempty"`
	ReceivingIP string `json:"receiving_ip,omitempty"`
	// Detail is additional-information: the deliverer's own words.
	Detail string `json:"detail,omitempty"`
	Count  int64  `json:"count"`
}
