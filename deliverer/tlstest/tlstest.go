// Package tlstest makes certificates for tests of the deliverer's TLS
// policies: a test certificate authority generated in the test, server
// certificates it issues (valid, expired, for another name), and
// self-signed ones. Nothing here is for production use.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

var serial atomic.Int64

// CA is a test certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a CA valid from an hour ago for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: c, Key: key}
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WritePEM writes the CA certificate to a file in the test's temporary
// directory and returns its path.
func (ca *CA) WritePEM(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Valid is a server certificate for names valid now.
func (ca *CA) Valid(t testing.TB, names ...string) tls.Certificate {
	return ca.Issue(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), names...)
}

// Expired is a server certificate for names that expired an hour ago.
func (ca *CA) Expired(t testing.TB, names ...string) tls.Certificate {
	return ca.Issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour), names...)
}

// Issue is a server certificate for names, valid between the two times,
// with the CA certificate in its chain.
func (ca *CA) Issue(t testing.TB, notBefore, notAfter time.Time, names ...string) tls.Certificate {
	t.Helper()
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, leaf(names, notBefore, notAfter), ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return chain(t, key, der, ca.Cert.Raw)
}

// SelfSigned is a server certificate for names that signs itself.
func SelfSigned(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := leaf(names, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return chain(t, key, der)
}

func leaf(names []string, notBefore, notAfter time.Time) *x509.Certificate {
	cn := "test"
	if len(names) > 0 {
		cn = names[0]
	}
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

func chain(t testing.TB, key *ecdsa.PrivateKey, der ...[]byte) tls.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der[0])
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: der, PrivateKey: key, Leaf: c}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
