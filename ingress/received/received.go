// Package received writes the Received header field the ingress prepends to
// every message it accepts (RFC 5321 §4.4, RFC 5322 §3.6.7). The header is
// the message's own record of the hop: who handed it to us, when, over what
// protocol and under which queue id, so the header analyser and a postmaster
// can follow a message across systems.
package received

import (
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"
)

// lineLimit is RFC 5322 §2.1.1's recommended line length, CRLF excluded.
const lineLimit = 78

// Fields are the facts the header records.
type Fields struct {
	// Helo is the name the client gave in EHLO or HELO.
	Helo string
	// Client is the client's IP address.
	Client netip.Addr
	// ReverseName is the client's verified reverse DNS name, empty when
	// unknown; the TCP-info then holds only the address literal.
	ReverseName string
	// By is our host name.
	By string
	// Protocol is the "with" keyword, see Protocol.
	Protocol string
	// ID is the queue id.
	ID string
	// For is the recipient, given only when the transaction has exactly one:
	// naming several would disclose Bcc recipients to each other.
	For string
	// Date is when the message was received.
	Date time.Time
}

// Protocol returns the RFC 3848 "with" keyword for an ESMTP session.
func Protocol(tls, authenticated bool) string {
	switch {
	case tls && authenticated:
		return "ESMTPSA"
	case tls:
		return "ESMTPS"
	case authenticated:
		return "ESMTPA"
	}
	return "ESMTP"
}

// Header returns the complete header field, folded, ending in CRLF:
//
//	Received: from <helo> (<reverse-name> [<ip>])
//		by <hostname> (Sluice) with ESMTP id <queue-id>
//		for <rcpt>; <RFC 5322 date>
func (f Fields) Header() []byte {
	tcpInfo := literal(f.Client)
	if f.ReverseName != "" {
		tcpInfo = clean(f.ReverseName, false) + " " + tcpInfo
	}
	// Clauses are kept whole; the folder breaks lines only between them,
	// and only where RFC 5322 allows folding white space.
	clauses := []string{
		"from " + clean(f.Helo, false) + " (" + tcpInfo + ")",
		"by " + clean(f.By, false) + " (Sluice)",
		"with " + f.Protocol,
		"id " + clean(f.ID, false),
	}
	if f.For != "" {
		clauses = append(clauses, "for <"+clean(f.For, true)+">")
	}
	clauses[len(clauses)-1] += ";"
	clauses = append(clauses, f.Date.Format(time.RFC1123Z))

	var b strings.Builder
	b.WriteString("Received:")
	line := len("Received:")
	for i, c := range clauses {
		// "from" always starts on the first line, "by" always on the
		// second, which is what readers of Received headers expect.
		if i > 0 && (i == 1 || line+1+utf8.RuneCountInString(c) > lineLimit) {
			b.WriteString("\r\n\t")
			line = 8 // a tab counts as up to 8 columns
		} else {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(c)
		line += utf8.RuneCountInString(c)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// literal returns the RFC 5321 §4.1.3 address literal of ip.
func literal(ip netip.Addr) string {
	if !ip.IsValid() {
		return "[unknown]"
	}
	ip = ip.Unmap()
	if ip.Is6() {
		return "[IPv6:" + ip.WithZone("").String() + "]"
	}
	return "[" + ip.String() + "]"
}

// clean makes s safe inside a header field: client-supplied words must not
// be able to end the field, open a comment or start another header, so
// controls, white space and parentheses become "?". Non-ASCII survives only
// where allowed (addresses of SMTPUTF8 transactions, RFC 6532).
func clean(s string, allowUTF8 bool) string {
	if s == "" {
		return "unknown"
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r <= ' ' || r == 0x7f || r == '(' || r == ')' || r == utf8.RuneError:
			b.WriteByte('?')
		case r >= 0x80 && !allowUTF8:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
		if b.Len() > 255 {
			break
		}
	}
	return b.String()
}
