package received

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestHeaderGolden(t *testing.T) {
	date := time.Date(2026, 3, 14, 15, 9, 26, 0, time.FixedZone("", 2*3600))
	tests := []struct {
		name string
		f    Fields
		// long marks a case with a clause longer than a line, which RFC
		// 5322 lets exceed 78 characters (but never 998).
		long bool
	}{
		{"one-recipient", Fields{
			Helo: "client.example.org", Client: netip.MustParseAddr("192.0.2.10"), ReverseName: "client.example.org",
			By: "mx.sluice.test", Protocol: Protocol(false, false), ID: "01HZY3K5Q7T9V1W3X5Y7Z9A1", For: "bob@example.test", Date: date,
		}, false},
		{"no-reverse-many-recipients", Fields{
			Helo: "[192.0.2.10]", Client: netip.MustParseAddr("192.0.2.10"),
			By: "mx.sluice.test", Protocol: Protocol(true, true), ID: "01HZY3K5Q7T9V1W3X5Y7Z9A1", Date: date,
		}, false},
		{"ipv6-hostile-helo", Fields{
			Helo: "evil\r\nBcc: x(y)", Client: netip.MustParseAddr("2001:db8::25"),
			By: "mx.sluice.test", Protocol: Protocol(true, false), ID: "01HZY3K5Q7T9V1W3X5Y7Z9A1",
			For: "a-rather-long-recipient-address-that-needs-folding@subdomain.example.test", Date: date,
		}, true},
		{"utf8-recipient", Fields{
			Helo: "client.example.org", Client: netip.MustParseAddr("::ffff:198.51.100.4"),
			By: "mx.sluice.test", Protocol: Protocol(false, true), ID: "01HZY3K5Q7T9V1W3X5Y7Z9A1", For: "jörg@bücher.example", Date: date,
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.f.Header()
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("header differs from %s:\ngot:\n%s\nwant:\n%s", path, got, want)
			}
			checkWellFormed(t, got, tt.long)
		})
	}
}

// checkWellFormed checks the RFC 5322 rules a golden file could hide: CRLF
// line ends only, continuation lines start with white space, and lines stay
// within 78 characters (998 when long is set).
func checkWellFormed(t *testing.T, h []byte, long bool) {
	t.Helper()
	if !bytes.HasSuffix(h, []byte("\r\n")) {
		t.Errorf("header does not end in CRLF")
	}
	s := strings.TrimSuffix(string(h), "\r\n")
	if strings.Count(s, "\n") != strings.Count(s, "\r\n") || strings.Count(s, "\r") != strings.Count(s, "\r\n") {
		t.Errorf("bare CR or LF in %q", h)
	}
	for i, line := range strings.Split(s, "\r\n") {
		if i > 0 && line[0] != '\t' && line[0] != ' ' {
			t.Errorf("line %d is not a continuation: %q", i, line)
		}
		n := len([]rune(strings.ReplaceAll(line, "\t", "        ")))
		if n > 998 || (n > lineLimit && !long) {
			t.Errorf("line %d has %d characters: %q", i, n, line)
		}
	}
}

func TestProtocol(t *testing.T) {
	for _, tt := range []struct {
		tls, auth bool
		want      string
	}{{false, false, "ESMTP"}, {true, false, "ESMTPS"}, {false, true, "ESMTPA"}, {true, true, "ESMTPSA"}} {
		if got := Protocol(tt.tls, tt.auth); got != tt.want {
			t.Errorf("Protocol(%v, %v) = %s, want %s", tt.tls, tt.auth, got, tt.want)
		}
	}
}
