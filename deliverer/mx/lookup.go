package mx

// This file gives the doctor (and anything else on a deliverer host that
// asks DNS) the resolver deliveries use: the same server, per-query
// timeout, TCP retry of truncated answers, CNAME following and cache, so a
// check sees what a delivery would see. Route and Addrs turn failures into
// the *status.Error of a delivery attempt; Lookup and LookupHost keep them
// as a *LookupError that names what went wrong (NXDOMAIN, an error answer
// such as SERVFAIL, a timeout, the network), which a diagnosis needs and a
// delivery does not. LookupSecure adds the DNSSEC status of an answer for
// the TLS policy engine (DANE), so that it needs no DNS client of its own.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/status"
)

// Failure says why a lookup gave no answer. Its values are the result
// label values of sluice_deliverer_dns_lookup_duration_seconds.
type Failure string

const (
	// FailNXDomain: the name does not exist (RCODE 3, RFC 1035 §4.1.1).
	FailNXDomain Failure = "nxdomain"
	// FailServer: the server answered with an error code other than
	// NXDOMAIN (SERVFAIL, REFUSED, ...); LookupError.Rcode names it.
	FailServer Failure = "servfail"
	// FailTimeout: no answer within the query timeout (or before the
	// caller's deadline).
	FailTimeout Failure = "timeout"
	// FailNetwork: the query could not be sent or its answer not read, or
	// a CNAME chain looped or was too long (Err is then a *CNAMEError).
	FailNetwork Failure = "error"
)

// LookupError is a failed DNS question.
type LookupError struct {
	// Name is the name asked, without the final dot.
	Name string
	// Type is the query type (dns.TypeA, ...).
	Type    uint16
	Failure Failure
	// Rcode is the server's answer code for FailServer and FailNXDomain.
	Rcode int
	// Server is the DNS server asked, host:port.
	Server string
	// Wait is the per-query timeout, for FailTimeout.
	Wait time.Duration
	// Err is the underlying error of FailTimeout and FailNetwork.
	Err error
}

// Reason says what went wrong in a few words: "no such domain (NXDOMAIN)",
// "SERVFAIL", "no answer within 5s", or the network error.
func (e *LookupError) Reason() string {
	switch e.Failure {
	case FailNXDomain:
		return "no such domain (NXDOMAIN)"
	case FailServer:
		if s, ok := dns.RcodeToString[e.Rcode]; ok {
			return s
		}
		return fmt.Sprintf("RCODE %d", e.Rcode)
	case FailTimeout:
		return fmt.Sprintf("no answer within %s", e.Wait)
	}
	if e.Err != nil {
		return e.Err.Error()
	}
	return string(e.Failure)
}

// Error implements error.
func (e *LookupError) Error() string {
	return fmt.Sprintf("DNS %s lookup of %s: %s", dns.TypeToString[e.Type], e.Name, e.Reason())
}

// Unwrap returns the underlying network error.
func (e *LookupError) Unwrap() error { return e.Err }

// NotFound reports whether the name does not exist.
func (e *LookupError) NotFound() bool { return e.Failure == FailNXDomain }

// DNSError converts e to the *net.DNSError that libraries written for
// *net.Resolver expect (blitiri.com.ar/go/spf tells "no record" from
// "temperror" by IsNotFound and Temporary).
func (e *LookupError) DNSError() *net.DNSError {
	return &net.DNSError{Err: e.Reason(), Name: e.Name, Server: e.Server,
		IsNotFound: e.Failure == FailNXDomain, IsTimeout: e.Failure == FailTimeout, IsTemporary: e.Failure != FailNXDomain}
}

// Lookup returns the records of qtype for name, asked as Route and Addrs
// ask (cache included: a caller that must not see cached answers uses a
// Resolver of its own for each run). A name without records of the type
// (NODATA) gives none and a nil error; every failure is a *LookupError.
func (r *Resolver) Lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	res, err := r.resolve(ctx, name, qtype, false)
	if err == nil && res.rcode == dns.RcodeNameError {
		return nil, &LookupError{Name: strings.TrimSuffix(name, "."), Type: qtype, Rcode: res.rcode, Server: r.cfg.Server, Failure: FailNXDomain}
	}
	if err != nil {
		return nil, r.lookupError(name, qtype, res.rcode, err)
	}
	return res.records, nil
}

// Secure is an answer with its DNSSEC status, from LookupSecure.
type Secure struct {
	// Records are the records of the type asked, at the end of the chain.
	Records []dns.RR
	// NXDomain: the name, or the target of its chain, does not exist.
	NXDomain bool
	// Authenticated: every answer of the chain, the final one included
	// (records, NODATA or NXDOMAIN), carried the AD bit of the server.
	Authenticated bool
	// Target is the final name of the CNAME chain without the final dot,
	// the name asked when there was no CNAME.
	Target string
}

// LookupSecure asks for the records of qtype at name with DNSSEC status,
// for DANE (RFC 7672): the query sets DO and AD so that a validating
// resolver says, with the AD bit, whether its answer was authenticated.
// CNAMEs are followed as Lookup follows them (at most MaxCNAMEs, a loop is
// an error), and the answer is Authenticated only if every answer of the
// chain was: one insecure link makes the rest insecure (RFC 7672 §2.2.2).
// The AD bit is only as trustworthy as the server and the path to it, so
// this is meant for a validating resolver on a trusted path (loopback).
//
// Unlike Lookup, a name that does not exist is an answer, not an error:
// DANE tells a secure denial from an insecure one. Every failure (SERVFAIL,
// which is how a validating resolver reports a bogus answer, a timeout, a
// CNAME loop) is a *LookupError.
func (r *Resolver) LookupSecure(ctx context.Context, name string, qtype uint16) (Secure, error) {
	res, err := r.resolve(ctx, name, qtype, true)
	if err != nil {
		return Secure{}, r.lookupError(name, qtype, res.rcode, err)
	}
	return Secure{Records: res.records, NXDomain: res.rcode == dns.RcodeNameError, Authenticated: res.secure,
		Target: strings.TrimSuffix(res.chain[len(res.chain)-1], ".")}, nil
}

// lookupError converts a failure of resolve (a *status.Error for a
// delivery) to a *LookupError.
func (r *Resolver) lookupError(name string, qtype uint16, rcode int, err error) *LookupError {
	le := &LookupError{Name: strings.TrimSuffix(name, "."), Type: qtype, Rcode: rcode, Server: r.cfg.Server}
	if rcode != dns.RcodeSuccess {
		// exchange returns the rcode of an error answer with its error.
		le.Failure = FailServer
		return le
	}
	// Keep the network error itself, not the delivery's wrapping.
	var se *status.Error
	if errors.As(err, &se) {
		if se.Err != nil {
			err = se.Err
		} else {
			err = errors.New(se.Text)
		}
	}
	le.Err = err
	le.Failure = FailNetwork
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		le.Failure, le.Wait = FailTimeout, r.cfg.Timeout
	}
	return le
}

// LookupHost returns the IPv4 then IPv6 addresses of host, asked as Addrs
// asks them. When neither query gives an address, the error is the
// *LookupError of the A query, else of the AAAA query; a name that exists
// without address records gives no addresses and a nil error. A name that
// does not exist is not asked for AAAA.
func (r *Resolver) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	var addrs []netip.Addr
	var first error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.Lookup(ctx, host, qt)
		if err != nil {
			if first == nil {
				first = err
			}
			var le *LookupError
			if errors.As(err, &le) && le.NotFound() {
				break
			}
			continue
		}
		addrs = appendAddrs(addrs, rrs)
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	return nil, first
}
