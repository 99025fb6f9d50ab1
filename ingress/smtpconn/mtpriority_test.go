package smtpconn

import "testing"

func TestTakePriority(t *testing.T) {
	tests := []struct {
		line, want string
		given      bool
		value      int
		bad        bool
	}{
		{"MAIL FROM:<a@b.example> MT-PRIORITY=3", "MAIL FROM:<a@b.example>", true, 3, false},
		{"mail from:<a@b.example> size=10 mt-priority=-9 body=8BITMIME", "mail from:<a@b.example> size=10 body=8BITMIME", true, -9, false},
		{"MAIL FROM: <> MT-PRIORITY=+2", "MAIL FROM: <>", true, 2, false},
		{"MAIL  FROM:<a@b.example> MT-PRIORITY=0", "MAIL  FROM:<a@b.example>", true, 0, false},
		{"MAIL FROM:<@relay.example:a@b.example> MT-PRIORITY=1", "MAIL FROM:<@relay.example:a@b.example>", true, 1, false},
		{"MAIL FROM:<a@b.example> MT-PRIORITY=10", "MAIL FROM:<a@b.example>", true, 0, true},
		{"MAIL FROM:<a@b.example> MT-PRIORITY=", "MAIL FROM:<a@b.example>", true, 0, true},
		{"MAIL FROM:<a@b.example> MT-PRIORITY=1 MT-PRIORITY=1", "MAIL FROM:<a@b.example>", true, 1, true},
		// Text inside the path is never a parameter.
		{`MAIL FROM:<"x MT-PRIORITY=3"@b.example>`, `MAIL FROM:<"x MT-PRIORITY=3"@b.example>`, false, 0, false},
		{`MAIL FROM:<"x\" MT-PRIORITY=3"@b.example> SIZE=1`, `MAIL FROM:<"x\" MT-PRIORITY=3"@b.example> SIZE=1`, false, 0, false},
		// Lines go-smtp cannot parse are left for it to refuse.
		{"MAIL FROM:<a@b.example MT-PRIORITY=3", "MAIL FROM:<a@b.example MT-PRIORITY=3", false, 0, false},
		{"MAIL TO:<a@b.example> MT-PRIORITY=3", "MAIL TO:<a@b.example> MT-PRIORITY=3", false, 0, false},
		{"RCPT TO:<a@b.example> MT-PRIORITY=3", "RCPT TO:<a@b.example> MT-PRIORITY=3", false, 0, false},
	}
	for _, tt := range tests {
		got, p := takePriority(tt.line)
		if got != tt.want || p.Given != tt.given || (p.Err != nil) != tt.bad || (!tt.bad && p.Value != tt.value) {
			t.Errorf("takePriority(%q) = %q, %+v; want %q given=%v value=%d bad=%v", tt.line, got, p, tt.want, tt.given, tt.value, tt.bad)
		}
	}
}

// TestContentEnd checks that content ends exactly where go-smtp's reader
// ends it: only at CRLF "." CRLF (or "." CRLF first), never at the bare
// LF/CR sequences of SMTP smuggling.
func TestContentEnd(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		done bool
	}{
		{".\r\n", 3, true},
		{"a\r\n.\r\nMAIL", 6, true},
		{"a\n.\nMAIL", 8, false},
		{"a\n.\r\nMAIL", 9, false},
		{"a\r\n.\nMAIL", 9, false},
		{"a\r.\rMAIL", 8, false},
		{"a\r\r\n.\r\nX", 8, false},
		{"a\r\n..\r\n", 7, false},
	}
	for _, tt := range tests {
		var s contentState
		n, done := s.scan([]byte(tt.in))
		if n != tt.n || done != tt.done {
			t.Errorf("scan(%q) = %d, %v; want %d, %v", tt.in, n, done, tt.n, tt.done)
		}
	}
	// The end may arrive split across reads.
	var s contentState
	if _, done := s.scan([]byte("body\r\n.")); done {
		t.Fatal("ended early")
	}
	if n, done := s.scan([]byte("\r\nQUIT\r\n")); !done || n != 2 {
		t.Errorf("split end: %d %v", n, done)
	}
}
