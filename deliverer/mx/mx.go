// Package mx finds where mail for a domain goes: the static routes of the
// configuration (like Postfix transport maps), else the domain's MX records
// (RFC 5321 §5.1) looked up with miekg/dns through one configured DNS server,
// with a per-query timeout and a small cache that respects record TTLs.
//
// The outcome of a lookup is either a Route, an ordered list of hosts to try,
// or a *status.Error that says whether the failure is permanent:
//
//	NXDOMAIN for the domain                 permanent 550 5.1.2 (REASON_NO_DOMAIN)
//	null MX, a single "0 ." (RFC 7505 §3)   permanent 556 5.1.10 (REASON_NULL_MX)
//	no MX and no A/AAAA                     permanent 550 5.1.2 (REASON_NO_DOMAIN)
//	SERVFAIL, REFUSED, timeout, network     temporary 451 4.4.3 (REASON_DNS)
//
// Hosts are sorted by preference, with random order among hosts of equal
// preference (RFC 5321 §5.1 asks senders to spread load that way). The
// addresses of a host are looked up only when the host is tried (Addrs), so
// a dead backup MX costs nothing while the primary answers; IPv4 addresses
// come before IPv6 ones, because a sending host's IPv4 reputation is the one
// receivers usually know.
package mx

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Config configures a Resolver.
type Config struct {
	// Server is the DNS server as host:port. main fills it from
	// /etc/resolv.conf when the configuration leaves it empty.
	Server string
	// Timeout bounds each query.
	Timeout time.Duration
	// Port is the SMTP port of hosts found by MX lookups (25 in production).
	Port int
	// Routes maps a lower-case domain to "host:port", overriding its MX.
	Routes map[string]string
	// Shuffle orders hosts of equal preference; nil uses math/rand/v2.
	// Tests inject a deterministic one.
	Shuffle func(n int, swap func(i, j int))
	// CacheSize is the most answers kept; 0 means 4096.
	CacheSize int
	// NoCache sends every question to the server. The TLS policy engine
	// sets it: it asks a validating resolver, which caches, and keeps its
	// own MTA-STS state for a configured time, so a second cache would
	// only delay a published change.
	NoCache bool
	// Meter records sluice_deliverer_dns_lookup_duration_seconds; nil
	// disables metrics.
	Meter metric.Meter
}

// Host is one server to try, in order.
type Host struct {
	// Name is the host name (an MX exchange without the final dot), or an
	// address literal.
	Name string
	// Preference is the MX preference; 0 for routes and implicit MX.
	Preference uint16
	// Port is the TCP port to connect to.
	Port int
	// Addrs is set when the addresses are already known (address literals,
	// routes to an IP, implicit MX); otherwise call Resolver.Addrs.
	Addrs []netip.Addr
}

// Route is where mail for a domain goes.
type Route struct {
	Domain string
	Hosts  []Host
	// Site names the receiving servers behind the route: the set of MX
	// host names, sorted and joined with commas ("a.mx.test,b.mx.test"), so
	// that every domain served by the same MX hosts (gmail.com and
	// googlemail.com) is one site with one budget of connections, as
	// KumoMTA's "MX rollup". A domain without MX records is its own site
	// (its name); a static route's site is its "host:port"; an address
	// literal is its own site. Computing it costs a sort of the hosts of an
	// answer that is cached for its DNS TTL.
	Site string
	// Static is true when a configured route decided, Implicit when the
	// domain had no MX and its own address is used (RFC 5321 §5.1).
	Static   bool
	Implicit bool
}

// Resolver resolves domains to routes. It is safe for concurrent use.
type Resolver struct {
	cfg     Config
	client  *dns.Client
	tcp     *dns.Client
	shuffle func(n int, swap func(i, j int))
	lookups metric.Float64Histogram

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
	now   func() time.Time
}

type cacheKey struct {
	name  string
	qtype uint16
	// dnssec: asked with DO and AD, so the answer says whether it was
	// authenticated (and may carry RRSIGs).
	dnssec bool
}

type cacheEntry struct {
	rcode   int
	answer  []dns.RR
	secure  bool
	expires time.Time
}

