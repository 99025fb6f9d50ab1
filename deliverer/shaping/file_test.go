package shaping

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShippedProvidersFile reads deploy/shaping/providers.yaml as a
// deliverer does: it decodes strictly, validates (every pattern compiles),
// and gives the MX hosts of each provider its policy and its documented
// slow-down replies, and no site-wide slow-down for a reply about one
// recipient.
func TestShippedProvidersFile(t *testing.T) {
	cfg, err := ReadFile("../../deploy/shaping/providers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		domain, mx string
		maxConns   int
		slow       []string // replies, "<code> <enhanced> <text>", that must slow the site down
	}{
		{"gmail.com", "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com", 10,
			[]string{"421 4.7.0 Try again later, closing connection.", "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"}},
		{"hotmail.com", "hotmail-com.olc.protection.outlook.com", 5,
			[]string{"451 4.7.652 The mail server [192.0.2.1] has exceeded the maximum number of connections.",
				"421 4.7.0 RP-001 (BAY004-MC1F43) Unfortunately, some messages from 192.0.2.1 weren't sent.",
				"451 4.7.500 Access denied, please try again later. (AS71)"}},
		{"contoso.com", "contoso-com.mail.protection.outlook.com", 5, []string{"451 4.7.651 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation."}},
		{"yahoo.com", "mta5.am0.yahoodns.net,mta6.am0.yahoodns.net,mta7.am0.yahoodns.net", 10,
			[]string{"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints"}},
		{"aol.com", "mx-aol.mail.gm0.yahoodns.net", 10, []string{"421 4.7.0 [TS03] All messages from 192.0.2.1 will be permanently deferred"}},
		{"icloud.com", "mx01.mail.icloud.com,mx02.mail.icloud.com", 10, []string{"451 4.7.1 Service unavailable - try again later"}},
	} {
		s := r.Site(c.domain, c.mx)
		if s.Policy.MaxConnections != c.maxConns || s.Policy.InitialConnections > s.Policy.MaxConnections ||
			s.Policy.MaxMessagesPerConnection == 0 || s.Policy.SuspendFor <= 0 {
			t.Errorf("%s: policy %+v, want max_connections %d, a start below it, a message limit and a suspension", c.domain, s.Policy, c.maxConns)
		}
		for _, reply := range c.slow {
			code, rest, _ := strings.Cut(reply, " ")
			enh, text, _ := strings.Cut(rest, " ")
			n, _ := strconv.Atoi(code)
			if !s.SlowDown(n, enh, text) {
				t.Errorf("%s: %q does not slow the site down", c.domain, reply)
			}
		}
	}
	// One recipient receiving too fast is not the site asking us to slow down.
	g := r.Site("gmail.com", "gmail-smtp-in.l.google.com")
	if g.SlowDown(450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.") {
		t.Error("Gmail's per-recipient 450 4.2.1 suspends the whole site")
	}
	if other := r.Site("example.org", "mx.example.org"); other.Policy.MaxConnections != 20 || other.Policy.InitialConnections != 5 || len(other.Policy.SlowDownPatterns) != 0 {
		t.Errorf("a site the file does not name: %+v, want the defaults", other.Policy)
	}
}

// TestReadFileStrict: a misspelt key of a shaping file is an error naming
// the file, the key and its line; so is a section name at its top level
// and a file naming another.
func TestReadFileStrict(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ yaml, want string }{
		{"sites:\n  google.com:\n    max_connections: 5\n    max_mesages_per_connection: 9\n",
			`line 4: unknown key "max_mesages_per_connection" in sites.google.com (did you mean "max_messages_per_connection"?)`},
		{"deliverer:\n  shaping: {}\n", `line 1: unknown key "deliverer" at the top level`},
		{"file: other.yaml\n", "a shaping file cannot name another"},
		{"domains:\n  tiny.example: {max_connections: 2000}\n", "deliverer.shaping.domains.tiny.example.max_connections: 2000, want 1..1000"},
		{"slow_down_patterns: ['(unclosed']\n", "deliverer.shaping.slow_down_patterns[0]: error parsing regexp"},
	} {
		path := filepath.Join(dir, "shaping.yaml")
		if err := os.WriteFile(path, []byte(c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ReadFile(path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v, want one naming %s and containing %q", c.yaml, err, path, c.want)
		}
	}
	if _, err := ReadFile(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "deliverer.shaping.file") {
		t.Errorf("missing file: %v", err)
	}
	// An empty file is the defaults.
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if c, err := ReadFile(empty); err != nil || c.Default.MaxConnections != 20 || c.LeaseTTL != 6*time.Second {
		t.Errorf("empty file: %+v, %v", c, err)
	}
}
