package doctor

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// TestTLSCheck: the tls check of a domain with two MX hosts on one test
// server (the certificate chosen by SNI): mx1 publishes DNSSEC-validated
// TLSA records its certificate matches, mx2 has an expired certificate and
// unvalidated TLSA records; the domain also publishes an enforced MTA-STS
// policy. Under dane, mx1 verifies by DANE-EE and mx2 falls back to
// MTA-STS, whose check fails on the expired certificate.
func TestTLSCheck(t *testing.T) {
	dns := dnstest.Start(t)
	ca := tlstest.NewCA(t, "Test CA")
	self := tlstest.SelfSigned(t, "mx1.tls.test")
	expired := ca.Expired(t, "mx2.tls.test")
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx.tls.test", TLS: &tls.Config{
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName == "mx1.tls.test" {
				return &self, nil
			}
			return &expired, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, ps, _ := net.SplitHostPort(srv.Addr)
	port, _ := strconv.Atoi(ps)
	https := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "version: STSv1\nmode: enforce\nmx: *.tls.test\nmax_age: 604800\n")
	}))
	https.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Valid(t, "mta-sts.tls.test")}}
	https.StartTLS()
	defer https.Close()

	spki := sha256.Sum256(self.Leaf.RawSubjectPublicKeyInfo)
	tlsa1 := fmt.Sprintf("_%d._tcp.mx1.tls.test.", port)
	tlsa2 := fmt.Sprintf("_%d._tcp.mx2.tls.test.", port)
	dns.MustAdd(t, "tls.test. 60 IN MX 10 mx1.tls.test.", "tls.test. 60 IN MX 20 mx2.tls.test.",
		"mx1.tls.test. 60 IN A 127.0.0.1", "mx2.tls.test. 60 IN A 127.0.0.1",
		tlsa1+" 60 IN TLSA 3 1 1 "+hex.EncodeToString(spki[:]),
		tlsa2+" 60 IN TLSA 3 1 1 "+hex.EncodeToString(spki[:]),
		`_mta-sts.tls.test. 60 IN TXT "v=STSv1; id=2026"`)
	dns.Secure("tls.test", true)
	dns.Secure(tlsa1, true)

	opts := tlspolicy.Options{RootCAs: ca.Pool(), HTTPSDial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, network, https.Listener.Addr().String())
	}}
	d := newDoctor(t, dns, func(c *Config) {
		c.SMTPPort = port
		c.TLSPolicy = tlspolicy.DefaultConfig()
		c.TLSPolicy.Default = tlspolicy.ModeDANE
		c.TLSOptions = opts
	})
	rep := d.TLS(context.Background(), admin.DoctorRequest{Domain: "tls.test"})
	if rep.Mode != "dane" || rep.MXDNSSEC != "secure" || rep.DNSSECServer != dns.Addr {
		t.Fatalf("mode %q, MX DNSSEC %q, server %q", rep.Mode, rep.MXDNSSEC, rep.DNSSECServer)
	}
	if p := rep.MTASTS.Policy; p == nil || p.ID != "2026" || p.Mode != "enforce" || p.MX[0] != "*.tls.test" || p.MaxAge != 604800 || rep.MTASTS.Note != "fetched policy id 2026" {
		t.Fatalf("MTA-STS %+v %q", rep.MTASTS.Policy, rep.MTASTS.Note)
	}
	if len(rep.Hosts) != 2 {
		t.Fatalf("%d hosts", len(rep.Hosts))
	}
	h1, h2 := rep.Hosts[0], rep.Hosts[1]
	if h1.Host != "mx1.tls.test" || h1.TLSADNSSEC != "secure" || len(h1.TLSA) != 1 || !strings.HasPrefix(h1.TLSA[0], "3 1 1 ") ||
		h1.Policy != "dane" || !h1.Required || h1.Check != "verified (dane-ee)" || !h1.Deliverable || h1.Probe == nil || h1.Probe.TLS == nil {
		t.Errorf("mx1: %+v", h1)
	}
	if h2.Host != "mx2.tls.test" || h2.TLSADNSSEC != "insecure" || h2.Policy != "mta-sts enforce" ||
		h2.Check != "FAILED: mta-sts enforce: mx2.tls.test certificate expired" || h2.Deliverable {
		t.Errorf("mx2: %+v", h2)
	}
	if !hasFinding(rep.Findings, admin.SeverityWarning, "MX mx2.tls.test cannot receive mail from us under policy mta-sts enforce: mta-sts enforce: mx2.tls.test certificate expired") ||
		!hasFinding(rep.Findings, admin.SeverityWarning, "TLSA records at "+strings.TrimSuffix(tlsa2, ".")+" are not DNSSEC-validated") {
		t.Errorf("findings:\n%s", findingsText(rep.Findings))
	}
	if rep.Verdict.Severity != admin.SeverityWarning {
		t.Errorf("verdict %+v", rep.Verdict)
	}

	// Under may, the same hosts take mail unverified, and the doctor says
	// that the enforced policy is not applied.
	d = newDoctor(t, dns, func(c *Config) { c.SMTPPort, c.TLSOptions = port, opts })
	rep = d.TLS(context.Background(), admin.DoctorRequest{Domain: "tls.test"})
	if rep.Mode != "may" || rep.Hosts[0].Check != "encrypted, not verified" || !rep.Hosts[1].Deliverable ||
		!hasFinding(rep.Findings, admin.SeverityWarning, "tls.test publishes an enforced MTA-STS policy, which tls_policy mode may does not apply") {
		t.Errorf("under may: hosts %+v\n%s", rep.Hosts, findingsText(rep.Findings))
	}
}
