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
	"github.com/sluice-mta/sluice/deliverer/mx"
)

// resolver asks the validating resolver through the deliverer's own DNS
// client (package mx: the same timeout, TCP retry of truncated answers and
// CNAME following as deliveries) and reports, with each answer, whether it
// was authenticated: the AD bit of a resolver that validates DNSSEC (RFC
// 4035 §3.2.3; RFC 7672 §1.3 trusts it as Postfix does), on every answer of
// a CNAME chain.
type resolver struct {
	server string
	dns    *mx.Resolver
}

func newResolver(server string, timeout time.Duration) (*resolver, error) {
	// No cache: the validating resolver has one, and the engine keeps the
	// MTA-STS state of a domain for Config.Recheck itself.
	r, err := mx.New(mx.Config{Server: server, Timeout: timeout, NoCache: true})
	if err != nil {
		return nil, fmt.Errorf("deliverer.tls_policy.dnssec_server: %w", err)
	}
	return &resolver{server: server, dns: r}, nil
}

// ask returns the DNSSEC answer of a question. Failures say which question
// and why in a postmaster's words: "TLSA lookup of _25._tcp.mx.example.com
// failed: SERVFAIL".
func (r *resolver) ask(ctx context.Context, name string, qtype uint16) (mx.Secure, error) {
	a, err := r.dns.LookupSecure(ctx, name, qtype)
	if err != nil {
		var le *mx.LookupError
		if errors.As(err, &le) {
			return a, fmt.Errorf("%s lookup of %s failed: %s", dns.TypeToString[qtype], le.Name, le.Reason())
		}
		return a, err
	}
	return a, nil
}

// txt returns the strings of name's TXT records, each record's strings
// joined (RFC 7208 §3.3 style, as RFC 8461 §3.1 expects). A name that does
// not exist has none.
func (r *resolver) txt(ctx context.Context, name string) ([]string, error) {
	a, err := r.ask(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range a.Records {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// tlsa is the TLSA answer for one server.
type tlsa struct {
	// name is where the records were looked up; target, when different,
	// is the end of its CNAME chain, where they were found.
	name, target string
	// expanded is the MX host's CNAME-expanded name when the records were
	// found under it: a reference identifier of DANE-TA besides the MX
	// host name (RFC 7672 §3.2.2).
	expanded string
	records  []dane.Record
	// secure: the answer (records or their absence) was authenticated,
	// every CNAME on the way included.
	secure bool
	// bad counts records whose data could not be read.
	bad int
}

// where names the TLSA records for messages: "_25._tcp.mx.example.com",
// or "_25._tcp.mx.example.com (CNAME to tlsa.provider.example)".
func (t tlsa) where() string {
	name := strings.TrimSuffix(t.name, ".")
	if t.target != "" && !strings.EqualFold(t.target, name) {
		return name + " (CNAME to " + t.target + ")"
	}
	return name
}

// TLSAName is where the TLSA records of a server are (RFC 6698 §3,
// RFC 7672 §2.2.3): _<port>._tcp.<host>.
func TLSAName(host string, port int) string {
	return "_" + strconv.Itoa(port) + "._tcp." + strings.TrimSuffix(host, ".") + "."
}

// tlsa looks up the TLSA records of host:port. When host is an alias whose
// address records are reached through a secure CNAME chain, the records
// are looked up first at the expanded name, then, if there are none
// there, at host itself (RFC 7672 §2.2.3); an alias reached insecurely is
// not trusted to name the server, and only host is asked. The TLSA name
// itself may be a CNAME (a provider's shared records, RFC 7671 §7); the
// lookup follows it and the answer is secure only if every link was.
func (r *resolver) tlsa(ctx context.Context, host string, port int) (tlsa, error) {
	if target := r.expand(ctx, host); target != "" {
		t, err := r.tlsaAt(ctx, TLSAName(target, port))
		if err != nil || len(t.records) > 0 || t.bad > 0 {
			t.expanded = strings.ToLower(target)
			return t, err
		}
	}
	return r.tlsaAt(ctx, TLSAName(host, port))
}

// expand returns the end of host's CNAME chain when the chain is secure
// and host is an alias, else "". A failed address lookup is left to the
// delivery, which looks the addresses up itself.
func (r *resolver) expand(ctx context.Context, host string) string {
	a, err := r.dns.LookupSecure(ctx, host, dns.TypeA)
	if err != nil || !a.Authenticated || strings.EqualFold(a.Target, strings.TrimSuffix(host, ".")) {
		return ""
	}
	return a.Target
}

func (r *resolver) tlsaAt(ctx context.Context, name string) (tlsa, error) {
	a, err := r.ask(ctx, name, dns.TypeTLSA)
	if err != nil {
		return tlsa{name: name}, err
	}
	t := tlsa{name: name, target: a.Target, secure: a.Authenticated}
	for _, rr := range a.Records {
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
	return a.Authenticated, nil
}
