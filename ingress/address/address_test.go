package address

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		utf8    bool
		wantErr error
		domain  string
	}{
		{"bob@example.test", false, nil, "example.test"},
		{"Bob.Smith+tag@Mail.Example.TEST", false, nil, "Mail.Example.TEST"},
		{"a@b@example.test", false, nil, "example.test"}, // from a quoted local part
		{"bob@[192.0.2.1]", false, nil, "[192.0.2.1]"},
		{"bob@[IPv6:2001:db8::1]", false, nil, "[IPv6:2001:db8::1]"},
		{"bob@xn--bcher-kva.example", false, nil, "xn--bcher-kva.example"},
		{"jörg@bücher.example", true, nil, "bücher.example"},
		{"jörg@bücher.example", false, ErrNonASCII, ""},
		{"bob", false, ErrUnqualified, ""},
		{"bob@", false, ErrUnqualified, ""},
		{"bob@localhost", false, ErrUnqualified, ""},
		{"@example.test", false, ErrMalformed, ""},
		{"bob@example..test", false, ErrMalformed, ""},
		{"bob@-example.test", false, ErrMalformed, ""},
		{"bob@example-.test", false, ErrMalformed, ""},
		{"bob@exa_mple.test", false, ErrMalformed, ""},
		{"bob@example.test.", false, ErrMalformed, ""},
		{"bob@[300.0.0.1]", false, ErrMalformed, ""},
		{"bob@[2001:db8::1]", false, ErrMalformed, ""},
		{"bob@[IPv6:192.0.2.1]", false, ErrMalformed, ""},
		{"bo\x01b@example.test", false, ErrMalformed, ""},
		{"bob@ex\xffample.test", true, ErrMalformed, ""},
	}
	for _, tt := range tests {
		a, err := Parse(tt.in, tt.utf8)
		if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
			t.Errorf("Parse(%q, %v) error = %v, want %v", tt.in, tt.utf8, err, tt.wantErr)
			continue
		}
		if err == nil && a.Domain != tt.domain {
			t.Errorf("Parse(%q).Domain = %q, want %q", tt.in, a.Domain, tt.domain)
		}
		if err == nil && a.String() != tt.in {
			t.Errorf("Parse(%q).String() = %q", tt.in, a.String())
		}
	}
}
