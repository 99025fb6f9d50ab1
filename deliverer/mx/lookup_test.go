package mx

import (
	"context"
	"errors"
	"net"
	"net/netip"
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
