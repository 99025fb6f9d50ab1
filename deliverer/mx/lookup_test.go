package mx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/services/dnstest"
)

// TestLookupFailures: every way a question can fail is a *LookupError
// that names it, asked through the same exchange as Route and Addrs.
func TestLookupFailures(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t, `nodata.test. 300 IN TXT "x"`, "ok.test. 300 IN A 192.0.2.1")
	d.ServFail("broken.test", true)
	d.Drop("slow.test", true)
	r := newResolver(t, d, nil)
	ctx := context.Background()

	rrs, err := r.Lookup(ctx, "ok.test", dns.TypeA)
	if err != nil || len(rrs) != 1 || rrs[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("ok.test: %v %v", rrs, err)
	}
	if rrs, err := r.Lookup(ctx, "nodata.test", dns.TypeMX); err != nil || len(rrs) != 0 {
		t.Fatalf("NODATA: %v %v", rrs, err)
	}
	tests := []struct {
		name    string
		failure Failure
		rcode   int
		text    string
	}{
		{"missing.test", FailNXDomain, dns.RcodeNameError, "DNS MX lookup of missing.test: no such domain (NXDOMAIN)"},
		{"broken.test", FailServer, dns.RcodeServerFailure, "DNS MX lookup of broken.test: SERVFAIL"},
		{"slow.test", FailTimeout, 0, "DNS MX lookup of slow.test: no answer within 500ms"},
	}
	for _, tc := range tests {
		start := time.Now()
		_, err := r.Lookup(ctx, tc.name, dns.TypeMX)
		var le *LookupError
		if !errors.As(err, &le) {
			t.Errorf("%s: %v is not a *LookupError", tc.name, err)
			continue
		}
		if le.Failure != tc.failure || le.Rcode != tc.rcode || le.Name != tc.name || le.Server != d.Addr || err.Error() != tc.text {
			t.Errorf("%s: %+v %q", tc.name, le, err.Error())
		}
		de := le.DNSError()
		if de.IsNotFound != (tc.failure == FailNXDomain) || de.IsTimeout != (tc.failure == FailTimeout) || de.Temporary() == (tc.failure == FailNXDomain) {
			t.Errorf("%s: net.DNSError %+v", tc.name, de)
		}
		if tc.failure == FailTimeout && time.Since(start) < dnstest.Timeout {
			t.Errorf("timeout before %s", dnstest.Timeout)
		}
	}

	// A server that is not there: the network error, not a timeout.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := pc.LocalAddr().String()
	pc.Close()
	r2, err := New(Config{Server: gone, Timeout: dnstest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r2.Lookup(ctx, "ok.test", dns.TypeA)
	var le *LookupError
	if !errors.As(err, &le) || le.Failure != FailNetwork || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: %#v", err)
	}
}

// TestLookupHost: addresses as Addrs finds them, and the reason when there
// are none.
func TestLookupHost(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"both.test. 300 IN AAAA 2001:db8::1",
		"both.test. 300 IN A 192.0.2.1",
		`nodata.test. 300 IN TXT "x"`,
	)
	d.ServFail("broken.test", true)
	r := newResolver(t, d, nil)
	ctx := context.Background()
	as, err := r.LookupHost(ctx, "Both.Test.")
	if err != nil || len(as) != 2 || as[0] != netip.MustParseAddr("192.0.2.1") || as[1] != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("both.test: %v %v", as, err)
	}
	if as, err := r.LookupHost(ctx, "nodata.test"); err != nil || len(as) != 0 {
		t.Errorf("nodata.test: %v %v", as, err)
	}
	before := d.Queries()
	_, err = r.LookupHost(ctx, "missing.test")
	var le *LookupError
	if !errors.As(err, &le) || le.Failure != FailNXDomain || le.Type != dns.TypeA {
		t.Errorf("missing.test: %v", err)
	}
	if q := d.Queries() - before; q != 1 {
		t.Errorf("%d queries for a name that does not exist, want 1 (no AAAA)", q)
	}
	if _, err := r.LookupHost(ctx, "broken.test"); !errors.As(err, &le) || le.Failure != FailServer || le.Type != dns.TypeA {
		t.Errorf("broken.test: %v", err)
	}
	if as, err := r.LookupHost(ctx, "192.0.2.9"); err != nil || as[0] != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("literal: %v %v", as, err)
	}
}

