package tlspolicy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/dane"
)

// resolver asks the validating resolver and reports, with each answer,
// whether it was authenticated: the AD bit of a resolver that validates
// DNSSEC (RFC 4035 §3.2.3; RFC 7672 §1.3 trusts it as Postfix does). The
// query sets DO and AD so that a validating resolver says.
type resolver struct {
	server  string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

func newResolver(server string, timeout time.Duration) *resolver {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &resolver{server: server, timeout: timeout,
		udp: &dns.Client{Net: "udp", Timeout: timeout, UDPSize: 1232},
		tcp: &dns.Client{Net: "tcp", Timeout: timeout}}
}

// answer is one DNS answer: its code, records of the asked type, and
// whether the resolver authenticated it.
type answer struct {
	rcode  int
	rrs    []dns.RR
	secure bool
}

// lookupError is a question without a usable answer: a timeout, a network
// error, or an error code other than NXDOMAIN (SERVFAIL is how a validating
// resolver reports a bogus answer).
type lookupError struct {
	name  string
	qtype uint16
	cause string
}

func (e *lookupError) Error() string {
	return fmt.Sprintf("%s lookup of %s failed: %s", dns.TypeToString[e.qtype], strings.TrimSuffix(e.name, "."), e.cause)
}

func (r *resolver) ask(ctx context.Context, name string, qtype uint16) (answer, error) {
	fqdn := dns.Fqdn(name)
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true
	m.SetEdns0(1232, true)
	qctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, _, err := r.udp.ExchangeContext(qctx, m, r.server)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.ExchangeContext(qctx, m, r.server)
	}
	if err != nil {
		cause := err.Error()
		var ne interface{ Timeout() bool }
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			cause = "no answer within " + r.timeout.String()
		}
		return answer{}, &lookupError{name: fqdn, qtype: qtype, cause: cause}
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		cause, ok := dns.RcodeToString[resp.Rcode]
		if !ok {
			cause = "RCODE " + strconv.Itoa(resp.Rcode)
		}
		return answer{}, &lookupError{name: fqdn, qtype: qtype, cause: cause}
	}
	a := answer{rcode: resp.Rcode, secure: resp.AuthenticatedData}
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			a.rrs = append(a.rrs, rr)
		}
	}
	return a, nil
}

// txt returns the strings of name's TXT records, each record's strings
// joined (RFC 7208 §3.3 style, as RFC 8461 §3.1 expects).
func (r *resolver) txt(ctx context.Context, name string) ([]string, error) {
	a, err := r.ask(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range a.rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// tlsa is the TLSA answer for one server.
type tlsa struct {
	name    string
	records []dane.Record
	// secure: the answer (records or their absence) was authenticated.
	secure bool
	// bad counts records whose data could not be read.
	bad int
}

// TLSAName is where the TLSA records of a server are (RFC 6698 §3,
// RFC 7672 §2.2.3): _<port>._tcp.<host>.
func TLSAName(host string, port int) string {
	return "_" + strconv.Itoa(port) + "._tcp." + strings.TrimSuffix(host, ".") + "."
}

func (r *resolver) tlsa(ctx context.Context, host string, port int) (tlsa, error) {
	name := TLSAName(host, port)
	a, err := r.ask(ctx, name, dns.TypeTLSA)
	if err != nil {
		return tlsa{name: name}, err
	}
	t := tlsa{name: name, secure: a.secure}
	for _, rr := range a.rrs {
		rec, err := dane.FromRR(rr.(*dns.TLSA))
		if err != nil {
			t.bad++
			continue
		}
		t.records = append(t.records, rec)
	}
	return t, nil
}

// mxSecure reports whether the domain's MX answer (records, or their
// secure absence for an implicit MX) is authenticated: DANE applies to the
// MX hosts of a domain only then (RFC 7672 §2.2.1).
func (r *resolver) mxSecure(ctx context.Context, domain string) (bool, error) {
	a, err := r.ask(ctx, domain, dns.TypeMX)
	if err != nil {
		return false, err
	}
	return a.secure, nil
}
