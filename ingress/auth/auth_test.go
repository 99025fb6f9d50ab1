package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	content := "# comment\n\nAlice@Example.org:" + hash(t, "pw") + ":example.org, Example.NET.\nbob:" + hash(t, "pw2") + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.Authenticate("alice@example.org", "pw")
	if err != nil || u.Name != "Alice@Example.org" {
		t.Fatalf("Authenticate = %+v, %v", u, err)
	}
	for _, d := range []string{"example.org", "EXAMPLE.net", "example.net."} {
		if !u.MaySendFrom(d) {
			t.Errorf("alice may not send from %q", d)
		}
	}
	for _, d := range []string{"", "other.org", "sub.example.org"} {
		if u.MaySendFrom(d) {
			t.Errorf("alice may send from %q", d)
		}
	}
	if _, err := c.Authenticate("alice@example.org", "PW"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := c.Authenticate("carol", "pw"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("unknown user: %v", err)
	}
	if u, err := c.Authenticate("bob", "pw2"); err != nil || !u.MaySendFrom("anything.example") {
		t.Errorf("bob: %+v %v", u, err)
	}
	if changed, err := c.ReloadIfChanged(); changed || err != nil {
		t.Errorf("ReloadIfChanged of an unchanged file = %v, %v", changed, err)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tt := range []struct{ content, want string }{
		{"alice\n", "line 1"},
		{"# x\nalice:plain-text\n", "line 2: user \"alice\": not a bcrypt hash"},
		{":$2a$04$abcdefghijklmnopqrstuv\n", "line 1: empty user name"},
	} {
		if _, err := parse([]byte(tt.content)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parse(%q) = %v, want %q", tt.content, err, tt.want)
		}
	}
	dup := "a:" + hash(t, "x") + "\nA:" + hash(t, "y") + "\n"
	if _, err := parse([]byte(dup)); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestLoginAndPlainMechanisms(t *testing.T) {
	var got [2]string
	check := func(n, p string) error { got = [2]string{n, p}; return nil }
	l := NewLogin(check)
	if ch, done, _ := l.Next(nil); string(ch) != "Username:" || done {
		t.Fatalf("first challenge %q", ch)
	}
	if ch, done, _ := l.Next([]byte("u")); string(ch) != "Password:" || done {
		t.Fatalf("second challenge %q", ch)
	}
	if _, done, err := l.Next([]byte("p")); !done || err != nil || got != [2]string{"u", "p"} {
		t.Fatalf("done %v err %v got %v", done, err, got)
	}
	// The user name as initial response skips the first prompt.
	l = NewLogin(check)
	if ch, _, _ := l.Next([]byte("u2")); string(ch) != "Password:" {
		t.Fatalf("with initial response: %q", ch)
	}
	p := NewPlain(check)
	if _, _, err := p.Next([]byte("someone-else\x00u\x00p")); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("PLAIN acting for another user: %v", err)
	}
}
