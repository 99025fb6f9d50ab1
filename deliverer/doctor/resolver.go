package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolver asks the deliverer's configured DNS server (miekg/dns), so the
// doctor sees what deliveries see, and tests can point it at dnstest. It
// does not cache: a doctor that answers from a cache would hide the fix an
// operator just published.
//
// Its Lookup* methods have the shape of *net.Resolver's, so that
// blitiri.com.ar/go/spf and go-msgauth can use it; their errors are
// *net.DNSError with IsNotFound for NXDOMAIN and IsTemporary/IsTimeout for
// failures, which is how those libraries tell "no record" (a result) from
// "could not look" (temperror).
type resolver struct {
	server  string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

func newResolver(server string, timeout time.Duration) *resolver {
	return &resolver{
		server:  server,
		timeout: timeout,
		udp:     &dns.Client{Net: "udp", Timeout: timeout, UDPSize: 1232},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
	}
}

// errNXDomain marks a name that does not exist.
var errNXDomain = errors.New("no such domain (NXDOMAIN)")

// query returns the records of qtype for name, following CNAMEs the server
// did not resolve. NXDOMAIN is errNXDomain wrapped in a *net.DNSError; no
// records of the type (NODATA) is an empty answer and a nil error.
func (r *resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	fqdn := dns.Fqdn(name)
	for range 8 {
		resp, err := r.exchange(ctx, fqdn, qtype)
		if err != nil {
			return nil, err
		}
		var out []dns.RR
		cname := ""
		for _, rr := range resp.Answer {
			if rr.Header().Rrtype == qtype {
				out = append(out, rr)
			} else if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, fqdn) {
				cname = c.Target
			}
		}
		if len(out) > 0 || cname == "" {
			return out, nil
		}
		fqdn = dns.Fqdn(cname)
	}
	return nil, &net.DNSError{Err: "CNAME chain too long", Name: name, Server: r.server}
}

func (r *resolver) exchange(ctx context.Context, fqdn string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	qctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, _, err := r.udp.ExchangeContext(qctx, m, r.server)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.ExchangeContext(qctx, m, r.server)
	}
	name := strings.TrimSuffix(fqdn, ".")
	if err != nil {
		var ne net.Error
		timeout := errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
		msg := err.Error()
		if timeout {
			msg = fmt.Sprintf("no answer within %s", r.timeout)
		}
		return nil, &net.DNSError{Err: msg, Name: name, Server: r.server, IsTimeout: timeout, IsTemporary: true}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		return resp, nil
	case dns.RcodeNameError:
		return nil, &net.DNSError{Err: errNXDomain.Error(), Name: name, Server: r.server, IsNotFound: true}
	default:
		return nil, &net.DNSError{Err: dns.RcodeToString[resp.Rcode], Name: name, Server: r.server, IsTemporary: true}
	}
}

// notFound reports whether err says the name does not exist.
func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// addrs returns the A then AAAA addresses of host. A name that does not
// exist has no addresses and no error; a failed query is an error.
func (r *resolver) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.query(ctx, host, qt)
		if notFound(err) {
			return nil, nil
		}
		if err != nil {
			return out, err
		}
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out, nil
}

// txt returns the TXT records of name, each record's strings joined (RFC
// 7208 §3.3, RFC 6376 §3.6.2.2).
func (r *resolver) txt(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.query(ctx, name, dns.TypeTXT)
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

// LookupTXT implements spf.DNSResolver.
func (r *resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return r.txt(ctx, name)
}

// LookupMX implements spf.DNSResolver.
func (r *resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := r.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
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
func (r *resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	as, err := r.addrs(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]net.IPAddr, len(as))
	for i, a := range as {
		out[i] = net.IPAddr{IP: a.AsSlice()}
	}
	return out, nil
}

// LookupAddr implements spf.DNSResolver: the PTR names of an address.
func (r *resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, err
	}
	rrs, err := r.query(ctx, rev, dns.TypePTR)
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

// txtFunc adapts txt to go-msgauth's LookupTXT callbacks, which take no
// context.
func (r *resolver) txtFunc(ctx context.Context) func(string) ([]string, error) {
	return func(name string) ([]string, error) { return r.txt(ctx, name) }
}

// errText is the message of a DNS error without Go's "lookup x on y:" prefix.
func errText(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) {
		return de.Err
	}
	return err.Error()
}
