package authres

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzMessage feeds client-controlled input (the message, the envelope
// sender, the HELO name) to everything in the package that parses it
// without DNS: the From domain, the DKIM signature tags, the removal of
// forged fields and the header writer. The header must stay one field, the
// body must pass StripForged untouched, and a From domain must be a
// domain.
func FuzzMessage(f *testing.F) {
	f.Add([]byte("From: a@example.org\r\nDKIM-Signature: v=1; d=example.org; s=sel; b=abc\r\n\r\nbody\r\n"), "a@example.org", "client.example")
	f.Add([]byte("Authentication-Results: mx.sluice.test; spf=pass\r\n\tfolded\r\nFrom: <x@y.z>\r\n\r\nAuthentication-Results: mx.sluice.test\r\n"), "", "h")
	f.Add([]byte("From: \"a\r\n b\" <a@b.c>, c@d.e\r\n\r\n"), "\"x;y\"@z.example", "(((\r\n")
	f.Fuzz(func(t *testing.T, msg []byte, mailFrom, helo string) {
		if d, ok := fromDomain(msg); ok && !validDomain(d) {
			t.Fatalf("From domain %q is not a domain", d)
		}
		signatures(msg)

		out := StripForged(msg, "mx.sluice.test")
		if len(out) > len(msg) {
			t.Fatalf("StripForged grew the message: %q -> %q", msg, out)
		}
		if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 && !bytes.Contains(msg[:i], []byte("\n\r\n")) && !bytes.HasPrefix(msg, []byte("\r\n")) {
			body := msg[i+4:]
			if !bytes.HasSuffix(out, body) {
				t.Fatalf("body changed: %q -> %q", msg, out)
			}
		}

		r := Result{SPF: Pass, DKIM: []DKIM{{Result: Pass, Domain: helo, Selector: mailFrom, B: helo}}, DMARC: DMARC{Result: Fail, Domain: mailFrom, Policy: "reject"}}
		h := format("mx.sluice.test", Input{Client: netip.MustParseAddr("192.0.2.1"), Helo: helo, MailFrom: mailFrom}, r)
		if !bytes.HasPrefix(h, []byte("Authentication-Results: ")) || !bytes.HasSuffix(h, []byte("\r\n")) {
			t.Fatalf("header %q", h)
		}
		for i, l := range bytes.Split(h[:len(h)-2], []byte("\r\n")) {
			if bytes.ContainsAny(l, "\r\n") || (i > 0 && (len(l) == 0 || l[0] != '\t')) {
				t.Fatalf("line %d of %q", i, h)
			}
		}
	})
}
