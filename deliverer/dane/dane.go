// Package dane verifies an SMTP server's certificate against its TLSA
// records, as RFC 7672 (SMTP security via opportunistic DANE TLS) asks of
// a sending MTA. Only the two usages RFC 7672 §3.1 gives to SMTP are used:
// DANE-EE(3), where the record names the server's own certificate or key
// and neither names nor dates are checked (§3.1.1), and DANE-TA(2), where
// the record names a trust anchor the server's chain must lead to, and the
// certificate must be valid now for the MX host name (§3.1.2, §3.2.2).
// PKIX-TA(0) and PKIX-EE(1) records are unusable for SMTP (§3.1.3).
//
// Looking the records up, and deciding whether the DNS answer can be
// trusted (DNSSEC), is package tlspolicy's job.
package dane

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Certificate usages, selectors and matching types (RFC 6698 §2.1, RFC 7218).
const (
	UsagePKIXTA = 0
	UsagePKIXEE = 1
	UsageDANETA = 2
	UsageDANEEE = 3

	SelectorCert = 0
	SelectorSPKI = 1

	MatchExact  = 0
	MatchSHA256 = 1
	MatchSHA512 = 2
)

// Record is one TLSA record.
type Record struct {
	Usage, Selector, Matching uint8
	// Data is the certificate association data.
	Data []byte
}

// FromRR converts a DNS TLSA record.
func FromRR(rr *dns.TLSA) (Record, error) {
	data, err := hex.DecodeString(rr.Certificate)
	if err != nil {
		return Record{}, fmt.Errorf("TLSA %d %d %d: association data is not hex", rr.Usage, rr.Selector, rr.MatchingType)
	}
	return Record{Usage: rr.Usage, Selector: rr.Selector, Matching: rr.MatchingType, Data: data}, nil
}

// Parse reads a record in presentation form: "3 1 1 <hex>" (spaces inside
// the hex allowed, as in zone files). Only digits, hex letters, spaces and
// tabs are accepted: in a zone file a line break ends the record and ';'
// starts a comment, so "3 1 1 00;11" or "3 1 1 00\r11" is refused rather
// than read as 0011.
func Parse(s string) (Record, error) {
	for _, c := range s {
		if !isHexDigit(c) && c != ' ' && c != '\t' {
			return Record{}, fmt.Errorf("TLSA %q: character %q is not allowed (three numbers and hex data, separated by spaces or tabs)", clip(s), c)
		}
	}
	f := strings.Fields(s)
	if len(f) < 4 {
		return Record{}, fmt.Errorf("TLSA %q: want usage, selector, matching type and data", clip(s))
	}
	var n [3]uint8
	for i := range 3 {
		v, err := strconv.ParseUint(f[i], 10, 8)
		if err != nil || len(f[i]) > 3 {
			return Record{}, fmt.Errorf("TLSA %q: field %d is not a number 0..255", clip(s), i+1)
		}
		n[i] = uint8(v)
	}
	data, err := hex.DecodeString(strings.Join(f[3:], ""))
	if err != nil {
		return Record{}, fmt.Errorf("TLSA %q: association data is not hex", clip(s))
	}
	return Record{Usage: n[0], Selector: n[1], Matching: n[2], Data: data}, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// String is the presentation form, with the data abbreviated when long.
func (r Record) String() string {
	h := hex.EncodeToString(r.Data)
	if len(h) > 24 {
		h = h[:12] + "..." + h[len(h)-8:]
	}
	return fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.Matching, h)
}

// Usable reports whether RFC 7672 lets SMTP use the record: a DANE-TA or
// DANE-EE usage, a known selector and matching type, and data of the
// length the matching type implies (§3.1.3; RFC 6698 §2.1).
func (r Record) Usable() bool {
	if r.Usage != UsageDANETA && r.Usage != UsageDANEEE {
		return false
	}
	if r.Selector != SelectorCert && r.Selector != SelectorSPKI {
		return false
	}
	switch r.Matching {
	case MatchExact:
		return len(r.Data) > 0
	case MatchSHA256:
		return len(r.Data) == sha256.Size
	case MatchSHA512:
		return len(r.Data) == sha512.Size
	}
	return false
}

// Usable returns the records SMTP may use, in their order.
func Usable(rs []Record) []Record {
	var out []Record
	for _, r := range rs {
		if r.Usable() {
			out = append(out, r)
		}
	}
	return out
}

// matches reports whether the record designates cert.
func (r Record) matches(cert *x509.Certificate) bool {
	var content []byte
	switch r.Selector {
	case SelectorCert:
		content = cert.Raw
	case SelectorSPKI:
		content = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.Matching {
	case MatchExact:
		return bytes.Equal(content, r.Data)
	case MatchSHA256:
		h := sha256.Sum256(content)
		return bytes.Equal(h[:], r.Data)
	case MatchSHA512:
		h := sha512.Sum512(content)
		return bytes.Equal(h[:], r.Data)
	}
	return false
}

// ErrNoUsable is returned by Verify for a set without a usable record:
// RFC 7672 §2.2 then asks for TLS without authentication.
var ErrNoUsable = errors.New("no usable TLSA record")

// MismatchError says why no record verified the server.
type MismatchError struct {
	Host string
	// Causes has one line per kind of record tried.
	Causes []string
}

func (e *MismatchError) Error() string {
	s := "TLSA mismatch for " + e.Host
	if len(e.Causes) > 0 {
		s += " (" + strings.Join(e.Causes, "; ") + ")"
	}
	return s
}

// Match says which record verified a server.
type Match struct {
	Record Record
	// TrustAnchor is set for DANE-TA: the subject of the anchor.
	TrustAnchor string
}

// Verify checks the server's chain (leaf first, as sent in the handshake)
// against the usable records for host, the MX host name (the TLSA base
// domain, RFC 7672 §3.2.2), at time now. One matching record suffices
// (RFC 6698 §4.1).
func Verify(records []Record, chain []*x509.Certificate, host string, now time.Time) (Match, error) {
	usable := Usable(records)
	if len(usable) == 0 {
		return Match{}, ErrNoUsable
	}
	if len(chain) == 0 {
		return Match{}, &MismatchError{Host: host, Causes: []string{"the server sent no certificate"}}
	}
	leaf := chain[0]
	var ee, ta bool
	var taErr error
	for _, r := range usable {
		if r.Usage == UsageDANEEE {
			ee = true
			// §3.1.1: the key is the identity; names and validity
			// dates do not matter.
			if r.matches(leaf) {
				return Match{Record: r}, nil
			}
			continue
		}
		ta = true
		for i, c := range chain {
			if i == 0 && len(chain) > 1 || !r.matches(c) {
				continue
			}
			// The anchor is in the chain the server sent: verify the
			// leaf up to it, with the host name and dates.
			roots := x509.NewCertPool()
			roots.AddCert(c)
			inter := x509.NewCertPool()
			for _, m := range chain[1:i] {
				inter.AddCert(m)
			}
			_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter,
				CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err == nil {
				return Match{Record: r, TrustAnchor: c.Subject.String()}, nil
			}
			if taErr == nil {
				taErr = err
			}
		}
	}
	e := &MismatchError{Host: host}
	if ee {
		e.Causes = append(e.Causes, "no DANE-EE record matches the server's certificate")
	}
	if ta {
		if taErr != nil {
			e.Causes = append(e.Causes, "DANE-TA: "+strings.TrimPrefix(taErr.Error(), "x509: "))
		} else {
			e.Causes = append(e.Causes, "no DANE-TA record matches a certificate of the server's chain")
		}
	}
	return Match{}, e
}

func isHexDigit(c rune) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
