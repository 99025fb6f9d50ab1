package headers

import (
	"net/mail"
	"net/netip"
	"strings"
	"time"
)

// HopFields is one parsed Received header field (RFC 5322 §3.6.7, RFC
// 5321 §4.4):
//
//	Received: from <name> (<tcp-info>) by <name> (<comment>) via <link>
//	    with <protocol> id <id> for <path>; <date-time>
//
// Real headers bend the grammar in every way (extra words, comments
// anywhere, a comment after the date, no date at all), so the parser is
// tolerant: it never fails, it records what it could not understand in
// Problems.
type HopFields struct {
	From     string `json:"from,omitempty"`
	FromInfo string `json:"from_info,omitempty"` // the comment after from: reverse name and [address]
	FromAddr string `json:"from_addr,omitempty"` // the address literal of FromInfo
	By       string `json:"by,omitempty"`
	ByInfo   string `json:"by_info,omitempty"`
	Via      string `json:"via,omitempty"`
	With     string `json:"with,omitempty"`
	ID       string `json:"id,omitempty"`
	For      string `json:"for,omitempty"`
	// Date is the time stamp; zero when missing or unreadable.
	Date    time.Time `json:"date,omitzero"`
	DateRaw string    `json:"date_raw,omitempty"`
	// TLS is true when the protocol (RFC 3848 ESMTPS, ESMTPSA, ...) or a
	// comment (Postfix "using TLSv1.3", Exchange "version=TLS1_2") says
	// the hop was encrypted.
	TLS bool `json:"tls"`
	// Sluice is true for the header our ingress writes: "by <host>
	// (Sluice)"; its ID is then the queue id.
	Sluice   bool     `json:"sluice,omitempty"`
	Problems []string `json:"problems,omitempty"`
}

// rtoken is a lexical element of a Received field.
type rtoken struct {
	kind byte // 'w' word, 'c' comment, 'a' angle address, ';' separator
	text string
}

// lexReceived splits a field value into words, comments (nested, with
// quoted pairs), angle addresses and semicolons.
func lexReceived(v string) ([]rtoken, []string) {
	var toks []rtoken
	var problems []string
	i := 0
	for i < len(v) {
		c := v[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '(':
			depth, j := 0, i
			var b strings.Builder
			for ; j < len(v); j++ {
				ch := v[j]
				if ch == '\\' && j+1 < len(v) {
					b.WriteByte(v[j+1])
					j++
					continue
				}
				if ch == '(' {
					depth++
					if depth == 1 {
						continue
					}
				}
				if ch == ')' {
					depth--
					if depth == 0 {
						break
					}
				}
				b.WriteByte(ch)
			}
			if depth != 0 {
				problems = append(problems, "unterminated comment")
			}
			toks = append(toks, rtoken{'c', strings.Join(strings.Fields(b.String()), " ")})
			i = j + 1
		case c == '<':
			j := strings.IndexByte(v[i:], '>')
			if j < 0 {
				problems = append(problems, "unterminated <address>")
				toks = append(toks, rtoken{'a', v[i+1:]})
				i = len(v)
				continue
			}
			toks = append(toks, rtoken{'a', v[i+1 : i+j]})
			i += j + 1
		case c == ';':
			toks = append(toks, rtoken{';', ";"})
			i++
		case c == ')':
			problems = append(problems, "unbalanced \")\"")
			i++
		case c == '"':
			j := i + 1
			var b strings.Builder
			for ; j < len(v) && v[j] != '"'; j++ {
				if v[j] == '\\' && j+1 < len(v) {
					j++
				}
				b.WriteByte(v[j])
			}
			if j >= len(v) {
				problems = append(problems, "unterminated quoted string")
			}
			toks = append(toks, rtoken{'w', b.String()})
			i = j + 1
		default:
			j := i
			for j < len(v) && !strings.ContainsRune(" \t\r\n();<\"", rune(v[j])) {
				j++
			}
			toks = append(toks, rtoken{'w', v[i:j]})
			i = j
		}
	}
	return toks, problems
}

