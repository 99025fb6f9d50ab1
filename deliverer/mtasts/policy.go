// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (RFC 8461): the _mta-sts TXT record that announces a policy and
// its id, the policy file served over HTTPS, and the matching of MX host
// names against the policy's patterns. It knows nothing of caching or of
// delivery: package tlspolicy decides what a policy means for an attempt.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Mode is a policy's mode (RFC 8461 §3.2).
type Mode string

const (
	// Enforce: deliver only to MX hosts that match the policy, over TLS
	// with a certificate valid for the MX host name.
	Enforce Mode = "enforce"
	// Testing: deliver as without a policy, and report failures (TLS-RPT).
	Testing Mode = "testing"
	// None: the domain withdrew its policy.
	None Mode = "none"
)

// MaxAgeLimit is the largest max_age a policy may have: about one year
// (RFC 8461 §3.2).
const MaxAgeLimit = 31557600

// MaxPolicySize bounds a policy file. RFC 8461 §3.3 lets senders limit it;
// real policies are a few hundred bytes.
const MaxPolicySize = 64 << 10

// Policy is a parsed policy file.
type Policy struct {
	Mode Mode `json:"mode"`
	// MX are the patterns MX host names must match: "mail.example.com" or
	// "*.example.com", lower case, without a final dot.
	MX []string `json:"mx"`
	// MaxAge is how long the policy may be cached, in seconds.
	MaxAge int64 `json:"max_age"`
}

// Parse reads a policy file (RFC 8461 §3.2): "key: value" lines separated
// by CRLF or LF; version STSv1 first; mode, max_age and at least one mx
// (unless the mode is none) required; unknown keys ignored, as the RFC asks
// of future extensions.
func Parse(text []byte) (*Policy, error) {
	if len(text) > MaxPolicySize {
		return nil, fmt.Errorf("mta-sts policy: %d bytes, more than %d", len(text), MaxPolicySize)
	}
	lines := strings.Split(strings.ReplaceAll(string(text), "\r\n", "\n"), "\n")
	p := &Policy{}
	var seenVersion, seenMode, seenAge bool
	for i, l := range lines {
		if l == "" && i == len(lines)-1 {
			break // a final line break
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy: line %d: %q is not \"key: value\"", i+1, clip(l))
		}
		k = strings.TrimSpace(k)
		v = strings.Trim(v, " \t")
		if i == 0 && k != "version" {
			return nil, fmt.Errorf("mta-sts policy: line 1: %q, want \"version: STSv1\" first", clip(l))
		}
		switch k {
		case "version":
			if i != 0 || v != "STSv1" {
				return nil, fmt.Errorf("mta-sts policy: line %d: version %q, want STSv1 on the first line", i+1, clip(v))
			}
			seenVersion = true
		case "mode":
			if seenMode {
				return nil, fmt.Errorf("mta-sts policy: line %d: mode given twice", i+1)
			}
			switch m := Mode(v); m {
			case Enforce, Testing, None:
				p.Mode = m
			default:
				return nil, fmt.Errorf("mta-sts policy: line %d: mode %q, want enforce, testing or none", i+1, clip(v))
			}
			seenMode = true
		case "max_age":
			if seenAge {
				return nil, fmt.Errorf("mta-sts policy: line %d: max_age given twice", i+1)
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || n > MaxAgeLimit || len(v) > 10 || strings.HasPrefix(v, "+") {
				return nil, fmt.Errorf("mta-sts policy: line %d: max_age %q, want 0..%d seconds", i+1, clip(v), MaxAgeLimit)
			}
			p.MaxAge = n
			seenAge = true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("mta-sts policy: line %d: mx %q is not a host name or *.domain", i+1, clip(v))
			}
			p.MX = append(p.MX, pat)
		default:
			// RFC 8461 §3.2: extension keys are ignored.
		}
	}
	switch {
	case !seenVersion:
		return nil, errors.New("mta-sts policy: empty")
	case !seenMode:
		return nil, errors.New("mta-sts policy: no mode")
	case !seenAge:
		return nil, errors.New("mta-sts policy: no max_age")
	case len(p.MX) == 0 && p.Mode != None:
		return nil, errors.New("mta-sts policy: no mx pattern")
	}
	return p, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// validPattern accepts a host name or "*." followed by one.
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Matches reports whether the MX host name matches one of the policy's
// patterns (RFC 8461 §4.1): exactly, or, for "*.example.com", when the host
// is one label under example.com (the wildcard covers the left-most label
// only, so it matches mx.example.com but neither example.com nor
// a.b.example.com).
func (p *Policy) Matches(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// String is the policy file that Parse would read back.
func (p *Policy) String() string {
	var b strings.Builder
	b.WriteString("version: STSv1\r\nmode: " + string(p.Mode) + "\r\n")
	for _, m := range p.MX {
		b.WriteString("mx: " + m + "\r\n")
	}
	b.WriteString("max_age: " + strconv.FormatInt(p.MaxAge, 10) + "\r\n")
	return b.String()
}

// Record is the content of a domain's _mta-sts TXT record (RFC 8461 §3.1).
type Record struct {
	// ID changes whenever the policy does; up to 32 letters and digits.
	ID string
}

// ParseRecord reads one TXT record: "v=STSv1; id=20160831085700Z;" with
// optional extensions. It returns an error for a string that is not an
// STSv1 record at all, which RFC 8461 §3.1 says to ignore.
func ParseRecord(txt string) (*Record, error) {
	fields := strings.Split(txt, ";")
	first := strings.TrimSpace(fields[0])
	if first != "v=STSv1" {
		return nil, fmt.Errorf("mta-sts record: %q does not start with v=STSv1", clip(txt))
	}
	r := &Record{}
	for _, f := range fields[1:] {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("mta-sts record: field %q is not key=value", clip(f))
		}
		if k == "id" {
			if r.ID != "" {
				return nil, errors.New("mta-sts record: id given twice")
			}
			if v == "" || len(v) > 32 || strings.IndexFunc(v, func(c rune) bool {
				return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9')
			}) >= 0 {
				return nil, fmt.Errorf("mta-sts record: id %q, want 1 to 32 letters and digits", clip(v))
			}
			r.ID = v
		}
	}
	if r.ID == "" {
		return nil, errors.New("mta-sts record: no id")
	}
	return r, nil
}
