package mx

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/dnstest"
)

func newResolver(t *testing.T, d *dnstest.Server, shuffle func(int, func(i, j int))) *Resolver {
	t.Helper()
	r, err := New(Config{Server: d.Addr, Timeout: dnstest.Timeout, Port: 2525, Shuffle: shuffle,
		Routes: map[string]string{"Routed.Test": "192.0.2.7:2626", "named.test": "relay.test:587"}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func reverse(n int, swap func(i, j int)) {
	for i := 0; i < n/2; i++ {
		swap(i, n-1-i)
	}
}

func names(r Route) []string {
	var s []string
	for _, h := range r.Hosts {
		s = append(s, h.Name)
	}
	return s
}

func TestRouteOrder(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"example.test. 300 IN MX 20 c.example.test.",
		"example.test. 300 IN MX 10 a.example.test.",
		"example.test. 300 IN MX 10 b.example.test.",
		"example.test. 300 IN MX 30 d.example.test.",
	)
	ctx := context.Background()
	// The shuffle only touches the hosts of equal preference.
	var runs []int
	r := newResolver(t, d, func(n int, swap func(i, j int)) { runs = append(runs, n); reverse(n, swap) })
	got, err := r.Route(ctx, "Example.TEST.")
	if err != nil {
		t.Fatal(err)
	}
	if want := "b.example.test a.example.test c.example.test d.example.test"; join(names(got)) != want {
		t.Errorf("order %v, want %s", names(got), want)
	}
	if len(runs) != 1 || runs[0] != 2 {
		t.Errorf("shuffled runs %v, want one run of 2", runs)
	}
	if got.Hosts[0].Port != 2525 || got.Static || got.Implicit {
		t.Errorf("route %+v", got)
	}
	// Identity shuffle keeps the answer's order among equals.
	r2 := newResolver(t, d, func(int, func(i, j int)) {})
	got, _ = r2.Route(ctx, "example.test")
	if want := "a.example.test b.example.test c.example.test d.example.test"; join(names(got)) != want {
		t.Errorf("order %v, want %s", names(got), want)
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

func TestRouteFailures(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"null.test. 300 IN MX 0 .",
		"nodata.test. 300 IN TXT \"v=spf1 -all\"",
		"implicit.test. 300 IN AAAA 2001:db8::25",
		"implicit.test. 300 IN A 192.0.2.25",
	)
	d.ServFail("broken.test", true)
	d.Drop("slow.test", true)
	r := newResolver(t, d, nil)
	ctx := context.Background()
	tests := []struct {
		domain    string
		permanent bool
		code      int
		enhanced  string
		reason    sluicev1.Reason
	}{
		{"null.test", true, 556, "5.1.10", sluicev1.Reason_REASON_NULL_MX},
		{"missing.test", true, 550, "5.1.2", sluicev1.Reason_REASON_NO_DOMAIN},
		{"nodata.test", true, 550, "5.1.2", sluicev1.Reason_REASON_NO_DOMAIN},
		{"broken.test", false, 451, "4.4.3", sluicev1.Reason_REASON_DNS},
		{"slow.test", false, 451, "4.4.3", sluicev1.Reason_REASON_DNS},
	}
	for _, tc := range tests {
		start := time.Now()
		_, err := r.Route(ctx, tc.domain)
		var se *status.Error
		if !errors.As(err, &se) {
			t.Errorf("%s: %v is not a *status.Error", tc.domain, err)
			continue
		}
		if se.Permanent != tc.permanent || se.Code != tc.code || se.Enhanced != tc.enhanced || se.Reason != tc.reason {
			t.Errorf("%s: %+v", tc.domain, se)
		}
		if tc.domain == "slow.test" && time.Since(start) < dnstest.Timeout {
			t.Errorf("dropped query failed before the timeout")
		}
	}
	got, err := r.Route(ctx, "implicit.test")
	if err != nil {
		t.Fatal(err)
	}
	// Implicit MX (RFC 5321 §5.1), IPv4 before IPv6.
	if !got.Implicit || len(got.Hosts) != 1 || got.Hosts[0].Name != "implicit.test" ||
		len(got.Hosts[0].Addrs) != 2 || got.Hosts[0].Addrs[0] != netip.MustParseAddr("192.0.2.25") || got.Hosts[0].Addrs[1] != netip.MustParseAddr("2001:db8::25") {
		t.Errorf("implicit route %+v", got)
	}
}

func TestStaticRoutesAndLiterals(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t, "routed.test. 300 IN MX 10 mx.elsewhere.test.")
	r := newResolver(t, d, nil)
	ctx := context.Background()
	got, err := r.Route(ctx, "ROUTED.test")
	if err != nil || !got.Static || len(got.Hosts) != 1 || got.Hosts[0].Port != 2626 || got.Hosts[0].Addrs[0] != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("static route %+v %v", got, err)
	}
	if d.Queries() != 0 {
		t.Errorf("a static route asked DNS %d times", d.Queries())
	}
	got, err = r.Route(ctx, "named.test")
	if err != nil || got.Hosts[0].Name != "relay.test" || got.Hosts[0].Port != 587 || got.Hosts[0].Addrs != nil {
		t.Errorf("named route %+v %v", got, err)
	}
	got, err = r.Route(ctx, "[192.0.2.9]")
	if err != nil || got.Hosts[0].Addrs[0] != netip.MustParseAddr("192.0.2.9") || got.Hosts[0].Port != 2525 {
		t.Errorf("address literal %+v %v", got, err)
	}
	got, err = r.Route(ctx, "[IPv6:2001:db8::1]")
	if err != nil || got.Hosts[0].Addrs[0] != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("IPv6 literal %+v %v", got, err)
	}
}

