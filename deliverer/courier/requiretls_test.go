package courier

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestRequireTLS delivers a REQUIRETLS job (RFC 8689) to a real SMTP
// server under several policy modes: it is delivered only over TLS with a
// certificate verified by webpki against the MX name or by DANE, to a
// server that offers REQUIRETLS, and sends MAIL FROM with REQUIRETLS;
// otherwise it fails for good with 550 5.7.30 and the cause, and the
// server receives nothing.
func TestRequireTLS(t *testing.T) {
	type certKind int
	const (
		noTLS certKind = iota
		valid
		expired
		wrongName
		selfSigned
	)
	pinEE := func(t *testing.T, w *tlsWorld, cert tls.Certificate, port int) {
		name := fmt.Sprintf("_%d._tcp.mx.example.test.", port)
		w.dns.MustAdd(t, name+" 60 IN TLSA "+tlsaEE(cert))
		w.dns.Secure("example.test", true)
		w.dns.Secure(name, true)
	}
	pinOther := func(t *testing.T, w *tlsWorld, _ tls.Certificate, port int) {
		pinEE(t, w, tlstest.SelfSigned(t, "mx.example.test"), port)
	}
	stsTesting := func(t *testing.T, w *tlsWorld, _ tls.Certificate, _ int) {
		w.publishSTS(t, "v1", "testing", "mx.example.test")
	}
	// The MX answer is DNSSEC-validated unless a case's dns says otherwise
	// (RFC 8689 §4.2.1 step 1).
	secureMX := func(t *testing.T, w *tlsWorld, _ tls.Certificate, _ int) { w.dns.Secure("example.test", true) }
	insecureMX := func(*testing.T, *tlsWorld, tls.Certificate, int) {}
	stsEnforce := func(t *testing.T, w *tlsWorld, _ tls.Certificate, _ int) {
		w.publishSTS(t, "v1", "enforce", "*.example.test")
	}
	stsOther := func(t *testing.T, w *tlsWorld, _ tls.Certificate, _ int) {
		w.publishSTS(t, "v1", "testing", "mx.elsewhere.test")
	}
	const insecure = "REQUIRETLS support required: the MX records of example.test are not DNSSEC-validated and no MTA-STS policy lists mx.example.test"
	const delivered = "delivered"
	for _, tc := range []struct {
		name       string
		mode       tlspolicy.Mode
		cert       certKind
		requireTLS bool // the server offers REQUIRETLS
		dns        func(t *testing.T, w *tlsWorld, cert tls.Certificate, port int)
		want       string // delivered, or the failure's text
		verifiedBy string
	}{
		{"may/valid", tlspolicy.ModeMay, valid, true, nil, delivered, "webpki"},
		// REQUIRETLS overrides a policy that would send in clear text.
		{"none/valid", tlspolicy.ModeNone, valid, true, nil, delivered, "webpki"},
		{"verify/valid", tlspolicy.ModeVerify, valid, true, nil, delivered, "webpki"},
		{"dane/EE match", tlspolicy.ModeDANE, selfSigned, true, pinEE, delivered, "dane-ee"},
		{"may/self-signed", tlspolicy.ModeMay, selfSigned, true, nil, "REQUIRETLS support required: mx.example.test self-signed certificate", ""},
		{"encrypt/self-signed", tlspolicy.ModeEncrypt, selfSigned, true, nil, "REQUIRETLS support required: mx.example.test self-signed certificate", ""},
		{"may/expired", tlspolicy.ModeMay, expired, true, nil, "REQUIRETLS support required: mx.example.test certificate expired", ""},
		{"may/wrong name", tlspolicy.ModeMay, wrongName, true, nil,
			"REQUIRETLS support required: mx.example.test certificate name mismatch (the certificate is for www.example.test)", ""},
		// An MTA-STS testing policy reports and delivers; REQUIRETLS
		// enforces it.
		{"mta-sts testing/expired", tlspolicy.ModeMTASTS, expired, true, stsTesting, "REQUIRETLS support required: mx.example.test certificate expired", ""},
		{"dane/EE mismatch", tlspolicy.ModeDANE, selfSigned, true, pinOther,
			"REQUIRETLS support required: TLSA mismatch for mx.example.test (no DANE-EE record matches the server's certificate)", ""},
		{"may/no REQUIRETLS", tlspolicy.ModeMay, valid, false, nil, "REQUIRETLS support required: mx.example.test does not offer REQUIRETLS", ""},
		{"may/clear text", tlspolicy.ModeMay, noTLS, false, nil, "REQUIRETLS support required: mx.example.test does not offer STARTTLS", ""},
		{"none/clear text", tlspolicy.ModeNone, noTLS, false, nil, "REQUIRETLS support required: mx.example.test does not offer STARTTLS", ""},
		// Without a validated MX answer, only an MTA-STS policy that lists
		// the MX host makes it trustworthy.
		{"may/insecure MX", tlspolicy.ModeMay, valid, true, insecureMX, insecure, ""},
		{"verify/insecure MX", tlspolicy.ModeVerify, valid, true, insecureMX, insecure, ""},
		{"mta-sts enforce/insecure MX", tlspolicy.ModeMTASTS, valid, true, stsEnforce, delivered, "webpki"},
		{"mta-sts testing/insecure MX", tlspolicy.ModeMTASTS, valid, true, stsTesting, delivered, "webpki"},
		{"mta-sts testing, host not listed/insecure MX", tlspolicy.ModeMTASTS, valid, true, stsOther, insecure, ""},
		{"mta-sts without policy/insecure MX", tlspolicy.ModeMTASTS, valid, true, insecureMX, insecure, ""},
		{"mta-sts without policy/secure MX", tlspolicy.ModeMTASTS, valid, true, secureMX, delivered, "webpki"},
		// Under may, a policy the domain publishes still vouches for the host.
		{"may with an MTA-STS policy/insecure MX", tlspolicy.ModeMay, valid, true, stsEnforce, delivered, "webpki"},
		{"may with another MTA-STS policy/insecure MX", tlspolicy.ModeMay, valid, true, stsOther, insecure, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newTLSWorld(t)
			o := capture.Options{Domain: "mx.example.test", RequireTLS: tc.requireTLS}
			var cert tls.Certificate
			switch tc.cert {
			case valid:
				cert = w.ca.Valid(t, "mx.example.test")
			case expired:
				cert = w.ca.Expired(t, "mx.example.test")
			case wrongName:
				cert = w.ca.Valid(t, "www.example.test")
			case selfSigned:
				cert = tlstest.SelfSigned(t, "mx.example.test")
			}
			if tc.cert != noTLS {
				o.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			}
			srv, err := capture.Listen("127.0.0.1:0", o)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			if tc.dns == nil {
				tc.dns = secureMX
			}
			tc.dns(t, w, cert, port(t, srv.Addr))
			c := w.courier(t, srv, policy(tc.mode), tracetest.NewSpanRecorder())
			job := tlsJob()
			job.RequireTls = true
			res := c.Deliver(context.Background(), job, strings.NewReader(message))[0]
			if tc.want == delivered {
				if res.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
					t.Fatalf("outcome %v %d %s %q, want delivered", res.Outcome, res.Code, res.EnhancedCode, res.Text)
				}
				if res.Tls.GetVerifiedBy() != tc.verifiedBy || res.Tls.GetVersion() != "1.3" {
					t.Errorf("result TLS %v, want TLS 1.3 verified by %s", res.Tls, tc.verifiedBy)
				}
				msgs := srv.Messages()
				if len(msgs) != 1 || !msgs[0].TLS || !msgs[0].RequireTLS {
					t.Fatalf("server got %d messages (%+v), want 1 over TLS with MAIL FROM REQUIRETLS", len(msgs), msgs)
				}
				return
			}
			if res.Outcome != sluicev1.Outcome_OUTCOME_PERMANENT || res.Reason != sluicev1.Reason_REASON_REQUIRE_TLS ||
				res.Code != 550 || res.EnhancedCode != "5.7.30" || res.Text != tc.want {
				t.Fatalf("got %v %v %d %s %q\nwant permanent require_tls 550 5.7.30 %q", res.Outcome, res.Reason, res.Code, res.EnhancedCode, res.Text, tc.want)
			}
			if n := srv.Count(); n != 0 {
				t.Fatalf("%d messages reached a server that cannot take a REQUIRETLS message", n)
			}
		})
	}
}

