package smtpd

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// testPKI is a CA made for one test and a server certificate it signed for
// mx.sluice.test and 127.0.0.1.
type testPKI struct {
	certFile, keyFile string
	client            *tls.Config
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Sluice test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "mx.sluice.test"},
		DNSNames:     []string{"mx.sluice.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	writeFile(t, p.certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, p.keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	p.client = &tls.Config{RootCAs: pool, ServerName: "mx.sluice.test"}
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hash is a bcrypt hash at the lowest cost, to keep tests fast.
func hash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// rawClient speaks SMTP line by line, for what go-smtp's client cannot
// send (MT-PRIORITY on MAIL, BDAT, refused syntax, pipelined STARTTLS).
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string, implicit *tls.Config) *rawClient {
	t.Helper()
	var (
		c   net.Conn
		err error
	)
	if implicit != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, implicit)
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
	if code, text := rc.reply(); code != 220 {
		t.Fatalf("greeting %d %q", code, text)
	}
	return rc
}

// reply reads one reply, multi-line or not, and returns its code and its
// lines joined by "\n" (without the code).
func (rc *rawClient) reply() (int, string) {
	rc.t.Helper()
	var lines []string
	for {
		l, err := rc.r.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("reading reply: %v (so far %q)", err, lines)
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 4 {
			rc.t.Fatalf("short reply line %q", l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil {
			rc.t.Fatalf("reply line %q", l)
		}
		lines = append(lines, l[4:])
		if l[3] == ' ' {
			return code, strings.Join(lines, "\n")
		}
	}
}

func (rc *rawClient) send(s string) {
	rc.t.Helper()
	if _, err := rc.conn.Write([]byte(s)); err != nil {
		rc.t.Fatal(err)
	}
}

// cmd sends one command line and returns the reply.
func (rc *rawClient) cmd(line string) (int, string) {
	rc.t.Helper()
	rc.send(line + "\r\n")
	return rc.reply()
}

// must sends a command and fails the test unless the reply has the code
// and, if given, starts with the enhanced code.
func (rc *rawClient) must(line string, code int, enhanced string) string {
	rc.t.Helper()
	got, text := rc.cmd(line)
	if got != code || (enhanced != "" && !strings.HasPrefix(text, enhanced+" ")) {
		rc.t.Fatalf("%s: reply %d %q, want %d %s", line, got, text, code, enhanced)
	}
	return text
}

// startTLS upgrades the connection after a 220 to STARTTLS.
func (rc *rawClient) startTLS(cfg *tls.Config) {
	rc.t.Helper()
	rc.must("STARTTLS", 220, "2.0.0")
	rc.handshake(cfg)
}

// handshake starts TLS on the connection; STARTTLS was answered 220.
func (rc *rawClient) handshake(cfg *tls.Config) {
	rc.t.Helper()
	tc := tls.Client(rc.conn, cfg)
	if err := tc.Handshake(); err != nil {
		rc.t.Fatal(err)
	}
	rc.conn = tc
	rc.r = bufio.NewReader(tc)
}

// authPlain runs AUTH PLAIN with an initial response.
func (rc *rawClient) authPlain(user, password string) (int, string) {
	rc.t.Helper()
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	return rc.cmd("AUTH PLAIN " + ir)
}

// authLogin runs AUTH LOGIN through both prompts.
func (rc *rawClient) authLogin(user, password string) (int, string) {
	rc.t.Helper()
	code, text := rc.cmd("AUTH LOGIN")
	if code != 334 || text != base64.StdEncoding.EncodeToString([]byte("Username:")) {
		rc.t.Fatalf("AUTH LOGIN: %d %q", code, text)
	}
	code, text = rc.cmd(base64.StdEncoding.EncodeToString([]byte(user)))
	if code != 334 || text != base64.StdEncoding.EncodeToString([]byte("Password:")) {
		rc.t.Fatalf("AUTH LOGIN user: %d %q", code, text)
	}
	return rc.cmd(base64.StdEncoding.EncodeToString([]byte(password)))
}

// data sends DATA, the content (already dot-stuffed, ending in CRLF) and
// the end marker, and returns the final reply.
func (rc *rawClient) data(content string) (int, string) {
	rc.t.Helper()
	if code, text := rc.cmd("DATA"); code != 354 {
		rc.t.Fatalf("DATA: %d %q", code, text)
	}
	rc.send(content + ".\r\n")
	return rc.reply()
}

// ehlo returns the EHLO keywords, upper-cased, mapped to their parameters.
func (rc *rawClient) ehlo(name string) map[string]string {
	rc.t.Helper()
	code, text := rc.cmd("EHLO " + name)
	if code != 250 {
		rc.t.Fatalf("EHLO: %d %q", code, text)
	}
	ext := map[string]string{}
	for _, l := range strings.Split(text, "\n")[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext
}
