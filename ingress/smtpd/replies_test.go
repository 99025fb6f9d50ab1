package smtpd

import (
	"strings"
	"testing"
)

// TestPreciseEnhancedCodes: MAIL and RCPT are acknowledged with the RFC 3463
// codes an MTA gives (2.1.0 sender, 2.1.5 recipient), DATA with the queue id.
func TestPreciseEnhancedCodes(t *testing.T) {
	h := start(t, nil)
	rc := dialRaw(t, h.addr, nil)
	rc.ehlo("client.example.org")
	if text := rc.must("MAIL FROM:<a@example.org>", 250, "2.1.0"); text != "2.1.0 Ok" {
		t.Fatalf("MAIL reply %q", text)
	}
	if text := rc.must("RCPT TO:<b@example.net>", 250, "2.1.5"); text != "2.1.5 Ok" {
		t.Fatalf("RCPT reply %q", text)
	}
	// A refusal passes through untouched.
	rc.must("RCPT TO:<bad>", 501, "")
	rc.must("DATA", 354, "")
	text := rc.must("Subject: x\r\n\r\nhello\r\n.", 250, "2.0.0")
	if !strings.Contains(text, "queued as") {
		t.Fatalf("DATA reply %q", text)
	}
	rc.must("RSET", 250, "")
}
