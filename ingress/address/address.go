// Package address checks the envelope addresses of an SMTP transaction
// (RFC 5321 §4.1.2, RFC 6531 for internationalized addresses) after go-smtp
// has parsed the path, so that the queue only ever holds addresses a
// deliverer can route: a local part, an "@" and a fully qualified domain or
// an address literal.
package address

import (
	"errors"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Errors returned by Parse; test with errors.Is.
var (
	// ErrUnqualified is an address without a domain, or with a domain that
	// is not fully qualified (no dot), such as "bob" or "bob@localhost".
	ErrUnqualified = errors.New("address is not fully qualified")
	// ErrMalformed is an address whose syntax is wrong.
	ErrMalformed = errors.New("address is malformed")
	// ErrNonASCII is a non-ASCII address in a transaction that did not
	// declare SMTPUTF8 (RFC 6531 §3.5).
	ErrNonASCII = errors.New("address is not ASCII and SMTPUTF8 was not given")
)

// Address is a checked envelope address.
type Address struct {
	// Local is the local part as go-smtp returns it (quotes removed).
	Local string
	// Domain is the domain or address literal, as given.
	Domain string
}

// String returns local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// Parse checks s, an address as go-smtp hands it to Mail or Rcpt. utf8 says
// whether the transaction declared SMTPUTF8.
func Parse(s string, utf8Allowed bool) (Address, error) {
	if !utf8.ValidString(s) {
		return Address{}, ErrMalformed
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return Address{}, ErrMalformed
		}
	}
	if !utf8Allowed && !isASCII(s) {
		return Address{}, ErrNonASCII
	}
	// A quoted local part may itself contain "@", so the domain starts
	// after the last one.
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return Address{}, ErrUnqualified
	}
	a := Address{Local: s[:at], Domain: s[at+1:]}
	if a.Local == "" || len(a.Local) > 64*4 {
		return Address{}, ErrMalformed
	}
	if a.Domain == "" {
		return Address{}, ErrUnqualified
	}
	if strings.HasPrefix(a.Domain, "[") {
		if !validLiteral(a.Domain) {
			return Address{}, ErrMalformed
		}
		return a, nil
	}
	if err := checkDomain(a.Domain); err != nil {
		return Address{}, err
	}
	return a, nil
}

// checkDomain applies RFC 5321 §4.1.2 Domain syntax (letters, digits and
// hyphens in dot-separated labels; U-labels are allowed byte-wise, RFC 6531
// §3.3) and insists on at least two labels, because a single label cannot
// be routed on the Internet.
func checkDomain(d string) error {
	if len(d) > 255 {
		return ErrMalformed
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return ErrMalformed
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c >= 0x80:
			default:
				return ErrMalformed
			}
		}
	}
	if len(labels) < 2 {
		return ErrUnqualified
	}
	return nil
}

// validLiteral accepts RFC 5321 §4.1.3 address literals: [192.0.2.1] and
// [IPv6:2001:db8::1].
func validLiteral(d string) bool {
	if len(d) < 3 || d[len(d)-1] != ']' {
		return false
	}
	inner := d[1 : len(d)-1]
	if v6, ok := strings.CutPrefix(inner, "IPv6:"); ok {
		a, err := netip.ParseAddr(v6)
		return err == nil && a.Is6() && a.Zone() == ""
	}
	a, err := netip.ParseAddr(inner)
	return err == nil && a.Is4()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
