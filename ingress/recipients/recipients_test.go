package recipients

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rcpts")
	if err := os.WriteFile(path, []byte("# list\nAlice@Example.org\n@lists.example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path, "+")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		local, domain string
		want          bool
	}{
		{"alice", "example.org", true},
		{"ALICE", "EXAMPLE.ORG.", true},
		{"alice+tag", "example.org", true},
		{"+tag", "example.org", false},
		{"bob", "example.org", false},
		{"anyone", "lists.example.org", true},
		{"alice%other.test", "example.org", false},
		{"x%other.test", "lists.example.org", false},
		{"other.test!x", "lists.example.org", false},
		{"x@other.test", "lists.example.org", false},
		{"alice", "other.org", false},
	} {
		if got := l.Has(tt.local, tt.domain); got != tt.want {
			t.Errorf("Has(%q, %q) = %v, want %v", tt.local, tt.domain, got, tt.want)
		}
	}
	if err := os.WriteFile(path, []byte("not an address\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Reload(); err == nil {
		t.Error("a broken list was accepted")
	}
	if !l.Has("alice", "example.org") {
		t.Error("a broken list replaced the one in effect")
	}
}
