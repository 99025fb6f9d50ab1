package smtpd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/services/config"
)

// submissionSetup is a server with all three listeners, a test CA, and two
// users: alice, restricted to example.org, and bob, unrestricted.
type submissionSetup struct {
	*harness
	pki   testPKI
	creds string
}

func startSubmission(t *testing.T, tune func(*ingress.Settings)) submissionSetup {
	t.Helper()
	pki := newTestPKI(t)
	creds := filepath.Join(t.TempDir(), "users")
	writeFile(t, creds, "# test users\n"+
		"alice@example.org:"+hash(t, "alice-secret")+":example.org\n"+
		"bob:"+hash(t, "bob-secret")+"\n")
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.TLS = ingress.TLSFiles{CertFile: pki.certFile, KeyFile: pki.keyFile}
		s.Submission = ingress.Submission{Listen: "127.0.0.1:0", ListenTLS: "127.0.0.1:0", CredentialsFile: creds}
		// Loopback is not trusted here: submission must not depend on it.
		s.TrustedNetworks = []string{"10.0.0.0/8"}
		if tune != nil {
			tune(s)
		}
	})
	return submissionSetup{harness: h, pki: pki, creds: creds}
}

func (s submissionSetup) addr(name string) string {
	s.t.Helper()
	a := s.srv.ListenerAddr(name)
	if a == nil {
		s.t.Fatalf("listener %s not running", name)
	}
	return a.String()
}

func TestSubmissionOnlyOverTLSWithAuth(t *testing.T) {
	s := startSubmission(t, nil)
	c := dialRaw(t, s.addr(ListenerSubmission), nil)

	ext := c.ehlo("client.example.org")
	if _, ok := ext["STARTTLS"]; !ok {
		t.Errorf("STARTTLS not advertised in the clear: %v", ext)
	}
	if _, ok := ext["AUTH"]; ok {
		t.Errorf("AUTH advertised in the clear: %v", ext)
	}
	if _, ok := ext["REQUIRETLS"]; ok {
		t.Errorf("REQUIRETLS advertised in the clear: %v", ext)
	}
	// RFC 4954 §6: no passwords over a clear connection, whichever
	// mechanism, and no mail without authentication.
	if code, text := c.authPlain("bob", "bob-secret"); code != 538 || !strings.HasPrefix(text, "5.7.11 ") {
		t.Errorf("AUTH PLAIN in the clear: %d %q, want 538 5.7.11", code, text)
	}
	c.must("AUTH LOGIN", 538, "5.7.11")
	c.must("MAIL FROM:<bob@example.org>", 530, "5.7.0")

	c.startTLS(s.pki.client)
	ext = c.ehlo("client.example.org")
	if ext["AUTH"] != "PLAIN LOGIN" {
		t.Errorf("AUTH over TLS is %q, want PLAIN LOGIN (all: %v)", ext["AUTH"], ext)
	}
	if _, ok := ext["STARTTLS"]; ok {
		t.Error("STARTTLS advertised again after TLS")
	}
	if _, ok := ext["REQUIRETLS"]; !ok {
		t.Error("REQUIRETLS not advertised over TLS")
	}
	c.must("MAIL FROM:<bob@example.org>", 530, "5.7.0")
	if code, text := c.authPlain("bob", "wrong"); code != 535 || !strings.HasPrefix(text, "5.7.8 ") {
		t.Errorf("bad password: %d %q, want 535 5.7.8", code, text)
	}
	if code, text := c.authPlain("nobody", "bob-secret"); code != 535 || !strings.HasPrefix(text, "5.7.8 ") {
		t.Errorf("unknown user: %d %q, want 535 5.7.8", code, text)
	}
	c.must("AUTH CRAM-MD5", 504, "5.5.4")
	if code, text := c.authPlain("BOB", "bob-secret"); code != 235 {
		t.Fatalf("good password: %d %q", code, text)
	}
	c.must("AUTH PLAIN", 503, "5.5.1")

	// An authenticated user relays anywhere, and REQUIRETLS is stored.
	c.must("MAIL FROM:<bob@example.org> REQUIRETLS", 250, "")
	c.must("RCPT TO:<carol@far-away.test>", 250, "")
	code, text := c.data("Subject: via submission\r\n\r\nhello\r\n")
	if code != 250 {
		t.Fatalf("DATA: %d %q", code, text)
	}
	m, _ := s.stored(queueID(t, text))
	if m.GetAuthUser() != "bob" || !m.GetRequireTls() || m.GetRecipients()[0].GetAddress() != "carol@far-away.test" {
		t.Errorf("stored auth_user %q require_tls %v recipients %v", m.GetAuthUser(), m.GetRequireTls(), m.GetRecipients())
	}
	if !bytes.Contains(m.GetBody(), []byte(" with ESMTPSA id ")) {
		t.Errorf("Received header does not say ESMTPSA: %q", m.GetBody())
	}
	if n := s.counter("sluice_ingress_auth_attempts_total", "failure"); n != 2 {
		t.Errorf("auth failures counted %d, want 2", n)
	}
}

