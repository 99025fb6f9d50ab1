package natsconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/embedded"
)

// pki is a CA made for one test, with a server certificate for 127.0.0.1
// and a client certificate, written as PEM files.
type pki struct {
	caFile, certFile, keyFile     string
	clientCertFile, clientKeyFile string
	pool                          *x509.CertPool
	serverCert                    tls.Certificate
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Sluice NATS test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := pki{caFile: filepath.Join(dir, "ca.pem"), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	writePEM(t, p.caFile, "CERTIFICATE", caDER)

	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.certFile, p.keyFile = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	p.clientCertFile, p.clientKeyFile = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	p.serverCert, err = tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startSecure(t *testing.T, tlsCfg *tls.Config) *embedded.Server {
	t.Helper()
	s, err := embedded.Start(embedded.Options{
		Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		TLS: tlsCfg, User: "sluice", Password: "s3cret",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestTLSAndPassword connects the way every Sluice service does, to a real
// NATS server that requires TLS and a user: with the CA and the password it
// works end to end (JetStream included), and without either it is refused.
func TestTLSAndPassword(t *testing.T) {
	p := newPKI(t)
	s := startSecure(t, &tls.Config{Certificates: []tls.Certificate{p.serverCert}, MinVersion: tls.VersionTLS12})
	good := config.NATS{URL: s.ClientURL(), CAFile: p.caFile, User: "sluice", Password: "s3cret", RequestTimeout: 5 * time.Second}

	nc, js, err := Connect(context.Background(), good, "natsconn-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := nc.TLSConnectionState()
	if err != nil || !st.HandshakeComplete || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "server" {
		t.Fatalf("connection is not TLS to the test server: %+v, %v", st.PeerCertificates, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("JetStream over TLS: %v", err)
	}

	wrongPassword := good
	wrongPassword.Password = "guess"
	if nc, _, err := connectBriefly(wrongPassword); err == nil {
		nc.Close()
		t.Error("connected with a wrong password")
	} else if !IsPermanent(err) {
		t.Errorf("a refused password is not a permanent error (a service would wait forever): %v", err)
	}
	noUser := good
	noUser.User, noUser.Password = "", ""
	if nc, _, err := connectBriefly(noUser); err == nil {
		nc.Close()
		t.Error("connected without credentials")
	} else if !IsPermanent(err) {
		t.Errorf("missing credentials are not a permanent error: %v", err)
	}
	// Without our CA the server's certificate is not trusted.
	noCA := good
	noCA.CAFile = ""
	if nc, _, err := connectBriefly(noCA); err == nil {
		nc.Close()
		t.Error("connected without verifying the server certificate")
	} else if !IsPermanent(err) {
		t.Errorf("an untrusted server certificate is not a permanent error: %v", err)
	}
}

// TestMutualTLS has the server require a client certificate from our CA.
func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	s := startSecure(t, &tls.Config{
		Certificates: []tls.Certificate{p.serverCert}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool,
	})
	cfg := config.NATS{URL: s.ClientURL(), CAFile: p.caFile, User: "sluice", Password: "s3cret", RequestTimeout: 5 * time.Second}
	if nc, _, err := connectBriefly(cfg); err == nil {
		nc.Close()
		t.Error("connected without a client certificate")
	}
	cfg.CertFile, cfg.KeyFile = p.clientCertFile, p.clientKeyFile
	nc, _, err := Connect(context.Background(), cfg, "natsconn-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

// connectBriefly connects with a bound: a refusal that Connect would wait
// out ends with the context's error.
func connectBriefly(cfg config.NATS) (*nats.Conn, jetstream.JetStream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return Connect(ctx, cfg, "natsconn-test", quiet)
}
