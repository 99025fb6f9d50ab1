package smtpconn

import (
	"strings"
	"testing"
)

// FuzzTakePriority checks the MAIL line rewriting on any client line: it
// never panics, a taken priority is in RFC 6710's range, and the line
// handed to go-smtp keeps the command and the path and loses only the
// parameter (so it never gets longer).
func FuzzTakePriority(f *testing.F) {
	for _, s := range []string{
		"MAIL FROM:<a@example.org> MT-PRIORITY=3",
		"MAIL FROM:<a@example.org> SIZE=10 mt-priority=-9 BODY=8BITMIME",
		`MAIL FROM:<"x MT-PRIORITY=9"@example.org>`,
		"MAIL FROM:<a@example.org> MT-PRIORITY=3 MT-PRIORITY=4",
		"MAIL FROM:<a@example.org> MT-PRIORITY=+10",
		"MAIL FROM:<> MT-PRIORITY=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		out, p := takePriority(line)
		if p.Given && p.Err == nil && (p.Value < -9 || p.Value > 9) {
			t.Fatalf("%q: priority %d out of range", line, p.Value)
		}
		if !p.Given && out != line {
			t.Fatalf("%q rewritten to %q without a priority", line, out)
		}
		if len(out) > len(line) {
			t.Fatalf("%q grew to %q", line, out)
		}
		if p.Given && len(line) >= 10 && !strings.EqualFold(out[:min(len(out), 10)], line[:10]) {
			t.Fatalf("%q: command changed to %q", line, out)
		}
	})
}
