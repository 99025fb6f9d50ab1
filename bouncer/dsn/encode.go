package dsn

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxText bounds reply text embedded in the report. Real replies are far
// shorter; the bound keeps a hostile server from filling the sender's mailbox.
const maxText = 1000

// header writes "Name: value" folded at spaces (RFC 5322 §2.2.3) so that lines
// stay within 78 columns where the words allow and always within 998 octets.
// value must already be printable text without CR or LF; every caller passes
// constants or the output of one of the escaping functions below.
func header(w *bytes.Buffer, name, value string) {
	const soft, hard = 78, 990
	w.WriteString(name)
	w.WriteByte(':')
	col := len(name) + 1
	for _, word := range strings.Split(value, " ") {
		if word == "" {
			continue
		}
		if col+1+len(word) > soft && col > len(name)+1 {
			w.WriteString("\r\n")
			col = 0
		}
		w.WriteByte(' ')
		col++
		for col+len(word) > hard {
			n := hard - col
			w.WriteString(word[:n])
			w.WriteString("\r\n ")
			word = word[n:]
			col = 1
		}
		w.WriteString(word)
		col += len(word)
	}
	w.WriteString("\r\n")
}

// sanitizeText makes untrusted text (a remote reply, a host name) safe to
// embed in a header field or a text line: CR, LF and tabs become spaces, runs
// of spaces collapse, and everything outside printable US-ASCII — control
// characters, non-ASCII, the backslash itself — is written as RFC 6533 §3
// embedded-unicode-char "\x{HEX}", which a reader can decode unambiguously.
// Invalid UTF-8 becomes \x{FFFD}.
func sanitizeText(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n' || r == '\t' || r == ' ':
			space = b.Len() > 0
			continue
		case space:
			b.WriteByte(' ')
			space = false
		}
		if b.Len() >= maxText {
			b.WriteString("...")
			break
		}
		if r > ' ' && r < 0x7f && r != '\\' {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x{%02X}`, r)
	}
	return b.String()
}

// xtext encodes s as RFC 3461 §4 xtext: "+" followed by two upper-case hex
// digits for every octet outside "!".."~" and for "+" and "=".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// orcpt renders a stored ORCPT ("addr-type;decoded address") as the value of
// an Original-Recipient field: the address type, then the address in xtext
// form as it travelled in the ORCPT parameter (RFC 3464 §2.3.1, §2.1.2).
func orcpt(o string) string {
	typ, addr, ok := strings.Cut(o, ";")
	if !ok || !isAtom(typ) {
		typ, addr = "rfc822", o
	}
	return typ + ";" + xtext(addr)
}

// finalRecipient is the Final-Recipient value (RFC 3464 §2.3.2). An address
// that is not plain ASCII is an SMTPUTF8 address and is reported with the
// utf-8 address type in its 7-bit utf-8-addr-xtext form (RFC 6533 §3).
func finalRecipient(addr string) string {
	ascii := true
	for i := 0; i < len(addr); i++ {
		if addr[i] <= ' ' || addr[i] >= 0x7f {
			ascii = false
			break
		}
	}
	if ascii && addr != "" {
		return "rfc822; " + addr
	}
	var b strings.Builder
	for _, r := range addr {
		// QCHAR: printable ASCII except "+", "=" and "\".
		if r > ' ' && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x{%02X}`, r)
	}
	return "utf-8; " + b.String()
}

// headerAddress makes an envelope address safe for the To field and the
// explanation: it drops anything that could end the field or the angle
// brackets around it. An SMTPUTF8 address keeps its UTF-8 (RFC 6532); such a
// DSN can only travel over SMTPUTF8 anyway, because its envelope recipient is
// that same address.
func headerAddress(addr string) string {
	var b strings.Builder
	for _, r := range addr {
		if r <= ' ' || r == 0x7f || r == '<' || r == '>' || r == utf8.RuneError {
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// validStatus reports whether s is an RFC 3463 status code: class "2", "4"
// or "5", then a subject and a detail of one to three digits.
func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.ContainsAny(parts[0], "245") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

func isAtom(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func isHostname(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '[' || c == ']' || c == ':') {
			return false
		}
	}
	return true
}

// isBoundary checks RFC 2046 §5.1.1 bchars (without space) and length.
func isBoundary(s string) bool {
	if len(s) > 60 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("'()+_,-./:=?", c) >= 0) {
			return false
		}
	}
	return true
}

func isPrintableWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func isSevenBit(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] >= 0x80 {
			return false
		}
	}
	return true
}
