package tlsrpt

import (
	"strings"
	"testing"
)

// TestParseRecord: the mailto addresses and https URLs of a TLS-RPT
// record (RFC 8460 §3), in order; plain http and other schemes left out.
func TestParseRecord(t *testing.T) {
	for _, c := range []struct {
		txt           string
		mailto, https string // comma-joined
		ok            bool
	}{
		{"v=TLSRPTv1; rua=mailto:tlsrpt@example.test", "tlsrpt@example.test", "", true},
		{"v=TLSRPTv1;rua=mailto:a@example.test,https://reports.example.test/v1/tlsrpt", "a@example.test", "https://reports.example.test/v1/tlsrpt", true},
		{"v=TLSRPTv1; rua=https://r.example.test/x , mailto:a@example.test?subject=tlsrpt, mailto:b@example.test",
			"a@example.test,b@example.test", "https://r.example.test/x", true},
		// The scheme is case-insensitive; ports and queries are kept.
		{"v=TLSRPTv1; rua=HTTPS://r.example.test:8443/in?k=v", "", "https://r.example.test:8443/in?k=v", true},
		// A URL named twice gets the report once.
		{"v=TLSRPTv1; rua=https://r.example.test/x,https://r.example.test/x", "", "https://r.example.test/x", true},
		// Plain http never.
		{"v=TLSRPTv1; rua=http://r.example.test/x,mailto:a@example.test", "a@example.test", "", true},
		{"v=TLSRPTv1; rua=http://r.example.test/x", "", "", true},
		// Not URLs one could POST to.
		{"v=TLSRPTv1; rua=https://,https:///path,https://r.example.test/a b,ftp://r.example.test/x,https:r.example.test", "", "", true},
		{"v=TLSRPTv1", "", "", true},
		{"v=TLSRPTv1; rua=mailto:not-an-address", "", "", true},
		{"v=STSv1; id=20260301", "", "", false},
		{"rua=mailto:a@example.test; v=TLSRPTv1", "", "", false},
	} {
		mailto, https, ok := ParseRecord(c.txt)
		if strings.Join(mailto, ",") != c.mailto || strings.Join(https, ",") != c.https || ok != c.ok {
			t.Errorf("ParseRecord(%q) = %q, %q, %v; want %q, %q, %v", c.txt, mailto, https, ok, c.mailto, c.https, c.ok)
		}
	}
}