// parseReceived parses the value of one Received field.
func parseReceived(v string) HopFields {
	var h HopFields
	toks, problems := lexReceived(v)
	h.Problems = problems
	// The date follows the last semicolon outside comments.
	semi := -1
	for i, t := range toks {
		if t.kind == ';' {
			semi = i
		}
	}
	clauseToks, dateToks := toks, []rtoken(nil)
	if semi >= 0 {
		clauseToks, dateToks = toks[:semi], toks[semi+1:]
	}
	var comments []string
	current := ""
	set := func(key, word string) {
		p := h.field(key)
		if p == nil {
			return
		}
		if *p == "" {
			*p = word
		} else {
			*p += " " + word
		}
	}
	for _, t := range clauseToks {
		switch t.kind {
		case 'c':
			comments = append(comments, t.text)
			switch current {
			case "from":
				h.FromInfo = joinInfo(h.FromInfo, t.text)
			case "by":
				h.ByInfo = joinInfo(h.ByInfo, t.text)
				if strings.EqualFold(t.text, "Sluice") {
					h.Sluice = true
				}
			}
		case 'a':
			if current == "" {
				h.Problems = append(h.Problems, "address outside a clause: <"+t.text+">")
				continue
			}
			set(current, "<"+t.text+">")
		case ';':
			// An earlier semicolon: tolerated, the last one ends the clauses.
		case 'w':
			kw := strings.ToLower(t.text)
			switch kw {
			case "from", "by", "via", "with", "id", "for":
				if p := h.field(kw); p != nil && *p != "" {
					h.Problems = append(h.Problems, "clause \""+kw+"\" given twice")
				}
				current = kw
				continue
			}
			if current == "" {
				h.Problems = append(h.Problems, "text before the first clause: "+t.text)
				continue
			}
			set(current, t.text)
		}
	}
	for _, t := range dateToks {
		if t.kind == 'c' {
			comments = append(comments, t.text)
		}
	}
	h.For = strings.TrimSuffix(strings.TrimPrefix(h.For, "<"), ">")
	h.FromAddr = addressInfo(h.FromInfo)
	h.TLS = tlsProtocol(h.With)
	for _, c := range comments {
		if tlsComment(c) {
			h.TLS = true
		}
	}
	if semi < 0 {
		h.Problems = append(h.Problems, "no date (no \";\")")
		return h
	}
	var words []string
	for _, t := range dateToks {
		if t.kind == 'w' {
			words = append(words, t.text)
		}
	}
	h.DateRaw = strings.Join(words, " ")
	if h.DateRaw == "" {
		h.Problems = append(h.Problems, "empty date")
		return h
	}
	d, ok := parseHopDate(h.DateRaw)
	if !ok {
		h.Problems = append(h.Problems, "unreadable date \""+h.DateRaw+"\"")
		return h
	}
	h.Date = d
	return h
}

func (h *HopFields) field(key string) *string {
	switch key {
	case "from":
		return &h.From
	case "by":
		return &h.By
	case "via":
		return &h.Via
	case "with":
		return &h.With
	case "id":
		return &h.ID
	case "for":
		return &h.For
	}
	return nil
}

func joinInfo(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// addressInfo finds the address in a TCP-info comment: "[192.0.2.1]",
// "[IPv6:2001:db8::1]", or a bare address (qmail, Exchange).
func addressInfo(info string) string {
	for _, f := range strings.FieldsFunc(info, func(r rune) bool { return r == ' ' || r == ';' || r == ',' || r == '=' }) {
		f = strings.Trim(f, "[]")
		if len(f) > 5 && strings.EqualFold(f[:5], "ipv6:") {
			f = f[5:]
		}
		if a, err := netip.ParseAddr(f); err == nil {
			return a.String()
		}
	}
	return ""
}

// tlsProtocol reports whether a "with" protocol says TLS (RFC 3848 §2:
// the "S" suffix, with "A" for authenticated).
func tlsProtocol(with string) bool {
	first, _, _ := strings.Cut(with, " ")
	switch strings.ToUpper(first) {
	case "ESMTPS", "ESMTPSA", "LMTPS", "LMTPSA", "UTF8SMTPS", "UTF8SMTPSA", "UTF8LMTPS", "UTF8LMTPSA", "HTTPS":
		return true
	}
	return false
}

// tlsComment recognizes the TLS notes common MTAs write in comments:
// Postfix "(using TLSv1.3 with cipher ...)", Exchange and Gmail
// "(version=TLS1_2, cipher=...)", Exim "(TLS1.3) tls TLS_AES_...".
func tlsComment(c string) bool {
	for _, f := range strings.FieldsFunc(c, func(r rune) bool { return r == ' ' || r == ',' || r == ';' || r == '(' || r == ')' }) {
		l := strings.ToLower(f)
		if strings.HasPrefix(l, "tlsv1") || strings.HasPrefix(l, "tls1") || strings.HasPrefix(l, "version=tls") {
			return true
		}
	}
	return false
}

// hopDateLayouts are the forms seen in the wild after comments are
// removed, past what net/mail.ParseDate reads.
var hopDateLayouts = []string{
	"Mon, 2 Jan 2006 15:04:05 -0700 MST",
	"2 Jan 2006 15:04:05 -0700 MST",
	"Mon, 2 Jan 2006 15:04:05 MST",
	"Mon, 2 Jan 2006 15:04 -0700",
	"Mon Jan 2 15:04:05 2006 -0700",
	"Mon Jan 2 15:04:05 -0700 2006",
	"Mon, 2 Jan 06 15:04:05 -0700",
	time.RFC3339,
}

// parseHopDate reads an RFC 5322 date-time, tolerating the usual
// deviations: a zone name after the offset, two-digit years, missing
// weekdays, extra spaces.
func parseHopDate(s string) (time.Time, bool) {
	s = strings.Join(strings.Fields(s), " ")
	if t, err := mail.ParseDate(s); err == nil {
		return t, true
	}
	for _, l := range hopDateLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
