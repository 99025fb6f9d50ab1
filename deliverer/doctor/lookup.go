package doctor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/admin"
)

// The doctor asks DNS through the deliverer's own resolver (package mx), so
// a check sees what a delivery sees: the configured server, the same
// timeout, TCP retry and CNAME following. Each check gets a new resolver:
// its cache then lives for one check only, and an answer cached from an
// earlier run cannot hide the fix an operator just published.

// mxConfig is the resolver configuration of the checks: the deliverer's
// server, timeout, port and routes, hosts of equal preference in the order
// DNS gave them (a report should not change between runs), no metrics (the
// delivery lookup histogram counts deliveries).
func (d *Doctor) mxConfig() mx.Config {
	return mx.Config{Server: d.cfg.DNSServer, Timeout: d.cfg.DNSTimeout, Port: d.cfg.SMTPPort, Routes: d.cfg.Routes,
		Shuffle: func(int, func(int, int)) {}}
}

// resolver returns a new resolver for one check.
func (d *Doctor) resolver() *mx.Resolver {
	r, err := mx.New(d.mxConfig())
	if err != nil {
		// New built d.base from the same configuration, so this does not
		// happen; the shared resolver is a correct answer if it did.
		return d.base
	}
	return r
}

// netResolver gives an mx.Resolver the methods of *net.Resolver that
// blitiri.com.ar/go/spf calls (spf.DNSResolver). The library tells "no
// record" from "could not look" (temperror) by a *net.DNSError's IsNotFound
// and Temporary, with a type assertion, so errors are converted to exactly
// that type.
type netResolver struct{ r *mx.Resolver }

func netErr(err error) error {
	var le *mx.LookupError
	if errors.As(err, &le) {
		return le.DNSError()
	}
	return err
}

// LookupTXT implements spf.DNSResolver.
func (n netResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := lookupTXT(ctx, n.r, name)
	return txts, netErr(err)
}

// LookupMX implements spf.DNSResolver.
func (n netResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := n.r.Lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, netErr(err)
	}
	var out []*net.MX
	for _, rr := range rrs {
		if m, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: m.Mx, Pref: m.Preference})
		}
	}
	return out, nil
}

// LookupIPAddr implements spf.DNSResolver.
func (n netResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	as, err := n.r.LookupHost(ctx, host)
	if err != nil {
		return nil, netErr(err)
	}
	out := make([]net.IPAddr, len(as))
	for i, a := range as {
		out[i] = net.IPAddr{IP: a.AsSlice()}
	}
	return out, nil
}

// LookupAddr implements spf.DNSResolver: the PTR names of an address.
func (n netResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	names, err := lookupPTR(ctx, n.r, addr)
	return names, netErr(err)
}

// lookupTXT returns the TXT records of name, each record's strings joined (RFC
// 7208 §3.3, RFC 6376 §3.6.2.2).
func lookupTXT(ctx context.Context, r *mx.Resolver, name string) ([]string, error) {
	rrs, err := r.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// txtFunc adapts lookupTXT to go-msgauth's LookupTXT callbacks, which take no
// context.
func txtFunc(ctx context.Context, r *mx.Resolver) func(string) ([]string, error) {
	return func(name string) ([]string, error) { return lookupTXT(ctx, r, name) }
}

// lookupPTR returns the PTR names of an address.
func lookupPTR(ctx context.Context, r *mx.Resolver, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, err
	}
	rrs, err := r.Lookup(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if p, ok := rr.(*dns.PTR); ok {
			out = append(out, p.Ptr)
		}
	}
	return out, nil
}

// addrs returns the addresses of a name the doctor expects to resolve (the
// EHLO name, a PTR name); one that does not exist has none, and no error.
func addrs(ctx context.Context, r *mx.Resolver, host string) ([]netip.Addr, error) {
	as, err := r.LookupHost(ctx, host)
	if notFound(err) {
		return nil, nil
	}
	return as, err
}

// notFound reports whether err says the name does not exist.
func notFound(err error) bool {
	var le *mx.LookupError
	return errors.As(err, &le) && le.NotFound()
}

// errText is the reason of a lookup error ("SERVFAIL", "no answer within
// 5s"), without the question.
func errText(err error) string {
	var le *mx.LookupError
	if errors.As(err, &le) {
		return le.Reason()
	}
	return err.Error()
}

// lookupStatus is the admin.Lookup* value of a lookup's outcome.
func lookupStatus(err error, found bool) string {
	var le *mx.LookupError
	switch {
	case err == nil && found:
		return admin.LookupOK
	case err == nil:
		return admin.LookupNoData
	case !errors.As(err, &le):
		return admin.LookupError
	}
	switch le.Failure {
	case mx.FailNXDomain:
		return admin.LookupNXDomain
	case mx.FailServer:
		return admin.LookupServFail
	case mx.FailTimeout:
		return admin.LookupTimeout
	}
	return admin.LookupError
}
