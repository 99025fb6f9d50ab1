package mtasts

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n"
	p, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Enforce || p.MaxAge != 604800 || strings.Join(p.MX, ",") != "mail.example.com,*.example.net" {
		t.Fatalf("parsed %+v", p)
	}
	if p2, err := Parse([]byte(p.String())); err != nil || p2.String() != p.String() {
		t.Fatalf("round trip: %v %v", p2, err)
	}
	// LF only, spaces around values, an extension key, no final line break.
	if p, err := Parse([]byte("version: STSv1\nmode:testing\nfoo: bar\nmx:  mx.example.com \nmax_age: 0")); err != nil || p.Mode != Testing || p.MX[0] != "mx.example.com" || p.MaxAge != 0 {
		t.Fatalf("LF policy: %+v %v", p, err)
	}
	if p, err := Parse([]byte("version: STSv1\nmode: none\nmax_age: 86400\n")); err != nil || p.Mode != None {
		t.Fatalf("none without mx: %+v %v", p, err)
	}
	for _, tc := range []struct{ text, want string }{
		{"", "empty"},
		{"mode: enforce\nversion: STSv1\n", "want \"version: STSv1\" first"},
		{"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", "version \"STSv2\""},
		{"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", "mode \"strict\""},
		{"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n", "max_age \"31557601\""},
		{"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n", "max_age \"-1\""},
		{"version: STSv1\nmode: enforce\nmax_age: 10\n", "no mx pattern"},
		{"version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age"},
		{"version: STSv1\nmx: a.b\nmax_age: 5\n", "no mode"},
		{"version: STSv1\nmode: enforce\nmx: *.*.b\nmax_age: 5\n", "mx \"*.*.b\""},
		{"version: STSv1\nmode: enforce\nmx: a b\nmax_age: 5\n", "mx \"a b\""},
		{"version: STSv1\nmode: enforce\nmode: none\nmx: a.b\nmax_age: 5\n", "mode given twice"},
		{"version: STSv1\ngarbage\n", "line 2: \"garbage\" is not"},
		{"<html>not found</html>", "line 1"},
	} {
		_, err := Parse([]byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestMatches(t *testing.T) {
	p := &Policy{Mode: Enforce, MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com":  true,
		"MAIL.Example.com.": true,
		"mx.example.com":    false,
		"mx1.example.net":   true,
		"example.net":       false,
		"a.b.example.net":   false,
		".example.net":      false,
		"mx1.example.net.x": false,
	} {
		if got := p.Matches(host); got != want {
			t.Errorf("Matches(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestParseRecord(t *testing.T) {
	for txt, id := range map[string]string{
		"v=STSv1; id=20160831085700Z;": "20160831085700Z",
		"v=STSv1;id=abc":               "abc",
		"v=STSv1; id=x1; ext=value":    "x1",
	} {
		r, err := ParseRecord(txt)
		if err != nil || r.ID != id {
			t.Errorf("ParseRecord(%q) = %+v, %v; want id %q", txt, r, err, id)
		}
	}
	for txt, want := range map[string]string{
		"v=spf1 -all":                            "does not start with v=STSv1",
		"v=STSv1;":                               "no id",
		"v=STSv1; id=a-b":                        "want 1 to 32 letters",
		"v=STSv1; id=a; id=b":                    "id given twice",
		"v=STSv1; id":                            "not key=value",
		"id=1; v=STSv1":                          "does not start",
		"v=STSv1; id=" + strings.Repeat("1", 33): "want 1 to 32",
	} {
		if _, err := ParseRecord(txt); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRecord(%q) = %v, want %q", txt, err, want)
		}
	}
}

// FuzzParse: any input either fails or gives a policy that prints as a
// policy file Parse reads back to the same policy, whose patterns are
// valid and which matches a host built from each of its patterns.
func FuzzParse(f *testing.F) {
	f.Add([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"))
	f.Add([]byte("version: STSv1\nmode: none\nmax_age: 0"))
	f.Add([]byte("version: STSv1\nmode: testing\nmx: a\nmax_age: 31557600\nx: y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > MaxAgeLimit {
			t.Fatalf("max_age %d accepted", p.MaxAge)
		}
		again, err := Parse([]byte(p.String()))
		if err != nil || again.String() != p.String() {
			t.Fatalf("round trip of %q: %v", p.String(), err)
		}
		for _, pat := range p.MX {
			host := strings.Replace(pat, "*", "x", 1)
			if !p.Matches(host) {
				t.Fatalf("pattern %q does not match %q", pat, host)
			}
		}
	})
}