// New returns a resolver.
func New(cfg Config) (*Resolver, error) {
	if cfg.Server == "" {
		return nil, errors.New("mx: no DNS server")
	}
	if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
		return nil, fmt.Errorf("mx: DNS server %q: %w", cfg.Server, err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Port == 0 {
		cfg.Port = 25
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 4096
	}
	routes := make(map[string]string, len(cfg.Routes))
	for d, hp := range cfg.Routes {
		routes[strings.ToLower(strings.TrimSuffix(d, "."))] = hp
	}
	cfg.Routes = routes
	m := cfg.Meter
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	r := &Resolver{
		cfg:     cfg,
		client:  &dns.Client{Net: "udp", Timeout: cfg.Timeout, UDPSize: 1232},
		tcp:     &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		shuffle: cfg.Shuffle,
		cache:   map[cacheKey]cacheEntry{},
		now:     time.Now,
	}
	if r.shuffle == nil {
		r.shuffle = rand.Shuffle
	}
	var err error
	// Label values: type = mx | a | aaaa; result = ok | nodata | nxdomain |
	// servfail | timeout | error. Cache hits are not recorded.
	r.lookups, err = m.Float64Histogram("sluice_deliverer_dns_lookup_duration_seconds",
		metric.WithDescription("Duration of DNS queries sent by the deliverer (cache misses)."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Route returns the hosts to try for domain, or a *status.Error.
func (r *Resolver) Route(ctx context.Context, domain string) (Route, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if hp, ok := r.cfg.Routes[domain]; ok {
		return r.static(domain, hp)
	}
	if lit, ok := addressLiteral(domain); ok {
		// RFC 5321 §4.1.3: an address literal names the host directly.
		return Route{Domain: domain, Site: domain, Hosts: []Host{{Name: domain, Port: r.cfg.Port, Addrs: []netip.Addr{lit}}}}, nil
	}
	if domain == "" {
		return Route{}, status.Permanent(sluicev1.Reason_REASON_NO_DOMAIN, 550, "5.1.2", "empty destination domain")
	}
	rcode, answer, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return Route{}, err
	}
	if rcode == dns.RcodeNameError {
		return Route{}, status.Permanent(sluicev1.Reason_REASON_NO_DOMAIN, 550, "5.1.2",
			fmt.Sprintf("domain %s does not exist (NXDOMAIN)", domain))
	}
	var mxs []*dns.MX
	for _, rr := range answer {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
		}
	}
	if len(mxs) == 1 && mxs[0].Mx == "." && mxs[0].Preference == 0 {
		return Route{}, status.Permanent(sluicev1.Reason_REASON_NULL_MX, 556, "5.1.10",
			fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", domain))
	}
	if len(mxs) == 0 {
		return r.implicit(ctx, domain)
	}
	hosts := make([]Host, 0, len(mxs))
	for _, mx := range mxs {
		name := strings.ToLower(strings.TrimSuffix(mx.Mx, "."))
		if name == "" {
			// A "." among real MX records is a misconfiguration; RFC 7505
			// §3 says it must be alone, so the other records win.
			continue
		}
		hosts = append(hosts, Host{Name: name, Preference: mx.Preference, Port: r.cfg.Port})
	}
	site := siteOf(hosts)
	if site == "" {
		site = domain
	}
	r.order(hosts)
	return Route{Domain: domain, Site: site, Hosts: hosts}, nil
}

// siteOf is the site key of a set of MX hosts: their names, sorted,
// without duplicates, joined by commas. Preferences are left out: a
// provider that reorders its MX records is still the same site.
func siteOf(hosts []Host) string {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	slices.Sort(names)
	return strings.Join(slices.Compact(names), ",")
}

// order sorts hosts by preference and shuffles runs of equal preference.
func (r *Resolver) order(hosts []Host) {
	slices.SortStableFunc(hosts, func(a, b Host) int { return int(a.Preference) - int(b.Preference) })
	for i := 0; i < len(hosts); {
		j := i + 1
		for j < len(hosts) && hosts[j].Preference == hosts[i].Preference {
			j++
		}
		if j-i > 1 {
			run := hosts[i:j]
			r.shuffle(len(run), func(a, b int) { run[a], run[b] = run[b], run[a] })
		}
		i = j
	}
}

// implicit handles a domain without MX records: RFC 5321 §5.1 treats its
// own address records as an MX of preference 0. Without them the domain
// cannot receive mail at all.
func (r *Resolver) implicit(ctx context.Context, domain string) (Route, error) {
	addrs, err := r.Addrs(ctx, domain)
	if err != nil {
		var se *status.Error
		if errors.As(err, &se) && se.Reason == sluicev1.Reason_REASON_NO_DOMAIN {
			return Route{}, status.Permanent(sluicev1.Reason_REASON_NO_DOMAIN, 550, "5.1.2",
				fmt.Sprintf("domain %s has no MX and no address records", domain))
		}
		return Route{}, err
	}
	return Route{Domain: domain, Site: domain, Implicit: true, Hosts: []Host{{Name: domain, Port: r.cfg.Port, Addrs: addrs}}}, nil
}

// static builds the route of a configured transport entry.
func (r *Resolver) static(domain, hostport string) (Route, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return Route{}, status.Temporary(sluicev1.Reason_REASON_INTERNAL, 451, "4.3.5",
			fmt.Sprintf("bad route for %s: %q", domain, hostport))
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port <= 0 || port > 65535 {
		return Route{}, status.Temporary(sluicev1.Reason_REASON_INTERNAL, 451, "4.3.5",
			fmt.Sprintf("bad route port for %s: %q", domain, hostport))
	}
	h := Host{Name: strings.ToLower(host), Port: port}
	if ip, err := netip.ParseAddr(host); err == nil {
		h.Addrs = []netip.Addr{ip.Unmap()}
	}
	return Route{Domain: domain, Site: net.JoinHostPort(h.Name, strconv.Itoa(port)), Static: true, Hosts: []Host{h}}, nil
}

// Addrs returns the IPv4 then IPv6 addresses of host. When neither query
// gives an address, the error is temporary REASON_DNS if either query failed
// for a temporary reason, and permanent REASON_NO_DOMAIN if the name does
// not exist or has no address records; callers decide what that means for
// an MX host (the courier defers: a broken MX record is usually fixed soon).
func (r *Resolver) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	var addrs []netip.Addr
	var tempErr error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		_, answer, err := r.query(ctx, host, qt)
		if err != nil {
			tempErr = err
			continue
		}
		addrs = appendAddrs(addrs, answer)
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	if tempErr != nil {
		return nil, tempErr
	}
	return nil, status.Permanent(sluicev1.Reason_REASON_NO_DOMAIN, 550, "5.1.2",
		fmt.Sprintf("host %s has no address records", host))
}

// query answers one question from the cache or the server, following CNAME
// chains the server did not resolve for us. It returns the rcode and the
// records of qtype; a nil error means the rcode is NOERROR or NXDOMAIN.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (int, []dns.RR, error) {
	res, err := r.resolve(ctx, name, qtype, false)
	return res.rcode, res.records, err
}

// MaxCNAMEs is the most CNAME records a lookup follows from the name asked
// to the records: a longer chain is an error, as is a loop.
const MaxCNAMEs = 8

// CNAMEError is a CNAME chain that does not end in records: a loop, or a
// chain of more than MaxCNAMEs aliases.
type CNAMEError struct {
	// Chain lists the names from the one asked, each without the final
	// dot; for a loop the last is the name met a second time.
	Chain []string
	// Loop is true for a loop, false for a chain that is too long.
	Loop bool
}

// Error implements error: "CNAME loop: a.test -> b.test -> a.test".
func (e *CNAMEError) Error() string {
	chain := strings.Join(e.Chain, " -> ")
	if e.Loop {
		return "CNAME loop: " + chain
	}
	return fmt.Sprintf("CNAME chain longer than %d aliases: %s", MaxCNAMEs, chain)
}

// resolved is the end of a question's CNAME chain.
type resolved struct {
	rcode   int
	records []dns.RR
	// secure: every answer on the way carried the AD bit (only asked for
	// with dnssec).
	secure bool
	// chain lists the names from the one asked to the final target, as
	// FQDNs.
	chain []string
}

// resolve answers one question, following CNAMEs both inside an answer (a
// recursive resolver usually sends the whole chain with the records of its
// target) and across answers (a server that sends the CNAME alone). With
// dnssec the queries ask for DNSSEC status, and the result is secure only
// if every answer of the chain was: RFC 7672 §2.2.2, one insecure CNAME
// makes everything after it insecure. A loop, or a chain of more than
// MaxCNAMEs aliases, is a temporary error whose Err is a *CNAMEError.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16, dnssec bool) (resolved, error) {
	fqdn := dns.Fqdn(name)
	res := resolved{secure: dnssec, chain: []string{fqdn}}
	seen := map[string]bool{strings.ToLower(fqdn): true}
	// follow moves to the target of an alias, or says why it cannot.
	follow := func(target string) error {
		target = dns.Fqdn(target)
		res.chain = append(res.chain, target)
		ce := &CNAMEError{Loop: seen[strings.ToLower(target)]}
		if !ce.Loop && len(res.chain) <= MaxCNAMEs+1 {
			seen[strings.ToLower(target)] = true
			return nil
		}
		for _, n := range res.chain {
			ce.Chain = append(ce.Chain, strings.TrimSuffix(n, "."))
		}
		return &status.Error{Code: 451, Enhanced: "4.4.3", Reason: sluicev1.Reason_REASON_DNS, Err: ce,
			Text: fmt.Sprintf("DNS %s lookup of %s: %v", dns.TypeToString[qtype], strings.TrimSuffix(fqdn, "."), ce)}
	}
	for {
		cur := res.chain[len(res.chain)-1]
		rcode, answer, secure, err := r.exchange(ctx, cur, qtype, dnssec)
		res.rcode, res.secure = rcode, res.secure && secure
		if err != nil || rcode != dns.RcodeSuccess {
			return res, err
		}
		aliases := map[string]string{}
		for _, rr := range answer {
			if c, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
				aliases[strings.ToLower(c.Hdr.Name)] = c.Target
			}
		}
		for {
			target, ok := aliases[strings.ToLower(res.chain[len(res.chain)-1])]
			if !ok {
				break
			}
			if err := follow(target); err != nil {
				return res, err
			}
		}
		end := res.chain[len(res.chain)-1]
		for _, rr := range answer {
			if rr.Header().Rrtype == qtype && strings.EqualFold(rr.Header().Name, end) {
				res.records = append(res.records, rr)
			}
		}
		if len(res.records) > 0 || end == cur {
			// Records, or none at the end of the chain (NODATA).
			return res, nil
		}
		// The answer ended in an alias without its target's records: ask
		// for the target.
	}
}

