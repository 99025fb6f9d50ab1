package tlspolicy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// daneWorld is example.test, whose MX mx.example.test is asked for under
// mode dane, its MX answer authenticated; each test adds the TLSA records
// and CNAMEs it is about.
type daneWorld struct {
	dns  *dnstest.Server
	cert tls.Certificate
	e    *Engine
}

func newDANEWorld(t *testing.T) *daneWorld {
	t.Helper()
	w := &daneWorld{dns: dnstest.Start(t), cert: tlstest.SelfSigned(t, "mx.example.test")}
	w.dns.MustAdd(t, "example.test. 60 IN MX 10 mx.example.test.")
	w.dns.Secure("example.test", true)
	cfg := DefaultConfig()
	cfg.Default = ModeDANE
	cfg.Recheck = 0
	e, err := New(cfg, Options{DNSServer: w.dns.Addr, DNSTimeout: dnstest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	w.e = e
	return w
}

// ee is the DANE-EE(3) SPKI(1) SHA-256(1) record data of the certificate.
func (w *daneWorld) ee() string {
	h := sha256.Sum256(w.cert.Leaf.RawSubjectPublicKeyInfo)
	return "3 1 1 " + hex.EncodeToString(h[:])
}

// secure marks the answers of names as authenticated.
func (w *daneWorld) secure(names ...string) {
	for _, n := range names {
		w.dns.Secure(n, true)
	}
}

func (w *daneWorld) host(t *testing.T) *Requirement {
	t.Helper()
	ctx := context.Background()
	return w.e.Decide(ctx, "example.test", false).Host(ctx, "mx.example.test", 25)
}

// check runs the requirement's certificate check on the chain of cert, as
// a server would send it.
func check(t *testing.T, r *Requirement, cert tls.Certificate) (string, error) {
	t.Helper()
	var chain []*x509.Certificate
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return r.Check(tls.ConnectionState{PeerCertificates: chain})
}

// TestDANEThroughCNAME: TLSA records reached through a CNAME, at the TLSA
// name itself (a provider's shared records) or at the expanded name of an
// MX host that is an alias (RFC 7672 §2.2.3), are found and applied when
// every answer on the way is authenticated.
func TestDANEThroughCNAME(t *testing.T) {
	t.Run("TLSA name is an alias", func(t *testing.T) {
		w := newDANEWorld(t)
		w.dns.MustAdd(t,
			"_25._tcp.mx.example.test. 60 IN CNAME _dane.provider.test.",
			"_dane.provider.test. 60 IN TLSA "+w.ee())
		w.secure("_25._tcp.mx.example.test", "_dane.provider.test")
		r := w.host(t)
		if r.Policy != "dane" || !r.Required || r.Refused != "" || len(r.PolicyString) != 1 || !strings.HasPrefix(r.PolicyString[0], "3 1 1 ") {
			t.Fatalf("requirement %+v", r)
		}
		if by, err := check(t, r, w.cert); by != "dane-ee" || err != nil {
			t.Errorf("the pinned certificate: %q %v", by, err)
		}
		var f *Failure
		if by, err := check(t, r, tlstest.SelfSigned(t, "mx.example.test")); by != "" || !errors.As(err, &f) ||
			f.Text != "dane: TLSA mismatch for mx.example.test (no DANE-EE record matches the server's certificate)" {
			t.Errorf("another certificate: %q %v", by, err)
		}
		name, recs, st := w.e.TLSA(context.Background(), "mx.example.test", 25)
		if name != "_25._tcp.mx.example.test (CNAME to _dane.provider.test)" || len(recs) != 1 || st != "secure" {
			t.Errorf("TLSA = %q %v %q", name, recs, st)
		}
	})
	t.Run("MX host is an alias", func(t *testing.T) {
		w := newDANEWorld(t)
		w.dns.MustAdd(t,
			"mx.example.test. 60 IN CNAME smtp.provider.test.",
			"smtp.provider.test. 60 IN A 192.0.2.25",
			"_25._tcp.smtp.provider.test. 60 IN TLSA "+w.ee())
		w.secure("mx.example.test", "smtp.provider.test", "_25._tcp.smtp.provider.test", "_25._tcp.mx.example.test")
		r := w.host(t)
		if r.Policy != "dane" || r.Refused != "" || len(r.PolicyString) != 1 {
			t.Fatalf("requirement %+v", r)
		}
		if by, err := check(t, r, w.cert); by != "dane-ee" || err != nil {
			t.Errorf("the pinned certificate: %q %v", by, err)
		}
		name, recs, st := w.e.TLSA(context.Background(), "mx.example.test", 25)
		if name != "_25._tcp.smtp.provider.test" || len(recs) != 1 || st != "secure" {
			t.Errorf("TLSA = %q %v %q", name, recs, st)
		}

		// DANE-TA checks the name: the expanded name is a reference
		// identifier besides the MX host name (RFC 7672 §3.2.2).
		ca := tlstest.NewCA(t, "Provider CA")
		h := sha256.Sum256(ca.Cert.Raw)
		w.dns.Remove("_25._tcp.smtp.provider.test")
		w.dns.MustAdd(t, "_25._tcp.smtp.provider.test. 60 IN TLSA 2 0 1 "+hex.EncodeToString(h[:]))
		r = w.host(t)
		for _, tc := range []struct {
			names []string
			by    string
		}{
			{[]string{"smtp.provider.test"}, "dane-ta"},
			{[]string{"mx.example.test"}, "dane-ta"},
			{[]string{"other.provider.test"}, ""},
		} {
			by, err := check(t, r, ca.Valid(t, tc.names...))
			if by != tc.by || (err == nil) != (tc.by != "") {
				t.Errorf("DANE-TA for %v: %q %v, want %q", tc.names, by, err, tc.by)
			}
		}

		// An alias reached without the AD bit does not name the server:
		// only the MX host's own TLSA name is asked, which has none.
		w.dns.Secure("mx.example.test", false)
		r = w.host(t)
		if r.Policy != "may" || r.Required || !strings.HasPrefix(r.Note, "dane: no TLSA records at _25._tcp.mx.example.test; ") {
			t.Errorf("insecure alias: %+v", r)
		}
	})
}

// TestDANEInsecureChain: a CNAME chain to TLSA records with one link
// without the AD bit is not validated, however the other links are
// authenticated: DANE does not apply (the documented insecure case, RFC
// 7672 §2.2.2), and the host gets the domain's MTA-STS policy or may.
func TestDANEInsecureChain(t *testing.T) {
	for _, insecure := range []string{"_25._tcp.mx.example.test", "hop.provider.test", "_dane.provider.test"} {
		t.Run(insecure, func(t *testing.T) {
			w := newDANEWorld(t)
			w.dns.MustAdd(t,
				"_25._tcp.mx.example.test. 60 IN CNAME hop.provider.test.",
				"hop.provider.test. 60 IN CNAME _dane.provider.test.",
				"_dane.provider.test. 60 IN TLSA "+w.ee())
			w.secure("_25._tcp.mx.example.test", "hop.provider.test", "_dane.provider.test")
			w.dns.Secure(insecure, false)
			r := w.host(t)
			want := "dane: TLSA records at _25._tcp.mx.example.test (CNAME to _dane.provider.test) are not DNSSEC-validated (no AD bit), ignored; " +
				"mta-sts: no _mta-sts.example.test record"
			if r.Policy != "may" || r.Required || r.Refused != "" || r.Verifies() || r.Note != want {
				t.Errorf("requirement %+v, want may with note %q", r, want)
			}
			name, recs, st := w.e.TLSA(context.Background(), "mx.example.test", 25)
			if name != "_25._tcp.mx.example.test (CNAME to _dane.provider.test)" || len(recs) != 1 || st != "insecure" {
				t.Errorf("TLSA = %q %v %q", name, recs, st)
			}
		})
	}
}

// TestDANECNAMELoop: a TLSA lookup that ends in a CNAME loop fails, other
// than by a denial, so the host is not used (RFC 7672 §2.2), and the
// reason names the loop.
func TestDANECNAMELoop(t *testing.T) {
	w := newDANEWorld(t)
	w.dns.MustAdd(t,
		"_25._tcp.mx.example.test. 60 IN CNAME loop.provider.test.",
		"loop.provider.test. 60 IN CNAME _25._tcp.mx.example.test.")
	w.secure("_25._tcp.mx.example.test", "loop.provider.test")
	r := w.host(t)
	want := "dane: TLSA lookup of _25._tcp.mx.example.test failed: CNAME loop: _25._tcp.mx.example.test -> loop.provider.test -> _25._tcp.mx.example.test"
	if r.Policy != "dane" || r.Refused != want || r.RefusedType() != "dnssec-invalid" {
		t.Errorf("requirement %+v, want refused %q", r, want)
	}
	name, recs, st := w.e.TLSA(context.Background(), "mx.example.test", 25)
	if name != "_25._tcp.mx.example.test" || recs != nil || st != strings.TrimPrefix(want, "dane: ") {
		t.Errorf("TLSA = %q %v %q", name, recs, st)
	}
}

// TestDNSFailures: the validating resolver's failures keep their words: a
// SERVFAIL on the MX answer refuses DANE hosts, a timeout on the TLSA
// answer too, and a name that does not exist is a denial, not a failure.
func TestDNSFailures(t *testing.T) {
	w := newDANEWorld(t)
	w.dns.ServFail("example.test", true)
	r := w.host(t)
	if want := "dane: MX lookup of example.test failed: SERVFAIL on the validating resolver"; r.Refused != want {
		t.Errorf("MX SERVFAIL: %+v, want %q", r, want)
	}
	w.dns.ServFail("example.test", false)
	w.dns.Drop("_25._tcp.mx.example.test", true)
	r = w.host(t)
	if want := "dane: TLSA lookup of _25._tcp.mx.example.test failed: no answer within 500ms"; r.Refused != want {
		t.Errorf("TLSA timeout: %+v, want %q", r, want)
	}
	w.dns.Drop("_25._tcp.mx.example.test", false)
	w.secure("_25._tcp.mx.example.test")
	r = w.host(t)
	if r.Policy != "may" || r.Refused != "" || !strings.HasPrefix(r.Note, "dane: no TLSA records at _25._tcp.mx.example.test; ") {
		t.Errorf("NXDOMAIN for the TLSA name: %+v", r)
	}
	if got := w.e.MXDNSSEC(context.Background(), "example.test"); got != "secure" {
		t.Errorf("MXDNSSEC = %q", got)
	}
	if got := w.e.DNSSECServer(); got != w.dns.Addr {
		t.Errorf("DNSSECServer = %q, want %q", got, w.dns.Addr)
	}
}
