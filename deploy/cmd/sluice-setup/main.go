// Command sluice-setup prepares what a fresh compose deployment needs before
// the ingress can start, once, into volumes:
//
//   - a self-signed TLS certificate for -hostname (the submission listeners
//     require TLS: AUTH never travels in the clear);
//   - a submission user with a random password, as a credentials file of
//     bcrypt hashes (ingress/auth's format), the password beside it;
//   - a copy of the healthcheck binary into -tools, so that containers of
//     images that have no HTTP client of their own (the official nats image
//     is FROM scratch too) can run it as their health check.
//
// Files that exist are kept, so the credential survives restarts; it prints
// the user and password every time it runs (docker compose logs setup).
// Both are examples to replace: put your own certificate and users in the
// secrets volume.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	dir := flag.String("secrets", "/var/lib/sluice/secrets", "directory for the certificate, key and credentials")
	hostname := flag.String("hostname", "mail.example.com", "host name the certificate is for")
	user := flag.String("user", "submit", "name of the example submission user")
	tools := flag.String("tools", "", "copy the healthcheck binary into this directory")
	healthcheck := flag.String("healthcheck", "/healthcheck", "the healthcheck binary to copy")
	flag.Parse()

	if err := run(*dir, *hostname, *user); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-setup:", err)
		os.Exit(1)
	}
	if *tools != "" {
		if err := copyFile(*healthcheck, filepath.Join(*tools, "healthcheck"), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "sluice-setup:", err)
			os.Exit(1)
		}
	}
}

func run(dir, hostname, user string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	cert, key := filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls-key.pem")
	if !exists(cert) || !exists(key) {
		if err := selfSigned(hostname, cert, key); err != nil {
			return err
		}
		fmt.Printf("wrote a self-signed certificate for %s: %s\n", hostname, cert)
	}
	users, pwFile := filepath.Join(dir, "users"), filepath.Join(dir, user+".password")
	if !exists(users) {
		pw, err := password()
		if err != nil {
			return err
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
			return err
		}
		line := fmt.Sprintf("# name:bcrypt-hash[:sender-domain,...] (see ingress/auth)\n%s:%s\n", user, hash)
		if err := os.WriteFile(users, []byte(line), 0o600); err != nil {
			return err
		}
		fmt.Printf("wrote submission user %q to %s\n", user, users)
	}
	pw, err := os.ReadFile(pwFile)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Printf("submission credentials are in %s (not generated here)\n", users)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("submission user: %s password: %s\n", user, strings.TrimSpace(string(pw)))
	return nil
}

// password is 18 random bytes, URL-safe base64: 144 bits, no characters
// that need quoting in a shell or an SMTP client's configuration.
func password() (string, error) {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// selfSigned writes an ECDSA P-256 certificate for hostname, valid for a
// year, and its PKCS#8 key.
func selfSigned(hostname, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname},
		DNSNames:     []string{hostname},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