// exchange returns the rcode and answer section for one question, and
// whether the answer was authenticated: with dnssec the query sets DO and
// AD, so that a validating resolver says with the AD bit of its answer
// (RFC 4035 §3.2.3, RFC 6840 §5.7); without, secure is false.
func (r *Resolver) exchange(ctx context.Context, fqdn string, qtype uint16, dnssec bool) (int, []dns.RR, bool, error) {
	key := cacheKey{strings.ToLower(fqdn), qtype, dnssec}
	if e, ok := r.cached(key); ok {
		return e.rcode, e.answer, e.secure, nil
	}
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = dnssec
	m.SetEdns0(1232, dnssec)

	start := time.Now()
	qctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	resp, _, err := r.client.ExchangeContext(qctx, m, r.cfg.Server)
	if err == nil && resp.Truncated {
		resp, _, err = r.tcp.ExchangeContext(qctx, m, r.cfg.Server)
	}
	cancel()
	typ := strings.ToLower(dns.TypeToString[qtype])
	if err != nil {
		result := "error"
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			result = "timeout"
		}
		r.observe(typ, result, start)
		return 0, nil, false, &status.Error{Code: 451, Enhanced: "4.4.3", Reason: sluicev1.Reason_REASON_DNS, Err: err,
			Text: fmt.Sprintf("DNS %s lookup of %s failed: %s", dns.TypeToString[qtype], strings.TrimSuffix(fqdn, "."), result)}
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		if len(resp.Answer) == 0 {
			r.observe(typ, "nodata", start)
		} else {
			r.observe(typ, "ok", start)
		}
	case dns.RcodeNameError:
		r.observe(typ, "nxdomain", start)
	default:
		// SERVFAIL, REFUSED and the rest say nothing about the domain
		// itself: temporary (RFC 5321 §5.1 "temporary error"). A
		// validating resolver answers SERVFAIL to a bogus answer.
		r.observe(typ, "servfail", start)
		return resp.Rcode, nil, false, status.Temporary(sluicev1.Reason_REASON_DNS, 451, "4.4.3",
			fmt.Sprintf("DNS %s lookup of %s: %s", dns.TypeToString[qtype], strings.TrimSuffix(fqdn, "."), dns.RcodeToString[resp.Rcode]))
	}
	secure := dnssec && resp.AuthenticatedData
	r.store(key, resp, secure)
	return resp.Rcode, resp.Answer, secure, nil
}

