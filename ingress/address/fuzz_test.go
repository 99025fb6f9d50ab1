package address

import (
	"strings"
	"testing"
)

// FuzzParse checks that whatever a client sends as an envelope address,
// Parse either refuses it or returns an address a deliverer can route and
// a header can carry: no controls, a local part, a domain, and the same
// result when parsed again.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"alice@example.org", "jörg@bücher.example", "\"a@b\"@example.org", "bob@[192.0.2.1]",
		"bob@[IPv6:2001:db8::1]", "victim%other@example.org", "a@b", "@example.org", "a\r\n@example.org",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, utf8 bool) {
		a, err := Parse(s, utf8)
		if err != nil {
			return
		}
		if a.Local == "" || a.Domain == "" {
			t.Fatalf("%q: empty part in %+v", s, a)
		}
		if strings.ContainsFunc(a.String(), func(r rune) bool { return r < ' ' || r == 0x7f }) {
			t.Fatalf("%q: control character accepted in %q", s, a)
		}
		if !utf8 && strings.ContainsFunc(a.String(), func(r rune) bool { return r >= 0x80 }) {
			t.Fatalf("%q: non-ASCII accepted without SMTPUTF8", s)
		}
		if !strings.HasPrefix(a.Domain, "[") && !strings.Contains(a.Domain, ".") {
			t.Fatalf("%q: unqualified domain %q accepted", s, a.Domain)
		}
		b, err := Parse(a.String(), utf8)
		if err != nil || b != a {
			t.Fatalf("%q: parsing %q again gives %+v, %v", s, a, b, err)
		}
	})
}
