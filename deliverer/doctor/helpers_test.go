package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// newDoctor returns a doctor on the test DNS server.
func newDoctor(t *testing.T, dns *dnstest.Server, mod func(*Config)) *Doctor {
	t.Helper()
	cfg := Config{
		Instance:   "d1",
		Hostname:   "mail.good.test",
		EgressIPs:  []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		DNSServer:  dns.Addr,
		DNSTimeout: dnstest.Timeout,
		SMTPPort:   25,
	}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func findingsText(fs []admin.Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(string(f.Severity) + " | " + f.Subject + " | " + f.Problem + " | " + f.Fix + "\n")
	}
	return b.String()
}

// hasFinding reports whether a finding of severity mentions every part in
// its problem or fix.
func hasFinding(fs []admin.Finding, sev admin.Severity, parts ...string) bool {
	for _, f := range fs {
		if f.Severity != sev {
			continue
		}
		all := true
		for _, p := range parts {
			if !strings.Contains(f.Problem+" "+f.Fix, p) {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}

// blackhole returns a TCP port on 127.0.0.1 where connections time out: a
// socket listening with a backlog of zero that never accepts, whose accept
// queue is filled first, so that the kernel drops further SYNs exactly like
// a firewall that filters the port. Nothing leaves the machine.
func blackhole(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	addr := net.JoinHostPort("127.0.0.1", itoa(port))
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return port // the queue is full: SYNs are dropped now
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("cannot fill the accept queue of a loopback listener on this kernel")
	return 0
}

func itoa(n int) string { return strconv.Itoa(n) }

// silent listens on addr, accepts and never writes: a server that hangs
// before its banner.
func silent(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// smtpServer runs a go-smtp server on addr, with STARTTLS when withTLS.
func smtpServer(t *testing.T, addr, domain string, withTLS bool) {
	t.Helper()
	s := smtp.NewServer(backend{})
	s.Domain = domain
	s.ReadTimeout, s.WriteTimeout = 5*time.Second, 5*time.Second
	s.AllowInsecureAuth = true
	s.ErrorLog = log.New(io.Discard, "", 0)
	if withTLS {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t, domain)}}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close(); <-done })
}

func selfSigned(t *testing.T, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host, Organization: []string{"Sluice test"}},
		DNSNames:     []string{host},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type backend struct{}

func (backend) NewSession(*smtp.Conn) (smtp.Session, error) { return session{}, nil }

type session struct{}

func (session) Mail(string, *smtp.MailOptions) error { return nil }
func (session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (session) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (session) Reset()                               {}
func (session) Logout() error                        { return nil }

func bg() context.Context { return context.Background() }
