package smtpd

import (
	"bytes"
	"fmt"
	"testing"
)

func TestExtensionsAdvertised(t *testing.T) {
	h := start(t, nil)
	c := dialRaw(t, h.addr, nil)
	ext := c.ehlo("client.example.org")
	for _, k := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8", "DSN", "MT-PRIORITY"} {
		if _, ok := ext[k]; !ok {
			t.Errorf("%s not advertised: %v", k, ext)
		}
	}
	if ext["SIZE"] != "52428800" {
		t.Errorf("SIZE %q, want the configured limit", ext["SIZE"])
	}
	// Without a certificate there is no STARTTLS to offer.
	if _, ok := ext["STARTTLS"]; ok {
		t.Error("STARTTLS advertised without a certificate")
	}
}

// TestMTPriorityOnMailFrom sends RFC 6710's MT-PRIORITY where the RFC puts
// it, on MAIL FROM, and puts the same text in DATA content and in a BDAT
// chunk, where it must stay byte for byte.
func TestMTPriorityOnMailFrom(t *testing.T) {
	h := start(t, nil)
	c := dialRaw(t, h.addr, nil)
	c.ehlo("client.example.org")

	c.must("MAIL FROM:<a@example.org> MT-PRIORITY=12", 501, "5.5.4")
	c.must("MAIL FROM:<a@example.org> MT-PRIORITY=1 MT-PRIORITY=2", 501, "5.5.4")
	c.must("MAIL FROM:<a@example.org> MT-PRIORITY=x", 501, "5.5.4")
	// The parameter is taken off only after the path: an address holding
	// the same text is not touched.
	c.must(`MAIL FROM:<"MT-PRIORITY=9 x"@example.org> SIZE=200`, 250, "")
	c.must("RSET", 250, "")

	c.must("MAIL FROM:<a@example.org> SIZE=300 mt-priority=-3 BODY=8BITMIME", 250, "")
	c.must("RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.test", 250, "")
	content := "Subject: prio\r\n\r\nMAIL FROM:<x@example.org> MT-PRIORITY=5\r\nRCPT TO:<y@example.org>\r\n..dot\r\n"
	code, text := c.data(content)
	if code != 250 {
		t.Fatalf("DATA: %d %q", code, text)
	}
	m, _ := h.stored(queueID(t, text))
	if !m.GetHasMtPriority() || m.GetMtPriority() != -3 {
		t.Errorf("mt_priority %d (has %v), want -3", m.GetMtPriority(), m.GetHasMtPriority())
	}
	wantBody := "Subject: prio\r\n\r\nMAIL FROM:<x@example.org> MT-PRIORITY=5\r\nRCPT TO:<y@example.org>\r\n.dot\r\n"
	if !bytes.HasSuffix(m.GetBody(), []byte("\r\n"+wantBody)) {
		t.Errorf("DATA content changed: %q", m.GetBody())
	}
	if m.GetBodyType() != "8BITMIME" || m.GetRecipients()[0].GetNotify() == 0 {
		t.Errorf("body %q notify %d", m.GetBodyType(), m.GetRecipients()[0].GetNotify())
	}

	// BDAT (RFC 3030): a chunk is raw octets, even when a line in it looks
	// like a command, and a chunk may end in the middle of a line.
	c.must("MAIL FROM:<a@example.org> MT-PRIORITY=4", 250, "")
	c.must("RCPT TO:<b@example.test>", 250, "")
	chunk1 := "Subject: chunks\r\n\r\nMAIL FROM:<x@example.org> MT-PRIORITY=-9\r\nSTARTTLS\r\nDATA\r\nhalf a li"
	chunk2 := "ne\r\n.\r\nQUIT\r\n"
	c.send(fmt.Sprintf("BDAT %d\r\n%s", len(chunk1), chunk1))
	if code, text := c.reply(); code != 250 {
		t.Fatalf("BDAT 1: %d %q", code, text)
	}
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk2), chunk2))
	code, text = c.reply()
	if code != 250 {
		t.Fatalf("BDAT LAST: %d %q", code, text)
	}
	m, _ = h.stored(queueID(t, text))
	if !bytes.HasSuffix(m.GetBody(), []byte("\r\n"+chunk1+chunk2)) {
		t.Errorf("BDAT content changed: %q", m.GetBody())
	}
	if !m.GetHasMtPriority() || m.GetMtPriority() != 4 {
		t.Errorf("mt_priority %d (has %v), want 4", m.GetMtPriority(), m.GetHasMtPriority())
	}
	// The session is still in command state and usable.
	c.must("NOOP", 250, "")
}
