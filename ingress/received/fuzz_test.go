package received

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzHeader feeds client-supplied words (the HELO name, the recipient,
// a reverse name) into the Received header and checks that the result is
// always exactly one header field: it starts with "Received:", every line
// but the first is a folded continuation, lines end in CRLF, and no bare CR
// or LF or unbalanced parenthesis escapes into the message.
func FuzzHeader(f *testing.F) {
	f.Add("client.example.org", "bob@example.test", "")
	f.Add("evil\r\nX-Injected: yes", "bob@example.test\r\n\r\nbody", "a(b")
	f.Add("(((", "jörg@bücher.example", ")))")
	f.Fuzz(func(t *testing.T, helo, rcpt, reverse string) {
		h := Fields{
			Helo: helo, Client: netip.MustParseAddr("192.0.2.1"), ReverseName: reverse,
			By: "mx.sluice.test", Protocol: Protocol(true, false), ID: "0123456789abcdefghijklmn",
			For: rcpt, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		}.Header()
		if !bytes.HasPrefix(h, []byte("Received: ")) || !bytes.HasSuffix(h, []byte("\r\n")) {
			t.Fatalf("header %q", h)
		}
		lines := bytes.Split(h[:len(h)-2], []byte("\r\n"))
		for i, l := range lines {
			if bytes.ContainsAny(l, "\r\n") {
				t.Fatalf("bare CR or LF in line %d of %q", i, h)
			}
			if i > 0 && (len(l) == 0 || l[0] != '\t') {
				t.Fatalf("line %d of %q is not a continuation", i, h)
			}
		}
		if bytes.Count(h, []byte("(")) != bytes.Count(h, []byte(")")) {
			t.Fatalf("unbalanced comment in %q", h)
		}
	})
}
