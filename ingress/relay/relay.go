// Package relay decides whether a client may hand the ingress mail for a
// recipient. It is the guard against being an open relay: only trusted
// networks and authenticated submission users may use Sluice to reach any
// domain; anyone else may only send to the domains Sluice is the MX for. The policy
// is pure: it is given everything it needs and does no I/O, so it is tested
// as a table.
package relay

import (
	"net/netip"
	"strings"
)

// Policy holds what a relay decision depends on.
type Policy struct {
	// Trusted are the networks whose clients may send to any domain
	// (Postfix's mynetworks).
	Trusted []netip.Prefix
	// LocalDomains are domains Sluice accepts mail for from anyone, as an
	// inbound MX. Names are compared case-insensitively.
	LocalDomains []string
}

// Request is one RCPT TO to decide on.
type Request struct {
	// Client is the address of the connected client.
	Client netip.Addr
	// AuthUser is the authenticated submission user, empty when the client
	// did not authenticate.
	AuthUser string
	// Domain is the recipient's domain.
	Domain string
}

// Reason says why a request was allowed or denied, for logs and traces.
type Reason int

// Reasons.
const (
	DeniedUntrusted Reason = iota
	AllowedTrustedNetwork
	AllowedAuthenticated
	AllowedLocalDomain
)

func (r Reason) String() string {
	switch r {
	case AllowedTrustedNetwork:
		return "trusted_network"
	case AllowedAuthenticated:
		return "authenticated"
	case AllowedLocalDomain:
		return "local_domain"
	}
	return "untrusted"
}

// Decision is the verdict on a Request.
type Decision struct {
	Allowed bool
	Reason  Reason
}

// Decide returns whether the request may be accepted. Mail for a local
// domain is accepted from anyone (inbound MX; the caller then checks that
// the recipient exists), an authenticated user may send anywhere (RFC 6409
// submission), a trusted network may relay anywhere; everything else would
// make us an open relay and is denied.
func (p Policy) Decide(r Request) Decision {
	if p.IsLocal(r.Domain) {
		return Decision{Allowed: true, Reason: AllowedLocalDomain}
	}
	if r.AuthUser != "" {
		return Decision{Allowed: true, Reason: AllowedAuthenticated}
	}
	if p.IsTrusted(r.Client) {
		return Decision{Allowed: true, Reason: AllowedTrustedNetwork}
	}
	return Decision{Allowed: false, Reason: DeniedUntrusted}
}

// IsLocal reports whether domain is one of LocalDomains. Names compare
// case-insensitively and a trailing dot is ignored; an address literal
// such as [192.0.2.1] is never local.
func (p Policy) IsLocal(domain string) bool {
	domain = strings.TrimSuffix(domain, ".")
	if domain == "" {
		return false
	}
	for _, d := range p.LocalDomains {
		if strings.EqualFold(domain, strings.TrimSuffix(d, ".")) {
			return true
		}
	}
	return false
}

// IsTrusted reports whether client is in a trusted network.
func (p Policy) IsTrusted(client netip.Addr) bool {
	if !client.IsValid() {
		return false
	}
	// An IPv4 client on a dual-stack listener shows up as ::ffff:a.b.c.d;
	// unmap it so that 127.0.0.0/8 matches.
	c := client.Unmap()
	for _, n := range p.Trusted {
		if n.Contains(c) {
			return true
		}
	}
	return false
}
