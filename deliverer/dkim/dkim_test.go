package dkim

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

func rsaPEM(t *testing.T, bits int) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

func edPEM(t *testing.T) []byte {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func mustKey(t *testing.T, domain, selector string, p []byte) *Key {
	t.Helper()
	k, err := ParseKey(domain, selector, p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dnsOf publishes the keys' records the way a zone would.
func dnsOf(keys ...*Key) func(string) ([]string, error) {
	recs := map[string]string{}
	for _, k := range keys {
		recs[k.RecordName()] = k.Record()
	}
	return func(name string) ([]string, error) {
		if r, ok := recs[strings.TrimSuffix(name, ".")]; ok {
			return []string{r}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
}

const msg = "From: Alice <alice@news.example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\n" +
	"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <1@news.example.com>\r\n\r\nHello Bob.\r\n"

func verify(t *testing.T, signed []byte, lookup func(string) ([]string, error)) []*msgdkim.Verification {
	t.Helper()
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(signed), &msgdkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestSignRSAAndEd25519ForParentOfFromDomain(t *testing.T) {
	rk := mustKey(t, "Example.COM.", "r2025", rsaPEM(t, 2048))
	ek := mustKey(t, "example.com", "e2025", edPEM(t))
	if rk.Algorithm() != "rsa" || ek.Algorithm() != "ed25519" {
		t.Fatalf("algorithms %s %s", rk.Algorithm(), ek.Algorithm())
	}
	s := NewSigner([]*Key{rk, ek}, Options{})
	out, err := s.Sign(strings.NewReader(msg), "bounces@other.example")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	signed, _ := io.ReadAll(out)
	if out.Domain != "example.com" || strings.Join(out.Selectors, ",") != "r2025,e2025" {
		t.Fatalf("signed for %q %v", out.Domain, out.Selectors)
	}
	if int64(len(signed)-len(msg)) != out.Added || !bytes.HasSuffix(signed, []byte(msg)) {
		t.Fatalf("added %d bytes, reported %d; message intact: %v", len(signed)-len(msg), out.Added, bytes.HasSuffix(signed, []byte(msg)))
	}
	vs := verify(t, signed, dnsOf(rk, ek))
	if len(vs) != 2 {
		t.Fatalf("%d signatures", len(vs))
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Errorf("signature of %s: %v", v.Domain, v.Err)
		}
	}
	// A published key that is not ours fails verification.
	other := mustKey(t, "example.com", "r2025", rsaPEM(t, 1024))
	vs = verify(t, signed, dnsOf(other, ek))
	if vs[0].Err == nil || vs[1].Err != nil {
		t.Fatalf("with a foreign RSA key published: %v / %v", vs[0].Err, vs[1].Err)
	}
}

func TestSignFallsBackToEnvelopeThenUnsigned(t *testing.T) {
	k := mustKey(t, "bounce.example", "s1", edPEM(t))
	s := NewSigner([]*Key{k}, Options{})
	out, err := s.Sign(strings.NewReader(msg), "srs@bounce.example")
	if err != nil {
		t.Fatal(err)
	}
	signed, _ := io.ReadAll(out)
	out.Close()
	if out.Domain != "bounce.example" || verify(t, signed, dnsOf(k))[0].Err != nil {
		t.Fatalf("envelope domain signature: %q", out.Domain)
	}

	out, err = s.Sign(strings.NewReader(msg), "someone@unrelated.example")
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(out)
	out.Close()
	if out.Domain != "" || string(plain) != msg {
		t.Fatalf("unsigned message changed (domain %q)", out.Domain)
	}
	// A key for a top-level domain never signs.
	tld := NewSigner([]*Key{mustKey(t, "com", "s", edPEM(t))}, Options{})
	out, _ = tld.Sign(strings.NewReader(msg), "")
	out.Close()
	if out.Domain != "" {
		t.Fatalf("signed with a TLD key for %q", out.Domain)
	}
}

func TestSignLargeMessageSpillsToFile(t *testing.T) {
	dir := t.TempDir()
	k := mustKey(t, "example.com", "s", edPEM(t))
	s := NewSigner([]*Key{k}, Options{MemoryLimit: 4096, SpoolDir: dir})
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n", 20000)
	in := msg + body
	out, err := s.Sign(strings.NewReader(in), "")
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d spool files while sending, want 1", len(ents))
	}
	signed, _ := io.ReadAll(out)
	if !bytes.HasSuffix(signed, []byte(in)) {
		t.Fatal("large message not sent intact")
	}
	if v := verify(t, signed, dnsOf(k)); v[0].Err != nil {
		t.Fatal(v[0].Err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool file left behind: %v", ents)
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n > 0 {
		f.n--
		return copy(p, "Subject: x\r\n"), nil
	}
	return 0, errors.New("stream broke")
}

func TestSignReadError(t *testing.T) {
	s := NewSigner(nil, Options{})
	if _, err := s.Sign(&failingReader{n: 2}, ""); err == nil || !strings.Contains(err.Error(), "stream broke") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseKeyRejects(t *testing.T) {
	for name, c := range map[string]struct {
		domain, sel string
		pem         []byte
	}{
		"no pem":       {"example.com", "s", []byte("not a key")},
		"bad domain":   {"a b", "s", edPEM(t)},
		"bad selector": {"example.com", "s;x", edPEM(t)},
		"public key":   {"example.com", "s", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})},
	} {
		if _, err := ParseKey(c.domain, c.sel, c.pem); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.pem")
	os.WriteFile(good, edPEM(t), 0o600)
	s, err := Load([]KeyConfig{{Domain: "example.com", Selector: "a", KeyFile: good}}, Options{})
	if err != nil || len(s.Keys("EXAMPLE.com")) != 1 {
		t.Fatalf("load: %v", err)
	}
	_, err = Load([]KeyConfig{{Domain: "example.com", Selector: "a", KeyFile: good}, {Domain: "example.com", Selector: "b", KeyFile: filepath.Join(dir, "missing.pem")}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "dkim[1]") || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("err = %v", err)
	}
}
