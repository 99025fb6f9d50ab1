package smtpconn

import (
	"strings"
)

// takePriority removes the MT-PRIORITY parameter (RFC 6710 §3) from a MAIL
// command line and returns the line go-smtp should see with the value. A
// line without the parameter, or one go-smtp could not parse anyway, comes
// back unchanged with Given false.
//
// The path is skipped with the same grammar go-smtp's parser uses, so that
// text inside the address (a quoted local part may contain spaces and
// "MT-PRIORITY=") is never taken for a parameter.
func takePriority(text string) (string, Priority) {
	if len(text) < 5 || !strings.EqualFold(text[:5], "MAIL ") {
		return text, Priority{}
	}
	rest := strings.TrimLeft(text[5:], " \t")
	if len(rest) < 5 || !strings.EqualFold(rest[:5], "FROM:") {
		return text, Priority{}
	}
	rest = rest[5:]
	path := strings.TrimLeft(rest, " \t")
	start := len(text) - len(path)
	end, ok := pathEnd(path)
	if !ok {
		return text, Priority{}
	}
	var (
		p    Priority
		kept []string
	)
	for _, f := range strings.Fields(path[end:]) {
		key, value, _ := strings.Cut(f, "=")
		if !strings.EqualFold(key, "MT-PRIORITY") {
			kept = append(kept, f)
			continue
		}
		if p.Given {
			// RFC 5321 §4.1.1.11 allows a parameter once per command.
			p.Err = ErrBadPriority
			continue
		}
		p.Given = true
		v, ok := parsePriority(value)
		if !ok {
			p.Err = ErrBadPriority
			continue
		}
		p.Value = v
	}
	if !p.Given {
		return text, Priority{}
	}
	out := text[:start+end]
	if len(kept) > 0 {
		out += " " + strings.Join(kept, " ")
	}
	return out, p
}

// parsePriority accepts RFC 6710's priority-value: an optional sign and one
// digit, -9 to 9.
func parsePriority(v string) (int, bool) {
	neg := false
	switch {
	case strings.HasPrefix(v, "-"):
		neg, v = true, v[1:]
	case strings.HasPrefix(v, "+"):
		v = v[1:]
	}
	if len(v) != 1 || v[0] < '0' || v[0] > '9' {
		return 0, false
	}
	n := int(v[0] - '0')
	if neg {
		n = -n
	}
	return n, true
}

// pathEnd returns the length of the reverse-path at the start of s, as
// go-smtp's parseReversePath reads it: "<>", or an optional "<", an ignored
// source route "@a,@b:", a dot-string or quoted local part, "@", a domain
// up to a space, tab or ">", and the ">" that matches the "<".
func pathEnd(s string) (int, bool) {
	if strings.HasPrefix(s, "<>") {
		return 2, true
	}
	i := 0
	bracket := i < len(s) && s[i] == '<'
	if bracket {
		i++
	}
	if i < len(s) && s[i] == '@' {
		j := strings.IndexByte(s[i:], ':')
		if j < 0 {
			return 0, false
		}
		i += j + 1
	}
	localStart := i
	if i < len(s) && s[i] == '"' {
		i++
		for {
			if i >= len(s) {
				return 0, false
			}
			ch := s[i]
			i++
			if ch == '\\' {
				if i >= len(s) {
					return 0, false
				}
				i++
				continue
			}
			if ch == '"' {
				break
			}
		}
	} else {
		for i < len(s) && s[i] != '@' {
			if strings.IndexByte("()<>[]:;\\,\" \t", s[i]) >= 0 {
				return 0, false
			}
			i++
		}
	}
	if i == localStart || i >= len(s) || s[i] != '@' {
		return 0, false
	}
	i++
	for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '>' {
		i++
	}
	if bracket {
		if i >= len(s) || s[i] != '>' {
			return 0, false
		}
		i++
	}
	return i, true
}