func (r *Resolver) observe(typ, result string, start time.Time) {
	r.lookups.Record(context.Background(), time.Since(start).Seconds(),
		metric.WithAttributes(attribute.String("type", typ), attribute.String("result", result)))
}

func (r *Resolver) cached(key cacheKey) (cacheEntry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[key]
	if !ok {
		return e, false
	}
	if !r.now().Before(e.expires) {
		delete(r.cache, key)
		return e, false
	}
	return e, true
}

// Cache lifetimes: positive answers live for their smallest TTL, negative
// ones (NXDOMAIN, NODATA) for the SOA minimum of the authority section (RFC
// 2308 §5) or negativeTTL without one; nothing lives longer than maxTTL.
const (
	negativeTTL = 30 * time.Second
	maxTTL      = time.Hour
)

func (r *Resolver) store(key cacheKey, resp *dns.Msg, secure bool) {
	if r.cfg.NoCache {
		return
	}
	ttl := maxTTL
	if len(resp.Answer) > 0 {
		for _, rr := range resp.Answer {
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	} else {
		ttl = negativeTTL
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl = min(maxTTL, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
			}
		}
	}
	if ttl <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.cfg.CacheSize {
		// Evict expired entries, then arbitrary ones: the cache is a
		// latency aid, not a source of truth.
		now := r.now()
		for k, e := range r.cache {
			if !now.Before(e.expires) || len(r.cache) >= r.cfg.CacheSize {
				delete(r.cache, k)
			}
		}
	}
	r.cache[key] = cacheEntry{rcode: resp.Rcode, answer: resp.Answer, secure: secure, expires: r.now().Add(ttl)}
}

// addressLiteral parses an RFC 5321 §4.1.3 domain literal: "[192.0.2.1]"
// or "[IPv6:2001:db8::1]".
func addressLiteral(d string) (netip.Addr, bool) {
	if len(d) < 3 || d[0] != '[' || d[len(d)-1] != ']' {
		return netip.Addr{}, false
	}
	s := d[1 : len(d)-1]
	if len(s) > 5 && strings.EqualFold(s[:5], "ipv6:") {
		ip, err := netip.ParseAddr(s[5:])
		return ip, err == nil && ip.Is6()
	}
	ip, err := netip.ParseAddr(s)
	return ip, err == nil && ip.Is4()
}

// appendAddrs appends the addresses of the A and AAAA records in rrs.
func appendAddrs(addrs []netip.Addr, rrs []dns.RR) []netip.Addr {
	for _, rr := range rrs {
		switch v := rr.(type) {
		case *dns.A:
			if ip, ok := netip.AddrFromSlice(v.A.To4()); ok {
				addrs = append(addrs, ip)
			}
		case *dns.AAAA:
			if ip, ok := netip.AddrFromSlice(v.AAAA); ok {
				addrs = append(addrs, ip)
			}
		}
	}
	return addrs
}
