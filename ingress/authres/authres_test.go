package authres

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"

	"github.com/sluice-mta/sluice/services/dnstest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// world is a DNS server holding the records of the test domains, and the
// DKIM key of example.org (selector "sel").
type world struct {
	dns *dnstest.Server
	r   Resolver
	key ed25519.PrivateKey
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{dns: dnstest.Start(t)}
	w.r = NewResolver(w.dns.Addr)
	// A fixed seed keeps signatures reproducible apart from their time.
	w.key = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	pub := base64.StdEncoding.EncodeToString(w.key.Public().(ed25519.PublicKey))
	w.dns.MustAdd(t,
		// SPF: the test client is 127.0.0.1.
		`example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`bounces.example.net. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"`,
		`fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.99 -all"`,
		`soft.example. 300 IN TXT "v=spf1 ~all"`,
		`mx.client.example. 300 IN TXT "v=spf1 a -all"`,
		`mx.client.example. 300 IN A 127.0.0.1`,
		// DKIM.
		`sel._domainkey.example.org. 300 IN TXT "v=DKIM1; k=ed25519; p=`+pub+`"`,
		`sel._domainkey.strict.example. 300 IN TXT "v=DKIM1; k=ed25519; p=`+pub+`"`,
		// DMARC.
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"`,
		`_dmarc.quarantine.example. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.strict.example. 300 IN TXT "v=DMARC1; p=none; sp=reject; adkim=s; aspf=s"`,
		`strict.example. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
	)
	return w
}

func (w *world) sign(t *testing.T, domain, msg string) []byte {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain: domain, Selector: "sel", Signer: w.key,
		HeaderKeys: []string{"From", "To", "Subject", "Date"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func (w *world) check(from, helo string, msg []byte) Result {
	return Check(context.Background(), w.r, "mx.sluice.test", Input{
		Client: netip.MustParseAddr("127.0.0.1"), Helo: helo, MailFrom: from, Message: msg,
	})
}

func message(from string) string {
	return "From: Alice <" + from + ">\r\nTo: bob@sluice.test\r\nSubject: hello\r\nDate: Fri, 02 Jan 2026 03:04:05 +0000\r\n\r\nHi Bob,\r\nsee you.\r\n"
}

func TestSPF(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct{ from, helo, want string }{
		{"alice@example.org", "client.example", Pass},
		{"bob@fail.example", "client.example", Fail},
		{"carol@soft.example", "client.example", SoftFail},
		{"dave@nothing.example", "client.example", None},
		// The null sender is checked on the HELO name (RFC 7208 §2.3).
		{"", "mx.client.example", Pass},
	} {
		r := w.check(tc.from, tc.helo, []byte(message("alice@example.org")))
		if r.SPF != tc.want {
			t.Errorf("MAIL FROM %q HELO %q: spf=%s, want %s", tc.from, tc.helo, r.SPF, tc.want)
		}
	}
}

func TestDKIMAndDMARC(t *testing.T) {
	w := newWorld(t)
	signed := w.sign(t, "example.org", message("alice@example.org"))
	tampered := bytes.Replace(signed, []byte("see you."), []byte("send money."), 1)

	for _, tc := range []struct {
		name       string
		mailFrom   string
		msg        []byte
		wantDKIM   string
		wantDMARC  string
		wantPolicy dmarc.Policy
		wantReject bool
	}{
		{"signed, SPF aligned", "alice@example.org", signed, Pass, Pass, dmarc.PolicyReject, false},
		{"signed, bounce address elsewhere", "b@bounces.example.net", signed, Pass, Pass, dmarc.PolicyReject, false},
		{"tampered, SPF aligned", "alice@example.org", tampered, Fail, Pass, dmarc.PolicyReject, false},
		{"tampered, SPF not aligned: reject", "b@bounces.example.net", tampered, Fail, Fail, dmarc.PolicyReject, true},
		{"unsigned, SPF fails: reject", "alice@fail.example", []byte(message("alice@example.org")), "", Fail, dmarc.PolicyReject, true},
		{"subdomain of the signer, relaxed", "b@bounces.example.net", w.sign(t, "example.org", message("alice@news.example.org")), Pass, Pass, dmarc.PolicyReject, false},
		{"quarantine is not reject", "b@bounces.example.net", []byte(message("q@quarantine.example")), "", Fail, dmarc.PolicyQuarantine, false},
		{"no policy", "b@bounces.example.net", []byte(message("x@nothing.example")), "", None, "", false},
		// adkim=s: a signature of strict.example does not cover
		// sub.strict.example, whose policy is the organization's sp=reject.
		{"strict alignment, subdomain policy", "a@strict.example", w.sign(t, "strict.example", message("a@sub.strict.example")), Pass, Fail, dmarc.PolicyReject, true},
		{"strict alignment, exact", "a@strict.example", w.sign(t, "strict.example", message("a@strict.example")), Pass, Pass, dmarc.PolicyNone, false},
		{"two From addresses", "alice@example.org", []byte("From: a@example.org, b@example.org\r\n\r\nx\r\n"), "", PermError, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := w.check(tc.mailFrom, "client.example", tc.msg)
			gotDKIM := ""
			if len(r.DKIM) > 0 {
				gotDKIM = r.DKIM[0].Result
			}
			if gotDKIM != tc.wantDKIM {
				t.Errorf("dkim=%q, want %q (%+v)", gotDKIM, tc.wantDKIM, r.DKIM)
			}
			if r.DMARC.Result != tc.wantDMARC || r.DMARC.Policy != tc.wantPolicy || r.DMARC.Reject != tc.wantReject {
				t.Errorf("dmarc %+v, want %s policy %q reject %v", r.DMARC, tc.wantDMARC, tc.wantPolicy, tc.wantReject)
			}
		})
	}
}

func TestDNSFailuresAreTemporary(t *testing.T) {
	w := newWorld(t)
	w.dns.ServFail("_dmarc.example.org", true)
	w.dns.ServFail("sel._domainkey.example.org", true)
	w.dns.ServFail("fail.example", true)
	r := w.check("bob@fail.example", "client.example", w.sign(t, "example.org", message("alice@example.org")))
	if r.SPF != TempError || len(r.DKIM) != 1 || r.DKIM[0].Result != TempError || r.DMARC.Result != TempError || r.DMARC.Reject {
		t.Errorf("spf=%s dkim=%+v dmarc=%+v, want temperror everywhere and no reject", r.SPF, r.DKIM, r.DMARC)
	}
}

var headerB = regexp.MustCompile(`header\.b=[A-Za-z0-9+/]{8}`)

func TestHeaderGolden(t *testing.T) {
	w := newWorld(t)
	tampered := bytes.Replace(w.sign(t, "example.org", message("alice@example.org")), []byte("see you."), []byte("send money."), 1)
	var got bytes.Buffer
	for _, tc := range []struct {
		from string
		msg  []byte
	}{
		{"alice@example.org", w.sign(t, "example.org", message("alice@example.org"))},
		{"b@bounces.example.net", tampered},
		{"", []byte(message("x@nothing.example"))},
		{`"odd; local\"part"@fail.example`, []byte(message("a@strict.example"))},
	} {
		r := w.check(tc.from, "mx.client.example", tc.msg)
		// b= changes with the signing time; the golden file holds a mask.
		got.Write(headerB.ReplaceAll(r.Header, []byte("header.b=XXXXXXXX")))
	}
	path := filepath.Join("testdata", "authentication-results.golden")
	if *update {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("header fields differ from %s (run with -update to accept):\n%s", path, got.Bytes())
	}
}

func TestStripForged(t *testing.T) {
	in := "Received: from a\r\n\tby b\r\n" +
		"Authentication-Results: MX.Sluice.Test;\r\n\tdmarc=pass header.from=bank.example\r\n" +
		"Authentication-Results: other.example; spf=pass\r\n" +
		"Authentication-Results: (comment) mx.sluice.test; dkim=pass\r\n" +
		"Subject: x\r\n\r\n" +
		"Authentication-Results: mx.sluice.test; in the body stays\r\n"
	want := "Received: from a\r\n\tby b\r\n" +
		"Authentication-Results: other.example; spf=pass\r\n" +
		"Subject: x\r\n\r\n" +
		"Authentication-Results: mx.sluice.test; in the body stays\r\n"
	if got := string(StripForged([]byte(in), "mx.sluice.test")); got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}
