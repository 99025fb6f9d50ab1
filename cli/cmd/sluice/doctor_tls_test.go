package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
)

// TestDoctorTLS runs a real deliverer under tls_policy dane against a
// domain whose one MX host presents a certificate from a test CA that its
// DNSSEC-validated TLSA record names as trust anchor (DANE-TA), and one
// whose MX host presents an expired certificate under verify: the first
// is usable, verified by DANE-TA; the second is not, and the check fails.
func TestDoctorTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the deliverer binary")
	}
	ns := natstest.Start(t)
	dns := dnstest.Start(t)
	ca := tlstest.NewCA(t, "Doctor Test CA")
	good, expired := ca.Valid(t, "mx.tls.test"), ca.Expired(t, "mx.old.test")
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx.test", TLS: &tls.Config{
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName == "mx.tls.test" {
				return &good, nil
			}
			return &expired, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Addr)
	anchor := sha256.Sum256(ca.Cert.Raw)
	tlsa := "_" + port + "._tcp.mx.tls.test."
	dns.MustAdd(t, "tls.test. 60 IN MX 10 mx.tls.test.", "mx.tls.test. 60 IN A 127.0.0.1",
		tlsa+" 60 IN TLSA 2 0 1 "+hex.EncodeToString(anchor[:]),
		"old.test. 60 IN MX 10 mx.old.test.", "mx.old.test. 60 IN A 127.0.0.1")
	dns.Secure("tls.test", true)
	dns.Secure(tlsa, true)
	section := fmt.Sprintf("  hostname: mail.good.test\n  dns_server: %q\n  dns_timeout: 1s\n  smtp_port: %s\n  egress_ips: [192.0.2.10]\n"+
		"  tls_policy:\n    default: dane\n    ca_file: %q\n    domains: {old.test: verify}\n", dns.Addr, port, ca.WritePEM(t))
	diagStartDeliverer(t, ns.ClientURL(), "d1", section)

	code, out, errOut := diagRun("doctor", "tls", "tls.test", "-server", ns.ClientURL())
	row := regexp.MustCompile(`(?m)^d1\s+dane\s+secure\s+none\s+1/1 hosts, 1 signed\s+1/1\s+ok$`)
	if code != 0 || !regexp.MustCompile(`^DELIVERER\s+MODE\s+MX DNSSEC\s+MTA-STS\s+TLSA\s+MX USABLE\s+VERDICT\n`).MatchString(out) || !row.MatchString(out) {
		t.Fatalf("exit %d (stderr %s):\n%s", code, errOut, out)
	}
	t.Logf("sluice doctor tls tls.test:\n%s", out)
	for _, want := range []string{
		"d1  mx.tls.test:" + port + ": TLSA 2 0 1 " + hex.EncodeToString(anchor[:6]),
		"(secure); policy dane: verified (dane-ta)",
		"doctor tls tls.test: OK on 1 deliverer: 1 of 1 MX host(s) of tls.test usable under policy dane",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}

	code, out, _ = diagRun("doctor", "tls", "old.test", "-server", ns.ClientURL())
	if code != 1 || !regexp.MustCompile(`(?m)^d1\s+verify\s+insecure\s+none\s+none\s+0/1\s+error$`).MatchString(out) ||
		!strings.Contains(out, "error  MX mx.old.test cannot receive mail from us under policy verify: verify: mx.old.test certificate expired (d1)") {
		t.Fatalf("old.test (exit %d):\n%s", code, out)
	}
}
