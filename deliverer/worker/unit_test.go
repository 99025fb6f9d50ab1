package worker

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestCycle(t *testing.T) {
	tests := []struct {
		weights []int
		skip    map[int]bool
		turns   int
		want    string
	}{
		{[]int{8, 3, 1}, nil, 12, "HNHHBHNHHHNH"},
		{[]int{1, 1, 1}, nil, 6, "HNBHNB"},
		{[]int{8, 3, 1}, map[int]bool{0: true}, 8, "NNBNNNBN"},
		{[]int{8, 3, 1}, map[int]bool{0: true, 1: true}, 3, "BBB"},
		{[]int{8, 3, 1}, map[int]bool{0: true, 1: true, 2: true}, 1, "-"},
	}
	for _, tc := range tests {
		c := newCycle(tc.weights...)
		var b strings.Builder
		for range tc.turns {
			switch i := c.next(func(i int) bool { return tc.skip[i] }); i {
			case -1:
				b.WriteByte('-')
			default:
				b.WriteByte("HNB"[i])
			}
		}
		got := b.String()
		if got != tc.want {
			t.Errorf("weights %v skip %v: %s, want %s", tc.weights, tc.skip, got, tc.want)
		}
	}
}

func TestHeaderTap(t *testing.T) {
	tests := []struct{ in, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
		{"A: 1\nB: 2\n\nbody\n", "A: 1\nB: 2\n"},
		{"\r\nbody only\r\n", ""},
		{"A: 1\r\nno body", "A: 1\r\nno body"},
	}
	for _, tc := range tests {
		// Unread source: Headers reads it.
		tap := newHeaderTap(strings.NewReader(tc.in))
		if got := string(tap.Headers()); got != tc.want {
			t.Errorf("unread %q: %q, want %q", tc.in, got, tc.want)
		}
		// Fully read by the delivery first, in small pieces.
		tap = newHeaderTap(strings.NewReader(tc.in))
		out, _ := io.ReadAll(io.LimitReader(tap, 1<<20))
		if string(out) != tc.in {
			t.Errorf("tap changed the content: %q", out)
		}
		if got := string(tap.Headers()); got != tc.want {
			t.Errorf("read %q: %q, want %q", tc.in, got, tc.want)
		}
	}
	huge := bytes.Repeat([]byte("X: y\r\n"), maxHeaderSection)
	if got := newHeaderTap(bytes.NewReader(huge)).Headers(); len(got) != maxHeaderSection {
		t.Errorf("header section of %d bytes not capped: %d", len(huge), len(got))
	}
}

func TestSettingsValidate(t *testing.T) {
	ok := DefaultSettings()
	ok.Hostname = "mx.example.org"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with a hostname: %v", err)
	}
	tests := []struct {
		field string
		mod   func(*Settings)
	}{
		{"deliverer.hostname", func(s *Settings) { s.Hostname = "" }},
		{"deliverer.dns_server", func(s *Settings) { s.DNSServer = "8.8.8.8" }},
		{"deliverer.dns_timeout", func(s *Settings) { s.DNSTimeout = 0 }},
		{"deliverer.smtp_port", func(s *Settings) { s.SMTPPort = 70000 }},
		{"deliverer.routes.example.test", func(s *Settings) { s.Routes = map[string]string{"example.test": "host-without-port"} }},
		{"deliverer.concurrency", func(s *Settings) { s.Concurrency = 0 }},
		{"deliverer.weights.bulk", func(s *Settings) { s.Weights.Bulk = 0 }},
		{"deliverer.ack_wait", func(s *Settings) { s.AckWait = 10 * time.Millisecond }},
		{"deliverer.connect_timeout", func(s *Settings) { s.ConnectTimeout = -1 }},
		{"deliverer.command_timeout", func(s *Settings) { s.CommandTimeout = 0 }},
		{"deliverer.log_level", func(s *Settings) { s.LogLevel = "loud" }},
	}
	for _, tc := range tests {
		s := ok
		tc.mod(&s)
		err := s.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
}

// TestFetchBackoff: failing fetches pause 100 ms, doubling up to
// fetchBackoffMax, with a log line for the first failure and then one per
// 10 s; a success starts again from 100 ms.
func TestFetchBackoff(t *testing.T) {
	var b backoff
	t0 := time.Unix(1_700_000_000, 0)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 2 * time.Second, 2 * time.Second}
	var reports []int
	for i, w := range want {
		pause, n, report := b.fail(t0.Add(time.Duration(i) * 3 * time.Second))
		if pause != w || n != i+1 {
			t.Fatalf("failure %d: pause %v, count %d; want %v, %d", i+1, pause, n, w, i+1)
		}
		if report {
			reports = append(reports, n)
		}
	}
	// Failures at 0, 3, 6, ..., 18 s: logged at 0 s and 12 s.
	if fmt.Sprint(reports) != "[1 5]" {
		t.Fatalf("logged failures %v, want [1 5]", reports)
	}
	if n := b.reset(); n != len(want) {
		t.Fatalf("reset after %d failures returned %d", len(want), n)
	}
	if pause, n, report := b.fail(t0.Add(time.Minute)); pause != 100*time.Millisecond || n != 1 || !report {
		t.Fatalf("after a success: %v, %d, %v", pause, n, report)
	}
}
