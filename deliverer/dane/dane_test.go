package dane

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-mta/sluice/deliverer/tlstest"
)

func certs(t testing.TB, der [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range der {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func rec(usage, selector, matching uint8, content []byte) Record {
	data := content
	switch matching {
	case MatchSHA256:
		h := sha256.Sum256(content)
		data = h[:]
	case MatchSHA512:
		h := sha512.Sum512(content)
		data = h[:]
	}
	return Record{Usage: usage, Selector: selector, Matching: matching, Data: data}
}

func TestVerifyDANEEE(t *testing.T) {
	ca := tlstest.NewCA(t, "Test CA")
	// An expired certificate for another name: DANE-EE checks neither.
	srv := ca.Expired(t, "other.example.test")
	chain := certs(t, srv.Certificate)
	leaf := chain[0]
	now := time.Now()
	for _, r := range []Record{
		rec(3, 1, 1, leaf.RawSubjectPublicKeyInfo),
		rec(3, 1, 2, leaf.RawSubjectPublicKeyInfo),
		rec(3, 0, 1, leaf.Raw),
		rec(3, 0, 0, leaf.Raw),
		rec(3, 1, 0, leaf.RawSubjectPublicKeyInfo),
	} {
		m, err := Verify([]Record{rec(3, 1, 1, []byte("another key")), r}, chain, "mx.example.test", now)
		if err != nil || m.Record.Selector != r.Selector || m.Record.Matching != r.Matching {
			t.Errorf("record %s: %+v, %v", r, m, err)
		}
	}
	other := tlstest.SelfSigned(t, "mx.example.test")
	_, err := Verify([]Record{rec(3, 1, 1, certs(t, other.Certificate)[0].RawSubjectPublicKeyInfo)}, chain, "mx.example.test", now)
	var me *MismatchError
	if !errors.As(err, &me) || err.Error() != "TLSA mismatch for mx.example.test (no DANE-EE record matches the server's certificate)" {
		t.Fatalf("mismatch = %v", err)
	}
}

func TestVerifyDANETA(t *testing.T) {
	ca := tlstest.NewCA(t, "Test CA")
	now := time.Now()
	ta := []Record{rec(2, 0, 1, ca.Cert.Raw)}
	taSPKI := []Record{rec(2, 1, 2, ca.Cert.RawSubjectPublicKeyInfo)}
	good := certs(t, ca.Valid(t, "mx.example.test").Certificate)
	for _, rs := range [][]Record{ta, taSPKI} {
		m, err := Verify(rs, good, "mx.example.test", now)
		if err != nil || m.TrustAnchor != "CN=Test CA" {
			t.Fatalf("DANE-TA %s: %+v %v", rs[0], m, err)
		}
	}
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{"wrong name", certs(t, ca.Valid(t, "www.example.test").Certificate), "DANE-TA: certificate is valid for www.example.test, not mx.example.test"},
		{"expired", certs(t, ca.Expired(t, "mx.example.test").Certificate), "DANE-TA: certificate has expired or is not yet valid"},
		{"other anchor", certs(t, tlstest.NewCA(t, "Other").Valid(t, "mx.example.test").Certificate), "no DANE-TA record matches a certificate of the server's chain"},
		{"no anchor in chain", certs(t, ca.Valid(t, "mx.example.test").Certificate[:1]), "no DANE-TA record matches"},
	} {
		_, err := Verify(ta, tc.chain, "mx.example.test", now)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestUnusable(t *testing.T) {
	chain := certs(t, tlstest.SelfSigned(t, "mx.example.test").Certificate)
	for _, r := range []Record{
		rec(1, 1, 1, chain[0].RawSubjectPublicKeyInfo),           // PKIX-EE
		rec(0, 0, 1, chain[0].Raw),                               // PKIX-TA
		{Usage: 3, Selector: 1, Matching: 1, Data: []byte{1, 2}}, // short digest
		{Usage: 3, Selector: 2, Matching: 1, Data: make([]byte, 32)},
		{Usage: 3, Selector: 1, Matching: 9, Data: make([]byte, 32)},
	} {
		if r.Usable() {
			t.Errorf("%s usable", r)
		}
		if _, err := Verify([]Record{r}, chain, "mx.example.test", time.Now()); !errors.Is(err, ErrNoUsable) {
			t.Errorf("%s: %v, want ErrNoUsable", r, err)
		}
	}
}

func TestParse(t *testing.T) {
	r, err := Parse("3 1 1 0123 4567" + strings.Repeat("ab", 28))
	if err != nil || r.Usage != 3 || r.Selector != 1 || r.Matching != 1 || len(r.Data) != 32 || !r.Usable() {
		t.Fatalf("Parse = %+v, %v", r, err)
	}
	rr, err := dns.NewRR("_25._tcp.mx.example.test. 300 IN TLSA 2 0 1 " + strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	r, err = FromRR(rr.(*dns.TLSA))
	if err != nil || r.Usage != 2 || hex.EncodeToString(r.Data) != strings.Repeat("cd", 32) {
		t.Fatalf("FromRR = %+v, %v", r, err)
	}
	for _, s := range []string{"", "3 1 1", "3 1 x 00", "300 1 1 00", "3 1 1 0g", "-1 1 1 00", "0 0 00\r00", "3 1 1 00\n11", "3 1 1 00\u00a011", "0 0 0; 00", "3a 1 1 00", "+3 1 1 00"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

// FuzzTLSA parses arbitrary TLSA text, through miekg/dns's zone parser
// and ours, and verifies a fixed chain against what parsed: never a panic,
// the two parsers agree, and a record accepted as matching really is one
// built from the leaf.
func FuzzTLSA(f *testing.F) {
	f.Add("3 1 1 " + strings.Repeat("00", 32))
	f.Add("2 0 2 " + strings.Repeat("ff", 64))
	f.Add("3 0 0 3082")
	f.Add("1 1 1 00")
	ca := tlstest.NewCA(f, "Fuzz CA")
	chain := certs(f, ca.Valid(f, "mx.example.test").Certificate)
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		if rr, err := dns.NewRR("x. 60 IN TLSA " + s); err == nil && rr != nil {
			if got, err := FromRR(rr.(*dns.TLSA)); err == nil && (got.Usage != r.Usage || got.Selector != r.Selector || got.Matching != r.Matching || hex.EncodeToString(got.Data) != hex.EncodeToString(r.Data)) {
				t.Fatalf("miekg/dns reads %q as %s, we read %s", s, got, r)
			}
		}
		m, err := Verify([]Record{r}, chain, "mx.example.test", time.Now())
		if err == nil && m.Record.Usage == UsageDANEEE && !m.Record.matches(chain[0]) {
			t.Fatalf("%s verified a leaf it does not match", r)
		}
		if err == nil && !r.Usable() {
			t.Fatalf("unusable %s verified", r)
		}
	})
}
