package main

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestPasswd(t *testing.T) {
	var out, errs bytes.Buffer
	code := run([]string{"passwd", "-cost", "10", "-domains", "Example.com, example.org", "alice@example.com"},
		strings.NewReader("correct horse battery\n"), &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	f := strings.Split(strings.TrimSpace(out.String()), ":")
	if len(f) != 3 || f[0] != "alice@example.com" || f[2] != "example.com,example.org" {
		t.Fatalf("line %q, want name:hash:domains", out.String())
	}
	if err := bcrypt.CompareHashAndPassword([]byte(f[1]), []byte("correct horse battery")); err != nil {
		t.Fatalf("hash does not match the password: %v", err)
	}
	if c, _ := bcrypt.Cost([]byte(f[1])); c != 10 {
		t.Errorf("cost %d, want 10", c)
	}

	for _, tc := range []struct {
		args  []string
		stdin string
		code  int
		want  string
	}{
		{[]string{"passwd", "bob"}, "short\n", 1, "at least 12"},
		{[]string{"passwd", "bob"}, "", 1, "nothing there"},
		{[]string{"passwd", "b:ob"}, "long enough password\n", 2, "without ':'"},
		{[]string{"passwd"}, "long enough password\n", 2, "want one NAME"},
		{[]string{"passwd", "-cost", "4", "bob"}, "long enough password\n", 2, "-cost 4"},
		{[]string{"passwd", "-domains", "not a domain", "bob"}, "long enough password\n", 2, "is not a domain"},
		{[]string{"passwd", "bob"}, strings.Repeat("x", 73) + "\n", 1, "at most 72"},
	} {
		var out, errs bytes.Buffer
		code := run(tc.args, strings.NewReader(tc.stdin), &out, &errs)
		if code != tc.code || !strings.Contains(errs.String(), tc.want) || out.Len() != 0 {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit %d and %q", tc.args, code, errs.String(), out.String(), tc.code, tc.want)
		}
	}
}