func TestCacheAndCNAME(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"cached.test. 300 IN MX 10 mx.cached.test.",
		"short.test. 0 IN MX 10 mx.cached.test.",
		"mx.cached.test. 300 IN CNAME real.cached.test.",
		"real.cached.test. 300 IN A 192.0.2.30",
	)
	r := newResolver(t, d, nil)
	ctx := context.Background()
	for range 3 {
		if _, err := r.Route(ctx, "cached.test"); err != nil {
			t.Fatal(err)
		}
	}
	if q := d.Queries(); q != 1 {
		t.Errorf("%d queries for three lookups within the TTL, want 1", q)
	}
	for range 2 {
		if _, err := r.Route(ctx, "short.test"); err != nil {
			t.Fatal(err)
		}
	}
	if q := d.Queries(); q != 3 {
		t.Errorf("%d queries, want 3: a TTL of 0 must not be cached", q)
	}
	// After the TTL the answer is asked again.
	r.now = func() time.Time { return time.Now().Add(301 * time.Second) }
	if _, err := r.Route(ctx, "cached.test"); err != nil {
		t.Fatal(err)
	}
	if q := d.Queries(); q != 4 {
		t.Errorf("%d queries, want 4 after expiry", q)
	}
	addrs, err := r.Addrs(ctx, "mx.cached.test")
	if err != nil || len(addrs) != 1 || addrs[0] != netip.MustParseAddr("192.0.2.30") {
		t.Errorf("CNAME-followed addresses %v %v", addrs, err)
	}
}

// TestSite checks the MX rollup: domains served by the same MX hosts are
// one site whatever the order or preference of their records; a domain
// without MX is its own site; a static route is its host and port.
func TestSite(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"gmail.test. 300 IN MX 5 gmail-smtp-in.l.google.test.",
		"gmail.test. 300 IN MX 10 alt1.gmail-smtp-in.l.google.test.",
		"googlemail.test. 300 IN MX 40 ALT1.gmail-smtp-in.l.google.test.",
		"googlemail.test. 300 IN MX 5 gmail-smtp-in.l.google.test.",
		"other.test. 300 IN MX 5 gmail-smtp-in.l.google.test.",
		"bare.test. 300 IN A 192.0.2.40",
	)
	r := newResolver(t, d, nil)
	ctx := context.Background()
	site := func(domain string) string {
		t.Helper()
		got, err := r.Route(ctx, domain)
		if err != nil {
			t.Fatalf("%s: %v", domain, err)
		}
		return got.Site
	}
	want := "alt1.gmail-smtp-in.l.google.test,gmail-smtp-in.l.google.test"
	if g := site("gmail.test"); g != want {
		t.Errorf("gmail.test site %q, want %q", g, want)
	}
	if g := site("googlemail.test"); g != want {
		t.Errorf("googlemail.test site %q, want the same site as gmail.test %q", g, want)
	}
	if g := site("other.test"); g != "gmail-smtp-in.l.google.test" {
		t.Errorf("other.test site %q: a different MX set is a different site", g)
	}
	if g := site("bare.test"); g != "bare.test" {
		t.Errorf("domain without MX: site %q, want its own name", g)
	}
	if g := site("routed.test"); g != "192.0.2.7:2626" {
		t.Errorf("static route site %q, want 192.0.2.7:2626", g)
	}
	if g := site("[192.0.2.9]"); g != "[192.0.2.9]" {
		t.Errorf("address literal site %q", g)
	}
}
