package dnstest

import (
	"testing"

	"github.com/miekg/dns"
)

func TestServesAndFails(t *testing.T) {
	s := Start(t)
	s.MustAdd(t, "example.test. 60 IN MX 10 mx.example.test.", "mx.example.test. 60 IN A 127.0.0.1")
	c := &dns.Client{Timeout: Timeout}
	ask := func(name string, qt uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		r, _, err := c.Exchange(m, s.Addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	r := ask("example.test.", dns.TypeMX)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.MX).Mx != "mx.example.test." {
		t.Fatalf("MX answer = %v", r.Answer)
	}
	if r := ask("nope.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name rcode = %d", r.Rcode)
	}
	s.ServFail("example.test", true)
	if r := ask("example.test.", dns.TypeMX); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("servfail rcode = %d", r.Rcode)
	}
	s.Drop("mx.example.test", true)
	m := new(dns.Msg)
	m.SetQuestion("mx.example.test.", dns.TypeA)
	if _, _, err := c.Exchange(m, s.Addr); err == nil {
		t.Fatal("dropped query was answered")
	}
}

func TestSecure(t *testing.T) {
	s := Start(t)
	s.MustAdd(t, "_25._tcp.mx.example.test. 60 IN TLSA 3 1 1 "+"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	s.Secure("_25._tcp.mx.example.test", true)
	c := &dns.Client{Timeout: Timeout}
	ask := func(name string, ad, do bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeTLSA)
		m.AuthenticatedData = ad
		if do {
			m.SetEdns0(1232, true)
		}
		r, _, err := c.Exchange(m, s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := ask("_25._tcp.mx.example.test.", true, true); !r.AuthenticatedData || len(r.Answer) != 1 {
		t.Fatalf("secure name: AD %v, %d answers", r.AuthenticatedData, len(r.Answer))
	}
	if r := ask("_25._tcp.mx.example.test.", false, false); r.AuthenticatedData {
		t.Fatal("AD set for a query that asked for neither AD nor DO")
	}
	if r := ask("_25._tcp.other.example.test.", true, true); r.AuthenticatedData || r.Rcode != dns.RcodeNameError {
		t.Fatalf("unsigned name: AD %v rcode %d", r.AuthenticatedData, r.Rcode)
	}
	s.Secure("_25._tcp.other.example.test", true)
	if r := ask("_25._tcp.other.example.test.", true, true); !r.AuthenticatedData || r.Rcode != dns.RcodeNameError {
		t.Fatalf("secure denial: AD %v rcode %d", r.AuthenticatedData, r.Rcode)
	}
}
