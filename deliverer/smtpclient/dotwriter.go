package smtpclient

import (
	"bufio"
	"bytes"
)

// dotWriter writes message content for DATA: a line that starts with "."
// gets another one (RFC 5321 §4.5.2), a bare LF becomes CRLF, and Close
// ends the content with CRLF "." CRLF.
//
// Its output is byte for byte that of net/textproto's DotWriter, which the
// tests check, including for content that is not proper CRLF text: a CR
// not followed by LF stays as it is, and in a run of CRs before an LF the
// CRs pair off, so "\r\r\n" becomes "\r\r\r\n". Where textproto goes a byte
// at a time, dotWriter copies whole lines.
type dotWriter struct {
	w     *bufio.Writer
	state dotState
}

type dotState int

const (
	dotBegin     dotState = iota // nothing written yet
	dotBeginLine                 // after an LF
	dotCR                        // after a CR that an LF would complete
	dotData                      // inside a line
)

func (d *dotWriter) Write(p []byte) (int, error) {
	n := len(p)
	var err error
	for len(p) > 0 && err == nil {
		if (d.state == dotBegin || d.state == dotBeginLine) && p[0] == '.' {
			err = d.w.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.state = d.after(p)
			_, err = d.w.Write(p)
			break
		}
		// p[:i] is the rest of a line; its CRs decide whether the LF
		// ending it already has its CR.
		if d.after(p[:i]) == dotCR {
			_, err = d.w.Write(p[:i+1])
		} else {
			d.w.Write(p[:i])
			_, err = d.w.WriteString("\r\n")
		}
		d.state = dotBeginLine
		p = p[i+1:]
	}
	if err != nil {
		// A bufio.Writer keeps its first error, so what was written of p
		// does not matter any more.
		return 0, err
	}
	return n, nil
}

// after is the state after writing seg, which holds no LF, in state d.state:
// a CR makes the state dotCR, unless it was dotCR already (textproto leaves
// that state on any byte but LF); any other byte makes it dotData.
func (d *dotWriter) after(seg []byte) dotState {
	if len(seg) == 0 {
		return d.state
	}
	crs := 0
	for crs < len(seg) && seg[len(seg)-1-crs] == '\r' {
		crs++
	}
	wasCR := false
	if crs == len(seg) {
		wasCR = d.state == dotCR
	}
	if (crs%2 == 1) != wasCR {
		return dotCR
	}
	return dotData
}

// Close writes the end of the content: CRLF "." CRLF, or just what of it
// the content has not written already. It does not flush.
func (d *dotWriter) Close() {
	switch d.state {
	case dotBeginLine:
		d.w.WriteString(".\r\n")
	case dotCR:
		d.w.WriteString("\n.\r\n")
	default:
		d.w.WriteString("\r\n.\r\n")
	}
}
