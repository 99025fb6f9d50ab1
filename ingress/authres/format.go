package authres

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// format writes the Authentication-Results field (RFC 8601 §2.2), one
// method per line:
//
//	Authentication-Results: mx.example.net;
//		spf=pass smtp.mailfrom=alice@example.org;
//		dkim=pass header.d=example.org header.s=sel header.b=AbCdEfGh;
//		dmarc=pass (p=reject) header.from=example.org
//
// Every value that came from the client is made safe: control characters
// are dropped and anything that is not a plain token or address is quoted,
// so nothing can end the field or start another.
func format(authServID string, in Input, r Result) []byte {
	var parts []string
	spfPart := "spf=" + r.SPF
	if in.MailFrom != "" {
		spfPart += " smtp.mailfrom=" + pvalue(in.MailFrom)
	} else {
		spfPart += " smtp.helo=" + pvalue(in.Helo)
	}
	parts = append(parts, spfPart)
	if len(r.DKIM) == 0 {
		parts = append(parts, "dkim=none")
	}
	for _, d := range r.DKIM {
		p := "dkim=" + d.Result
		if d.Domain != "" {
			p += " header.d=" + pvalue(d.Domain)
		}
		if d.Selector != "" {
			p += " header.s=" + pvalue(d.Selector)
		}
		if d.B != "" {
			p += " header.b=" + pvalue(d.B)
		}
		parts = append(parts, p)
	}
	dm := "dmarc=" + r.DMARC.Result
	if r.DMARC.Policy != "" {
		dm += " (p=" + string(r.DMARC.Policy) + ")"
	}
	if r.DMARC.Domain != "" {
		dm += " header.from=" + pvalue(r.DMARC.Domain)
	}
	parts = append(parts, dm)

	var b bytes.Buffer
	b.WriteString("Authentication-Results: ")
	b.WriteString(pvalue(authServID))
	for _, p := range parts {
		b.WriteString(";\r\n\t")
		b.WriteString(p)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// pvalue renders a property value (RFC 8601 §2.2 pvalue): as it is when it
// is a token or an address made of safe characters, otherwise as a quoted
// string (RFC 2045 value).
func pvalue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, s)
	if s == "" {
		return `""`
	}
	plain := strings.Count(s, "@") <= 1
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r >= 0x80 || strings.ContainsRune(".-_+@/", r)) {
			plain = false
		}
	}
	if plain {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// StripForged removes Authentication-Results fields that claim to come
// from authServID from the header of msg: RFC 8601 §5 requires a border
// MTA to remove such fields from incoming mail, or a sender could forge our
// verdicts. Other fields, and the body, are left as they are.
func StripForged(msg []byte, authServID string) []byte {
	var out bytes.Buffer
	dropping := false
	rest := msg
	for len(rest) > 0 {
		i := bytes.Index(rest, []byte("\r\n"))
		var line []byte
		if i < 0 {
			line, rest = rest, nil
		} else {
			line, rest = rest[:i+2], rest[i+2:]
		}
		if len(line) == 2 || len(bytes.TrimRight(line, "\r\n")) == 0 {
			// The empty line: the body follows unchanged.
			out.Write(line)
			out.Write(rest)
			return out.Bytes()
		}
		if line[0] == ' ' || line[0] == '\t' {
			if !dropping {
				out.Write(line)
			}
			continue
		}
		dropping = false
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(strings.TrimSpace(string(name)), "Authentication-Results") && claims(string(value), authServID) {
			dropping = true
			continue
		}
		out.Write(line)
	}
	return out.Bytes()
}

// claims reports whether an Authentication-Results value (its first line)
// starts with authServID, ignoring a comment before it.
func claims(value, authServID string) bool {
	v := strings.TrimSpace(value)
	for strings.HasPrefix(v, "(") {
		end := strings.IndexByte(v, ')')
		if end < 0 {
			return false
		}
		v = strings.TrimSpace(v[end+1:])
	}
	id, _, _ := strings.Cut(v, ";")
	id = strings.Trim(strings.TrimSpace(id), `"`)
	return strings.EqualFold(id, authServID)
}
