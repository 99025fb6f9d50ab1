package guard

import (
	"bytes"
	"io"
	"sync"
)

// DATA content is what an MTA reads most of, and go-smtp reads it one octet
// at a time (its dataReader calls bufio's ReadByte per octet, then undoes
// the dot-stuffing in a state machine per octet): for a 5 MB message that
// was half of the ingress's CPU time. A Content reads the same octets
// through the Conn, so every check and deadline of the guard still applies,
// and undoes the dot-stuffing a run of octets at a time. When it reaches
// the end of the content it gives go-smtp a bare end-of-data line, so that
// go-smtp's own reader, which drains whatever the session left, ends at
// once and the dialogue goes on where the client's does.

// contentBufSize is the size of the raw octets a Content reads at a time.
const contentBufSize = 64 << 10

// contentBufs holds the read buffers of Contents between messages, so that
// a stream of small messages does not allocate one per message.
var contentBufs = sync.Pool{New: func() any { return new([contentBufSize]byte) }}

// Content reads the current DATA content through a Conn. Make one with
// DataContent; Close it when the session's Data returns.
type Content struct {
	c        *Conn
	left     int64 // octets still allowed; <= 0 with a limit means too large
	limited  bool
	tooLarge error

	raw  []byte // read from the Conn, not yet decoded
	buf  *[contentBufSize]byte
	st   int
	done bool  // the end-of-data line was read
	err  error // the read error that ended the content, sticky
}

// The dot-stuffing states, as go-smtp's dataReader (and net/textproto's
// DotReader) has them.
const (
	dsBeginLine = iota // at the start of a line
	dsDot              // read "." at the start of a line
	dsDotCR            // read ".\r" at the start of a line
	dsCR               // read "\r"
	dsData             // inside a line
)

// DataContent returns a reader of the content of the DATA command that
// go-smtp has just accepted (its 354 is written and nothing of the content
// has been handed to go-smtp yet), or false when there is none: the
// session's Data is then reading a BDAT transaction, or go-smtp started
// reading the content itself. The reader returns what go-smtp's would: the
// content without dot-stuffing, io.EOF at the end-of-data line, and
// tooLarge once more than max octets (max > 0) would be returned, exactly
// where go-smtp's MaxMessageBytes would stop.
func (c *Conn) DataContent(max int64, tooLarge error) (*Content, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sc.mode != modeData || c.contentOut || len(c.ready) > 0 {
		return nil, false
	}
	c.contentOut = true
	return &Content{c: c, left: max, limited: max > 0, tooLarge: tooLarge}, true
}

// Read implements io.Reader.
func (d *Content) Read(p []byte) (int, error) {
	if d.done {
		return 0, io.EOF
	}
	if d.err != nil {
		return 0, d.err
	}
	if d.limited {
		if d.left <= 0 {
			return 0, d.tooLarge
		}
		if int64(len(p)) > d.left {
			p = p[:d.left]
		}
	}
	n := 0
	for n < len(p) && !d.done {
		if len(d.raw) == 0 {
			if n > 0 {
				break // hand over what is decoded before reading again
			}
			if err := d.fill(); err != nil {
				return 0, err
			}
		}
		n += d.decode(p[n:])
	}
	d.left -= int64(n)
	if d.done && n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// fill reads the next raw octets from the Conn.
func (d *Content) fill() error {
	if d.buf == nil {
		d.buf = contentBufs.Get().(*[contentBufSize]byte)
	}
	k, err := d.c.Read(d.buf[:])
	d.raw = d.buf[:k]
	if k == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		d.err = err
		return err
	}
	return nil
}

// decode undoes the dot-stuffing of d.raw into p, as far as both go, and
// returns the octets written. Inside a line it copies up to the next CR in
// one step; line starts and line ends take the state machine.
func (d *Content) decode(p []byte) int {
	n := 0
	for n < len(p) && len(d.raw) > 0 && !d.done {
		if d.st == dsData {
			run := d.raw
			if len(run) > len(p)-n {
				run = run[:len(p)-n]
			}
			if i := bytes.IndexByte(run, '\r'); i >= 0 {
				run = run[:i]
			}
			if len(run) > 0 {
				n += copy(p[n:], run)
				d.raw = d.raw[len(run):]
				continue
			}
		}
		ch := d.raw[0]
		d.raw = d.raw[1:]
		switch d.st {
		case dsBeginLine:
			switch ch {
			case '.':
				d.st = dsDot
				continue
			case '\r':
				d.st = dsCR
			default:
				d.st = dsData
			}
		case dsDot:
			if ch == '\r' {
				d.st = dsDotCR
				continue
			}
			d.st = dsData
		case dsDotCR:
			if ch == '\n' {
				d.done = true
				continue
			}
			d.st = dsData
		case dsCR:
			if ch == '\n' {
				d.st = dsBeginLine
			} else {
				d.st = dsData
			}
		case dsData:
			if ch == '\r' {
				d.st = dsCR
			}
		}
		p[n] = ch
		n++
	}
	if d.done {
		d.finish()
	}
	return n
}

// finish gives go-smtp, through the Conn, the end-of-data line and
// whatever octets followed the content in the last read.
func (d *Content) finish() {
	c := d.c
	c.mu.Lock()
	rest := make([]byte, 0, 3+len(d.raw)+len(c.ready))
	rest = append(rest, ".\r\n"...)
	rest = append(rest, d.raw...)
	c.ready = append(rest, c.ready...)
	c.contentOut = false
	c.mu.Unlock()
	d.raw = nil
	d.release()
}

// release returns the read buffer to the pool; nothing points into it.
func (d *Content) release() {
	if d.buf != nil {
		contentBufs.Put(d.buf)
		d.buf = nil
	}
}

// Close ends the reader when the session's Data returns. Content the
// session did not read is read here to its end, as go-smtp would have,
// so that go-smtp finds the end-of-data line next; a read error leaves
// it to go-smtp, which gets the same error.
func (d *Content) Close() error {
	if d.done {
		return nil
	}
	if d.err != nil {
		d.release()
		return nil
	}
	d.limited = false
	var sink [4096]byte
	for !d.done {
		if _, err := d.Read(sink[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			d.release()
			return err
		}
	}
	return nil
}