// TestLookupSecure: the DNSSEC status of an answer is the AD bit of every
// answer on its CNAME chain (RFC 7672 §2.2.2); a denial is an answer, with
// its own status; a loop and an overlong chain end with a *CNAMEError.
func TestLookupSecure(t *testing.T) {
	d := dnstest.Start(t)
	d.MustAdd(t,
		"direct.test. 300 IN TXT \"v=1\"",
		"alias.test. 300 IN CNAME mid.test.",
		"mid.test. 300 IN CNAME real.test.",
		"real.test. 300 IN TXT \"real\"",
		"loop-a.test. 300 IN CNAME loop-b.test.",
		"loop-b.test. 300 IN CNAME loop-a.test.",
		"dangling.test. 300 IN CNAME gone.test.",
	)
	for _, n := range []string{"direct.test", "alias.test", "mid.test", "real.test", "missing.test", "dangling.test", "gone.test"} {
		d.Secure(n, true)
	}
	for i := range MaxCNAMEs + 1 {
		d.MustAdd(t, fmt.Sprintf("c%d.test. 300 IN CNAME c%d.test.", i, i+1))
	}
	d.MustAdd(t, fmt.Sprintf(`c%d.test. 300 IN TXT "end"`, MaxCNAMEs+1))
	// The table changes the status of answers between lookups: no cache.
	r, err := New(Config{Server: d.Addr, Timeout: dnstest.Timeout, NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	txt := func(s Secure) string {
		var out []string
		for _, rr := range s.Records {
			out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		name                string
		insecure            string // a name of the chain whose answer lacks AD
		records, target     string
		nxdomain, validated bool
	}{
		{"direct.test", "", "v=1", "direct.test", false, true},
		{"alias.test", "", "real", "real.test", false, true},
		{"alias.test", "mid.test", "real", "real.test", false, false},
		{"alias.test", "real.test", "real", "real.test", false, false},
		{"missing.test", "", "", "missing.test", true, true},
		{"dangling.test", "", "", "gone.test", true, true},
		{"dangling.test", "gone.test", "", "gone.test", true, false},
		{"real.test", "", "real", "real.test", false, true},
	} {
		if tc.insecure != "" {
			d.Secure(tc.insecure, false)
		}
		s, err := r.LookupSecure(ctx, tc.name, dns.TypeTXT)
		if tc.insecure != "" {
			d.Secure(tc.insecure, true)
		}
		if err != nil || txt(s) != tc.records || s.Target != tc.target || s.NXDomain != tc.nxdomain || s.Authenticated != tc.validated {
			t.Errorf("%s (insecure %q): %+v %v, want records %q target %s nxdomain %v authenticated %v",
				tc.name, tc.insecure, s, err, tc.records, tc.target, tc.nxdomain, tc.validated)
		}
	}

	// Asked without DNSSEC, the same names give the records, and an answer
	// cached without DNSSEC status is not taken for one with it.
	cached := newResolver(t, d, nil)
	if rrs, err := cached.Lookup(ctx, "alias.test", dns.TypeTXT); err != nil || len(rrs) != 1 || rrs[0].(*dns.TXT).Txt[0] != "real" {
		t.Errorf("Lookup through two CNAMEs: %v %v", rrs, err)
	}
	if s, err := cached.LookupSecure(ctx, "alias.test", dns.TypeTXT); err != nil || !s.Authenticated || txt(s) != "real" {
		t.Errorf("LookupSecure after Lookup: %+v %v", s, err)
	}

	for _, tc := range []struct {
		name, text string
		loop       bool
		chain      int
	}{
		{"loop-a.test", "DNS TXT lookup of loop-a.test: CNAME loop: loop-a.test -> loop-b.test -> loop-a.test", true, 3},
		{"c0.test", "DNS TXT lookup of c0.test: CNAME chain longer than 8 aliases: c0.test -> c1.test -> c2.test -> c3.test -> c4.test -> c5.test -> c6.test -> c7.test -> c8.test -> c9.test", false, MaxCNAMEs + 2},
	} {
		for _, secure := range []bool{true, false} {
			var err error
			if secure {
				_, err = r.LookupSecure(ctx, tc.name, dns.TypeTXT)
			} else {
				_, err = r.Lookup(ctx, tc.name, dns.TypeTXT)
			}
			var le *LookupError
			var ce *CNAMEError
			if !errors.As(err, &le) || le.Failure != FailNetwork || !errors.As(err, &ce) || ce.Loop != tc.loop || len(ce.Chain) != tc.chain || err.Error() != tc.text {
				t.Errorf("%s (secure %v): %v", tc.name, secure, err)
			}
		}
	}
	// Eight aliases are followed.
	if s, err := r.LookupSecure(ctx, "c1.test", dns.TypeTXT); err != nil || txt(s) != "end" || s.Target != "c9.test" || s.Authenticated {
		t.Errorf("eight aliases: %+v %v", s, err)
	}

	if s, err := r.LookupSecure(ctx, "direct.test", dns.TypeMX); err != nil || len(s.Records) != 0 || s.NXDomain || !s.Authenticated {
		t.Errorf("secure NODATA: %+v %v", s, err)
	}
	d.ServFail("mid.test", true)
	_, err = r.LookupSecure(ctx, "alias.test", dns.TypeTXT)
	var le *LookupError
	if !errors.As(err, &le) || le.Failure != FailServer || le.Name != "alias.test" || err.Error() != "DNS TXT lookup of alias.test: SERVFAIL" {
		t.Errorf("SERVFAIL in the chain: %v", err)
	}
	// Without a cache, every lookup asks.
	before := d.Queries()
	for range 2 {
		if s, err := r.LookupSecure(ctx, "direct.test", dns.TypeTXT); err != nil || txt(s) != "v=1" || !s.Authenticated {
			t.Errorf("no cache: %+v %v", s, err)
		}
	}
	if q := d.Queries() - before; q != 2 {
		t.Errorf("%d queries for two lookups without a cache, want 2", q)
	}
}
