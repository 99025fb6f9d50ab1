package smtpd

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// startInbound runs an ingress that is the MX for sluice.test, to which
// the test's loopback client is a stranger, with a DNS server publishing
// SPF, DKIM and DMARC for example.org; it returns the DKIM signing key.
func startInbound(t *testing.T, dmarcReject bool) (*harness, ed25519.PrivateKey) {
	t.Helper()
	dns := dnstest.Start(t)
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
	dns.MustAdd(t,
		`example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`elsewhere.example. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`sel._domainkey.example.org. 300 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))+`"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`,
	)
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.TrustedNetworks = []string{"10.0.0.0/8"}
		s.MX.AcceptedDomains = []string{"sluice.test"}
		s.DNSServer = dns.Addr
		s.DMARCReject = dmarcReject
	})
	return h, key
}

func signed(t *testing.T, key ed25519.PrivateKey, msg string) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{Domain: "example.org", Selector: "sel", Signer: key}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

const inboundMsg = "Authentication-Results: mx.sluice.test; dmarc=pass header.from=example.org\r\n" +
	"From: Alice <alice@example.org>\r\nTo: bob@sluice.test\r\nSubject: hi\r\n\r\nHello Bob.\r\n"

func TestInboundMailGetsAuthenticationResults(t *testing.T) {
	h, key := startInbound(t, true)
	c := h.dial()
	reply, err := send(c, "alice@example.org", nil, []string{"bob@sluice.test"}, nil, signed(t, key, inboundMsg))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.stored(queueID(t, reply))
	body := string(m.GetBody())
	_, rest, _ := strings.Cut(body, "\r\nAuthentication-Results: ")
	want := "mx.sluice.test;\r\n\tspf=pass smtp.mailfrom=alice@example.org;\r\n\tdkim=pass header.d=example.org header.s=sel header.b="
	if !strings.HasPrefix(body, "Received: ") || !strings.HasPrefix(rest, want) {
		t.Fatalf("stored message does not start with Received and our Authentication-Results:\n%s", body[:min(len(body), 400)])
	}
	if !strings.Contains(rest, ";\r\n\tdmarc=pass (p=reject) header.from=example.org\r\n") {
		t.Errorf("no DMARC pass in %q", rest[:min(len(rest), 300)])
	}
	// The client's own field claiming our name is gone (RFC 8601 §5).
	if n := strings.Count(body, "Authentication-Results: mx.sluice.test"); n != 1 {
		t.Errorf("%d fields claim to be ours, want 1", n)
	}
	if n := h.counterWith("sluice_ingress_auth_results_total", "method", "dmarc"); n != 1 {
		t.Errorf("dmarc results counted %d, want 1", n)
	}
}

func TestDMARCRejectAtData(t *testing.T) {
	h, key := startInbound(t, true)
	c := h.dial()
	// The signature no longer matches and the envelope sender's SPF is
	// not example.org's: DMARC fails, and example.org says p=reject.
	tampered := bytes.Replace(signed(t, key, inboundMsg), []byte("Hello Bob."), []byte("Pay me."), 1)
	_, err := send(c, "bounce@elsewhere.example", nil, []string{"bob@sluice.test"}, nil, tampered)
	wantSMTPError(t, err, 550, smtp.EnhancedCode{5, 7, 1})
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	// The valid message on the same connection is accepted.
	reply, err := send(c, "alice@example.org", nil, []string{"bob@sluice.test"}, nil, signed(t, key, inboundMsg))
	if err != nil {
		t.Fatal(err)
	}
	queueID(t, reply)
}

func TestDMARCFailureOnlyRecordedWithoutReject(t *testing.T) {
	h, key := startInbound(t, false)
	c := h.dial()
	tampered := bytes.Replace(signed(t, key, inboundMsg), []byte("Hello Bob."), []byte("Pay me."), 1)
	reply, err := send(c, "bounce@elsewhere.example", nil, []string{"bob@sluice.test"}, nil, tampered)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.stored(queueID(t, reply))
	for _, want := range []string{"spf=fail smtp.mailfrom=bounce@elsewhere.example;", "dkim=fail header.d=example.org", "dmarc=fail (p=reject) header.from=example.org"} {
		if !bytes.Contains(m.GetBody(), []byte(want)) {
			t.Errorf("stored message lacks %q", want)
		}
	}
}

func TestTrustedClientMailIsNotJudged(t *testing.T) {
	h := start(t, nil) // loopback is trusted
	c := h.dial()
	reply, err := send(c, "alice@example.org", nil, []string{"bob@example.test"}, nil, []byte(inboundMsg))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := h.stored(queueID(t, reply))
	// The client's field stays as it was; none of ours is added.
	if n := bytes.Count(m.GetBody(), []byte("Authentication-Results:")); n != 1 {
		t.Errorf("%d Authentication-Results fields, want the client's only", n)
	}
}
