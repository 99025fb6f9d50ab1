package worker

import (
	"bytes"
	"io"
)

// maxHeaderSection caps the header section copied into a Result; a DSN
// quotes headers (RFC 3464 §2 text/rfc822-headers), and no sane header
// section is larger.
const maxHeaderSection = 256 << 10

// headerTap passes the message content through to the SMTP client and keeps
// a copy of its start until the header section ends, so the header section
// can be put in the Result without reading the body twice. When the
// delivery did not read the content (no server was reached), Headers reads
// on from the source itself.
type headerTap struct {
	src  io.Reader
	head []byte
	done bool
}

func newHeaderTap(src io.Reader) *headerTap { return &headerTap{src: src} }

func (t *headerTap) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	if n > 0 && !t.done {
		t.head = append(t.head, p[:n]...)
		t.check()
	}
	return n, err
}

func (t *headerTap) check() {
	if i := headerEnd(t.head); i >= 0 {
		t.head, t.done = t.head[:i], true
	} else if len(t.head) >= maxHeaderSection {
		t.head, t.done = t.head[:maxHeaderSection], true
	}
}

// Headers returns the header section, reading more of the source if needed.
func (t *headerTap) Headers() []byte {
	buf := make([]byte, 32<<10)
	for !t.done {
		n, err := t.src.Read(buf)
		if n > 0 {
			t.head = append(t.head, buf[:n]...)
			t.check()
		}
		if err != nil {
			t.done = true
		}
	}
	return t.head
}

// headerEnd returns the length of the header section of msg including the
// line break of its last field, or -1 when the empty line that ends it (RFC
// 5322 §2.1) is not in msg. Bare LF line ends are accepted as well.
func headerEnd(msg []byte) int {
	if bytes.HasPrefix(msg, []byte("\r\n")) || bytes.HasPrefix(msg, []byte("\n")) {
		return 0
	}
	crlf := bytes.Index(msg, []byte("\r\n\r\n"))
	lf := bytes.Index(msg, []byte("\n\n"))
	switch {
	case crlf >= 0 && (lf < 0 || crlf < lf):
		return crlf + 2
	case lf >= 0:
		return lf + 1
	}
	return -1
}