// TestRequireTLSCachedSession: a session opened without verification for
// an ordinary job is not reused for a REQUIRETLS job; a new, verified
// connection carries it.
func TestRequireTLSCachedSession(t *testing.T) {
	w := newTLSWorld(t)
	cert := w.ca.Valid(t, "mx.example.test")
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx.example.test", RequireTLS: true,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	w.dns.Secure("example.test", true)
	c := w.courier(t, srv, policy(tlspolicy.ModeMay), tracetest.NewSpanRecorder())
	c.cache = newConnCache(CacheConfig{TTL: 10e9, MaxUses: 10})
	defer c.Close()
	for i, req := range []bool{false, true, true} {
		j := tlsJob()
		j.RequireTls = req
		r := c.Deliver(context.Background(), j, strings.NewReader(message))[0]
		wantBy := map[bool]string{false: "", true: "webpki"}[req]
		if r.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED || r.Tls.GetVerifiedBy() != wantBy {
			t.Fatalf("job %d (REQUIRETLS %v): %v %q, TLS %v; want delivered, verified by %q", i, req, r.Outcome, r.Text, r.Tls, wantBy)
		}
	}
	msgs := srv.Messages()
	if len(msgs) != 3 || msgs[0].RequireTLS || !msgs[1].RequireTLS || !msgs[2].RequireTLS {
		t.Fatalf("server got %+v", msgs)
	}
	// The unverified session of the first job was not reused for the
	// second; the verified one was reused for the third. go-smtp counts a
	// session again after STARTTLS: 2 connections, 4 sessions.
	if n := srv.Connections(); n != 4 {
		t.Fatalf("%d sessions, want 4 (two connections with STARTTLS)", n)
	}
}
