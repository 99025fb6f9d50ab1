package smtpd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/services/config"
)

// startMX runs the relay/MX listener for accepted.test and catchall.test
// with loopback untrusted, so every test client is a stranger from the
// Internet.
func startMX(t *testing.T, list string) (*harness, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "recipients")
	writeFile(t, path, list)
	h := start(t, func(s *ingress.Settings, _ *config.Queue) {
		s.TrustedNetworks = []string{"10.0.0.0/8"}
		s.MX = ingress.MX{AcceptedDomains: []string{"accepted.test", "catchall.test"}, RecipientsFile: path, RecipientDelimiter: "+"}
		s.ReloadInterval = 20 * time.Millisecond
	})
	return h, path
}

const mxList = "# users\nalice@accepted.test\nPostmaster@Accepted.Test\n@catchall.test\n"

func TestMXValidatesRecipientsAndReloads(t *testing.T) {
	h, path := startMX(t, mxList)
	c := dialRaw(t, h.addr, nil)
	c.ehlo("mail.sender.example")
	c.must("MAIL FROM:<someone@sender.example> MT-PRIORITY=6", 250, "")
	c.must("RCPT TO:<alice@accepted.test>", 250, "")
	c.must("RCPT TO:<ALICE+news@Accepted.Test>", 250, "")
	c.must("RCPT TO:<postmaster@accepted.test>", 250, "")
	c.must("RCPT TO:<anything@catchall.test>", 250, "")
	c.must("RCPT TO:<nobody@accepted.test>", 550, "5.1.1")
	code, text := c.data("Subject: inbound\r\n\r\nhello\r\n")
	if code != 250 {
		t.Fatalf("DATA: %d %q", code, text)
	}
	m, _ := h.stored(queueID(t, text))
	if len(m.GetRecipients()) != 4 {
		t.Errorf("recipients %v", m.GetRecipients())
	}
	// A stranger's MT-PRIORITY is not honoured (local policy, RFC 6710).
	if m.GetHasMtPriority() {
		t.Errorf("untrusted client's MT-PRIORITY stored: %d", m.GetMtPriority())
	}

	// nobody is added; the list is polled and reloaded.
	tmp := path + ".new"
	writeFile(t, tmp, mxList+"nobody@accepted.test\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.must("MAIL FROM:<someone@sender.example>", 250, "")
		code, _ := c.cmd("RCPT TO:<nobody@accepted.test>")
		c.must("RSET", 250, "")
		if code == 250 {
			break
		}
		if code != 550 || time.Now().After(deadline) {
			t.Fatalf("RCPT after the list changed: %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := h.counter("sluice_ingress_refused_total", ""); n < 1 {
		t.Errorf("unknown users not counted")
	}
}

// TestNoOpenRelay tries the classic tricks for making an MX relay, from a
// client that is neither trusted nor authenticated. Each must be refused;
// the ones that name an accepted domain are local users that do not exist.
func TestNoOpenRelay(t *testing.T) {
	h, _ := startMX(t, mxList)
	c := dialRaw(t, h.addr, nil)
	c.ehlo("mail.sender.example")
	c.must("MAIL FROM:<spammer@sender.example>", 250, "")
	tests := []struct {
		name     string
		rcpt     string
		code     int
		enhanced string
	}{
		{"plain foreign domain", "<victim@other.test>", 554, "5.7.1"},
		{"percent hack", "<victim%other.test@accepted.test>", 550, "5.1.1"},
		{"percent hack, upper case", "<VICTIM%OTHER.TEST@ACCEPTED.TEST>", 550, "5.1.1"},
		{"percent hack, trailing dot", "<victim%other.test@accepted.test.>", 501, "5.1.3"},
		{"percent hack to a catch-all", "<victim%other.test@catchall.test>", 550, "5.1.1"},
		{"bang path", "<other.test!victim@accepted.test>", 550, "5.1.1"},
		{"bang path to a catch-all", "<other.test!victim@catchall.test>", 550, "5.1.1"},
		{"quoted local part with @", `<"victim@other.test"@accepted.test>`, 550, "5.1.1"},
		{"quoted local part with @, foreign", `<"alice@accepted.test"@other.test>`, 554, "5.7.1"},
		{"two @ unquoted", "<victim@other.test@accepted.test>", 550, "5.1.1"},
		{"source route through us", "<@accepted.test:victim@other.test>", 554, "5.7.1"},
		{"source route list", "<@accepted.test,@mx.accepted.test:victim@other.test>", 554, "5.7.1"},
		{"unqualified", "<victim>", 501, "5.5.2"},
		{"local host", "<victim@localhost>", 501, "5.1.3"},
		{"IPv4 literal", "<victim@[192.0.2.1]>", 554, "5.7.1"},
		{"IPv4 literal of loopback", "<victim@[127.0.0.1]>", 554, "5.7.1"},
		{"IPv6 literal", "<victim@[IPv6:2001:db8::1]>", 554, "5.7.1"},
		{"accepted domain as a suffix", "<victim@other.accepted.test>", 554, "5.7.1"},
		{"accepted domain as a prefix", "<victim@accepted.test.other.test>", 554, "5.7.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, text := c.cmd("RCPT TO:" + tt.rcpt)
			if code != tt.code || !strings.HasPrefix(text, tt.enhanced+" ") {
				t.Errorf("RCPT TO:%s: %d %q, want %d %s", tt.rcpt, code, text, tt.code, tt.enhanced)
			}
		})
	}
	// Nothing was accepted, so there is nothing to send.
	if code, _ := c.cmd("DATA"); code < 500 {
		t.Errorf("DATA answered %d with no recipients", code)
	}
	if n := h.streamMsgs(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	// A legitimate local user still works: the refusals above were policy,
	// not a broken listener. A source route is ignored (RFC 5321 §4.1.1.3).
	c.must("RSET", 250, "")
	c.must("MAIL FROM:<someone@sender.example>", 250, "")
	c.must("RCPT TO:<@other.test:alice@accepted.test>", 250, "")
	if n := h.counter("sluice_ingress_refused_total", ""); n < int64(len(tests)-3) {
		t.Errorf("refusals counted %d", n)
	}
}