func TestImplicitTLSLoginAndSenderDomains(t *testing.T) {
	s := startSubmission(t, nil)
	c := dialRaw(t, s.addr(ListenerSubmissions), s.pki.client)
	ext := c.ehlo("client.example.org")
	if ext["AUTH"] != "PLAIN LOGIN" {
		t.Fatalf("AUTH on 465 is %q, want PLAIN LOGIN (all: %v)", ext["AUTH"], ext)
	}
	if _, ok := ext["STARTTLS"]; ok {
		t.Error("STARTTLS advertised on implicit TLS")
	}
	if code, text := c.authLogin("alice@example.org", "bob-secret"); code != 535 || !strings.HasPrefix(text, "5.7.8 ") {
		t.Errorf("LOGIN with a wrong password: %d %q", code, text)
	}
	if code, text := c.authLogin("alice@example.org", "alice-secret"); code != 235 {
		t.Fatalf("LOGIN: %d %q", code, text)
	}
	// alice may only send as example.org.
	c.must("MAIL FROM:<alice@other.example>", 553, "5.7.1")
	c.must("MAIL FROM:<>", 553, "5.7.1")
	c.must("MAIL FROM:<alice@EXAMPLE.org>", 250, "")
	c.must("RCPT TO:<dave@far-away.test>", 250, "")
	code, text := c.data("Subject: hi\r\n\r\nhi\r\n")
	if code != 250 {
		t.Fatalf("DATA: %d %q", code, text)
	}
	if m, _ := s.stored(queueID(t, text)); m.GetAuthUser() != "alice@example.org" {
		t.Errorf("auth_user %q", m.GetAuthUser())
	}
	if n := s.counter("sluice_ingress_refused_total", ""); n != 2 {
		t.Errorf("refusals counted %d, want 2 (sender_domain)", n)
	}

	// bob has no restriction.
	c2 := dialRaw(t, s.addr(ListenerSubmissions), s.pki.client)
	c2.ehlo("client.example.org")
	if code, _ := c2.authPlain("bob", "bob-secret"); code != 235 {
		t.Fatal("bob could not log in")
	}
	c2.must("MAIL FROM:<anyone@anywhere.example>", 250, "")
}

func TestAuthRefusedOnRelayPortAndAfterPipelinedSTARTTLS(t *testing.T) {
	s := startSubmission(t, nil)
	c := dialRaw(t, s.addr(ListenerSMTP), nil)
	ext := c.ehlo("client.example.org")
	if _, ok := ext["STARTTLS"]; !ok {
		t.Fatalf("port 25 does not offer STARTTLS with a certificate: %v", ext)
	}
	// Commands pipelined behind STARTTLS were sent in the clear and must
	// be thrown away (CVE-2011-0411).
	c.send("STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
	if code, text := c.reply(); code != 220 {
		t.Fatalf("STARTTLS: %d %q", code, text)
	}
	c.handshake(s.pki.client)
	tc := c
	// No transaction survived, and a new EHLO is required (RFC 3207 §4.2).
	tc.must("RCPT TO:<alice@example.org>", 502, "5.5.1")
	tc.must("MAIL FROM:<someone@example.org>", 503, "5.5.1")
	ext = tc.ehlo("client.example.org")
	if _, ok := ext["AUTH"]; ok {
		t.Errorf("AUTH advertised on the relay/MX port: %v", ext)
	}
	tc.must("AUTH PLAIN "+"AGJvYgBib2Itc2VjcmV0", 502, "5.5.1")
	tc.must("STARTTLS", 503, "5.5.1")
	// REQUIRETLS is accepted now that the connection is encrypted.
	tc.must("MAIL FROM:<someone@example.org> REQUIRETLS", 250, "")
}

func TestRequireTLSRefusedInTheClear(t *testing.T) {
	h := start(t, nil)
	c := dialRaw(t, h.addr, nil)
	ext := c.ehlo("client.example.org")
	if _, ok := ext["REQUIRETLS"]; ok {
		t.Errorf("REQUIRETLS advertised in the clear")
	}
	c.must("MAIL FROM:<a@example.org> REQUIRETLS", 530, "5.7.10")
	c.must("MAIL FROM:<a@example.org>", 250, "")
}

func TestCredentialsReload(t *testing.T) {
	s := startSubmission(t, func(set *ingress.Settings) { set.ReloadInterval = 20 * time.Millisecond })
	login := func(user, pw string) int {
		c := dialRaw(t, s.addr(ListenerSubmissions), s.pki.client)
		c.ehlo("client.example.org")
		code, _ := c.authPlain(user, pw)
		c.cmd("QUIT")
		// Close now, not at the end of the test: the guard limits
		// connections per client.
		c.conn.Close()
		return code
	}
	if code := login("carol", "carol-secret"); code != 535 {
		t.Fatalf("carol before she exists: %d", code)
	}
	// Replace the file the way an operator's tooling does: write and rename.
	tmp := s.creds + ".new"
	writeFile(t, tmp, "bob:"+hash(t, "bob-new")+"\ncarol:"+hash(t, "carol-secret")+"\n")
	if err := os.Rename(tmp, s.creds); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for login("carol", "carol-secret") != 235 {
		if time.Now().After(deadline) {
			t.Fatal("new user not accepted within 5s of the file changing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := login("bob", "bob-secret"); code != 535 {
		t.Errorf("bob's old password still works after reload: %d", code)
	}
	if code := login("alice@example.org", "alice-secret"); code != 535 {
		t.Errorf("removed user still logs in: %d", code)
	}

	// A broken file is refused and the users in effect stay.
	writeFile(t, s.creds, "carol:not-a-hash\n")
	if err := s.srv.Reload(); err == nil || !strings.Contains(err.Error(), "ingress.submission.credentials_file") {
		t.Errorf("Reload of a broken file: %v", err)
	}
	if code := login("carol", "carol-secret"); code != 235 {
		t.Errorf("a broken file replaced the users in effect: %d", code)
	}
}
