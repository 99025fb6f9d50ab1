package guard

import "io"

// ContentLimits are the rules a message's content is read under.
type ContentLimits struct {
	// MaxLineLength is the longest line, CRLF included.
	MaxLineLength int
	// MaxHeaderBytes is the largest header section (RFC 5322 §2.1: the
	// lines before the first empty line), CRLFs included; 0 means no
	// limit.
	MaxHeaderBytes int64
}

// ContentReader reads message content (as go-smtp hands it to a session's
// Data, dot-unstuffed) and fails with a *Violation (Content set) at a bare
// CR or LF, a line over the limit, or a header section over the limit.
// None of the octets of a read that breaks a rule is returned, and every
// read after it fails, so a caller that stores only content read to EOF
// never stores such a message.
//
// It is a second check behind the Conn, and the only one where go-smtp
// terminates TLS itself (see the package doc).
type ContentReader struct {
	r      io.Reader
	limits ContentLimits
	p      plane
	header int64 // octets of the header section so far
	field  field // where the current header line is
	inBody bool
	err    error
}

// field is the position inside a header line.
type field int

const (
	fieldStart field = iota // at the start of a line
	fieldName               // in a field name, before the colon
	fieldValue              // after the colon, or in a folded line
)

// NewContentReader returns a ContentReader on r.
func NewContentReader(r io.Reader, l ContentLimits) *ContentReader {
	return &ContentReader{r: r, limits: l}
}

// Read implements io.Reader.
func (c *ContentReader) Read(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(b)
	if r := c.check(b[:n]); r != 0 {
		c.err = &Violation{Reason: r, Content: true}
		return 0, c.err
	}
	if err == io.EOF && c.p.cr {
		// The content ends in a CR without its LF.
		c.err = &Violation{Reason: ReasonBareCR, Content: true}
		return 0, c.err
	}
	return n, err
}

// check checks b as push would octet by octet. In the body, and in the
// middle of a header field's value, the octets up to the next CR or LF
// are taken at once: they change nothing but the counts.
func (c *ContentReader) check(b []byte) Reason {
	for len(b) > 0 {
		if c.inBody {
			return c.p.pushAll(b, c.limits.MaxLineLength)
		}
		if !c.p.cr && c.field == fieldValue {
			if n := plainLen(b); n > 0 {
				if r := c.skipValue(n); r != 0 {
					return r
				}
				b = b[n:]
				continue
			}
		}
		if r := c.push(b[0]); r != 0 {
			return r
		}
		b = b[1:]
	}
	return 0
}

// skipValue accounts for n octets of a header field's value that are
// neither CR nor LF, as n calls of push would. push checks each octet
// against the line limit first and then against the header limit, so when
// both are crossed inside the run, the one crossed first wins, and the line
// limit on a tie.
func (c *ContentReader) skipValue(n int) Reason {
	// The first octet (1 to n) over each limit; n+1 when none is.
	lineAt, headerAt := n+1, n+1
	if m := c.limits.MaxLineLength; m > 0 {
		// Octet k is over when lineLen+k plus the CRLF to come is.
		lineAt = min(lineAt, max(1, m-c.p.lineLen-1))
	}
	if m := c.limits.MaxHeaderBytes; m > 0 {
		headerAt = int(min(int64(headerAt), max(1, m-c.header+1)))
	}
	switch {
	case lineAt <= n && lineAt <= headerAt:
		return ReasonLineTooLong
	case headerAt <= n:
		return ReasonHeaderTooLarge
	}
	c.p.lineLen += n
	c.header += int64(n)
	return 0
}

// push checks one octet.
func (c *ContentReader) push(o byte) Reason {
	ended := c.p.cr && o == '\n'
	if r := c.p.push(o, c.limits.MaxLineLength); r != 0 {
		return r
	}
	if c.inBody {
		return 0
	}
	// The header section ends at an empty line, or, as Postfix's cleanup
	// decides, at the first line that is neither a header field
	// ("name:", RFC 5322 §2.2, printable ASCII other than the colon) nor
	// the continuation of one (folded, starting with white space): the
	// body then starts with that line.
	switch c.field {
	case fieldStart:
		switch {
		case o == ' ' || o == '\t':
			c.field = fieldValue
		case o > 32 && o < 127 && o != ':':
			c.field = fieldName
		default:
			c.inBody = true
			return 0
		}
	case fieldName:
		switch {
		case o == ':':
			c.field = fieldValue
		case o > 32 && o < 127:
		default:
			c.inBody = true
			return 0
		}
	}
	c.header++
	if ended {
		c.field = fieldStart
	}
	if c.limits.MaxHeaderBytes > 0 && c.header > c.limits.MaxHeaderBytes {
		return ReasonHeaderTooLarge
	}
	return 0
}
