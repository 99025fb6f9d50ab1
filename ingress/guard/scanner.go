package guard

import (
	"bytes"
	"strconv"
	"strings"
)

// mode is what the next inbound bytes are, as far as the scanner knows.
type mode int

const (
	// modeCommand: command lines (and AUTH continuation lines).
	modeCommand mode = iota
	// modeData: DATA content, after the server answered 354, up to and
	// including the line that is a single dot.
	modeData
	// modeChunk: the octets of a BDAT chunk (RFC 3030 §2), counted, not
	// line-based: the command line that follows a chunk is not content.
	modeChunk
	// modeOpaque: after STARTTLS was answered 220, the stream is TLS
	// records, which the scanner cannot read (see the package doc).
	modeOpaque
)

// kind classifies a command line the way go-smtp will dispatch it.
type kind int

const (
	kindOther kind = iota // any other command, or a line go-smtp refuses
	kindMail
	kindRcpt
	kindData
	kindBDAT
	kindBDATLast
	kindQuit
	kindStartTLS
	kindDataEnd // the dot line that ends DATA content
	// kindChunksDone is not a line: the octets of the LAST chunk are in.
	kindChunksDone
)

// plane is the CR/LF state of one sequence of lines. Command lines (with
// DATA content, which follows them directly) and BDAT chunk content are
// separate planes, because a CR at the end of one chunk may be completed
// by the LF at the start of the next, with a BDAT command line between.
type plane struct {
	cr      bool // the last octet was a CR
	lineLen int  // octets of the current line so far, CR included
}

// scanner checks the client's octet stream, RFC 5321 §2.3.8: "CR and LF
// MUST only occur together as CRLF", which also holds for message
// content when BINARYMIME is not offered (RFC 3030 §3, RFC 5321 §4.1.4),
// and no line may be longer than maxLine octets with its CRLF
// (RFC 5321 §4.5.3.1.4 and §4.5.3.1.6 set minimums, we set the maximum).
//
// It follows the dialogue just enough to know where lines are: it parses
// BDAT command lines exactly as go-smtp does, so that chunk octets are
// counted, and stops after DATA and STARTTLS lines, whose meaning depends on
// the server's reply (the Conn holds the following octets back until then).
type scanner struct {
	maxLine int
	mode    mode

	cmd, content plane
	line         []byte // the current command line (or the first octets of a data line)

	chunkLeft int64 // octets of the current BDAT chunk still to come
	chunkLast bool  // the current chunk is the LAST one

	// done collects, per scan call, the kinds of the lines completed, in
	// order; the Conn pairs them with replies.
	done []kind
	// stop is set when scanning stopped after a line whose reply decides
	// the mode of what follows (DATA, STARTTLS).
	stop kind
}

func newScanner(maxLine int) *scanner {
	return &scanner{maxLine: maxLine, line: make([]byte, 0, 64)}
}

// scan checks b. It returns how many octets of b may be passed on, and a
// non-nil reason when b violates the rules (the octets before the
// violation must not be passed on either: the connection is refused).
// When n < len(b) without a violation, s.stop says which command line
// ended at b[n-1], and the rest of b must wait for that command's reply.
func (s *scanner) scan(b []byte) (n int, r Reason) {
	s.done = s.done[:0]
	s.stop = kindOther
	for i := 0; i < len(b); {
		switch s.mode {
		case modeOpaque:
			return len(b), 0
		case modeChunk:
			take := int64(len(b) - i)
			if take > s.chunkLeft {
				take = s.chunkLeft
			}
			if r := s.content.pushAll(b[i:i+int(take)], s.maxLine); r != 0 {
				return 0, r
			}
			i += int(take)
			s.chunkLeft -= take
			if s.chunkLeft == 0 {
				if r := s.endChunk(); r != 0 {
					return 0, r
				}
			}
			continue
		}
		if !s.cmd.cr {
			// In the middle of a line (or at its start), the octets up to
			// the next CR or LF can only make the line longer: take them
			// at once. The CR or LF is then checked octet by octet below.
			if run := plainLen(b[i:]); run > 0 {
				if r := s.cmd.skip(run, s.maxLine); r != 0 {
					return 0, r
				}
				s.keep(b[i : i+run])
				if i += run; i == len(b) {
					break
				}
			}
			// The usual end of a content line, CRLF, is taken at once:
			// what push and keep below do for the CR and then the LF,
			// without a trip round the loop for each.
			if s.mode == modeData && b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n' {
				if r := s.cmd.push('\r', s.maxLine); r != 0 {
					return 0, r
				}
				s.keep(b[i : i+1])
				s.cmd.cr, s.cmd.lineLen = false, 0
				i += 2
				s.endDataLine()
				continue
			}
		}
		c := b[i]
		i++
		ended := s.cmd.cr && c == '\n'
		if r := s.cmd.push(c, s.maxLine); r != 0 {
			return 0, r
		}
		if !ended {
			s.keep(b[i-1 : i])
			continue
		}
		if s.mode == modeData {
			s.endDataLine()
			continue
		}
		line := bytes.TrimSuffix(s.line, []byte{'\r'})
		s.line = s.line[:0]
		k, r := s.command(line)
		if r != 0 {
			return 0, r
		}
		s.done = append(s.done, k)
		if s.mode == modeChunk && s.chunkLeft == 0 {
			// An empty chunk: it ends with its command line.
			if r := s.endChunk(); r != 0 {
				return 0, r
			}
		}
		if k == kindData || k == kindStartTLS {
			s.stop = k
			return i, 0
		}
	}
	return len(b), 0
}

// endDataLine ends a line of DATA content; the dot line ends the content.
func (s *scanner) endDataLine() {
	if line := bytes.TrimSuffix(s.line, []byte{'\r'}); len(line) == 1 && line[0] == '.' {
		s.mode = modeCommand
		s.done = append(s.done, kindDataEnd)
	}
	s.line = s.line[:0]
}

// keep appends to s.line what the scanner needs of b, the next octets of
// the current line: a command line up to maxLine octets, only the first two
// octets of a data line (enough to tell the dot line).
func (s *scanner) keep(b []byte) {
	limit := s.maxLine
	if s.mode != modeCommand {
		limit = min(limit, 2)
	}
	if room := limit - len(s.line); room > 0 {
		s.line = append(s.line, b[:min(room, len(b))]...)
	}
}

// command classifies a command line (without CRLF) as go-smtp's parseCmd
// and handleBdat will, and enters chunk mode after a BDAT line go-smtp
// accepts as syntactically valid: go-smtp then reads the chunk's octets
// whether or not it accepts the transaction.
func (s *scanner) command(line []byte) (kind, Reason) {
	k, size, last := classify(line)
	if k != kindBDAT {
		// Any other command ends or interrupts a chunked message: a CR
		// left at the end of the last chunk can no longer be completed,
		// and whatever chunk comes next starts a fresh line.
		cr := s.content.cr
		s.content = plane{}
		if cr {
			return k, ReasonBareCR
		}
		return k, 0
	}
	s.chunkLeft, s.chunkLast = size, last
	s.mode = modeChunk
	if last {
		k = kindBDATLast
	}
	return k, 0
}

// classify parses a command line like go-smtp's parseCmd: STARTTLS is any
// line that starts with it, other verbs are four letters followed by the
// end of the line or a space. For BDAT it also parses the arguments as
// handleBdat does ("BDAT" SP size [SP "LAST"], size a 32-bit number).
func classify(line []byte) (k kind, size int64, last bool) {
	if len(line) >= 8 && strings.EqualFold(string(line[:8]), "STARTTLS") {
		return kindStartTLS, 0, false
	}
	if len(line) < 4 || len(line) == 5 || (len(line) > 5 && line[4] != ' ') {
		return kindOther, 0, false
	}
	switch strings.ToUpper(string(line[:4])) {
	case "MAIL":
		return kindMail, 0, false
	case "RCPT":
		return kindRcpt, 0, false
	case "DATA":
		return kindData, 0, false
	case "QUIT":
		return kindQuit, 0, false
	case "BDAT":
		if len(line) < 6 {
			return kindOther, 0, false
		}
		args := strings.Fields(string(line[5:]))
		if len(args) == 0 || len(args) > 2 || (len(args) == 2 && !strings.EqualFold(args[1], "LAST")) {
			return kindOther, 0, false
		}
		n, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil {
			return kindOther, 0, false
		}
		return kindBDAT, int64(n), len(args) == 2
	}
	return kindOther, 0, false
}

// endChunk leaves chunk mode. After the LAST chunk, a CR left at the end of
// the content is a bare CR.
func (s *scanner) endChunk() Reason {
	s.mode = modeCommand
	if !s.chunkLast {
		return 0
	}
	s.chunkLast = false
	s.done = append(s.done, kindChunksDone)
	defer func() { s.content = plane{} }()
	if s.content.cr {
		return ReasonBareCR
	}
	return 0
}

// push checks one octet of the plane; maxLine 0 means no limit.
func (p *plane) push(c byte, maxLine int) Reason {
	if p.cr {
		if c != '\n' {
			return ReasonBareCR
		}
		p.cr, p.lineLen = false, 0
		return 0
	}
	switch c {
	case '\n':
		return ReasonBareLF
	case '\r':
		p.cr = true
		p.lineLen++
		// The LF still has to come.
		if maxLine > 0 && p.lineLen+1 > maxLine {
			return ReasonLineTooLong
		}
		return 0
	}
	p.lineLen++
	// CR and LF still have to come.
	if maxLine > 0 && p.lineLen+2 > maxLine {
		return ReasonLineTooLong
	}
	return 0
}

// skip accounts for n octets that are neither CR nor LF, on a plane that
// is not after a CR, exactly as n calls of push would: the line grows, and
// is too long if its last octet with the CRLF still to come would be over
// maxLine (the line only grows, so no earlier octet can be over when the
// last is not).
func (p *plane) skip(n, maxLine int) Reason {
	if n == 0 {
		return 0
	}
	p.lineLen += n
	if maxLine > 0 && p.lineLen+2 > maxLine {
		return ReasonLineTooLong
	}
	return 0
}

// pushAll checks the octets of b as push would one by one, with the
// octets between line endings taken at once (skip).
func (p *plane) pushAll(b []byte, maxLine int) Reason {
	for len(b) > 0 {
		if !p.cr {
			n := plainLen(b)
			if r := p.skip(n, maxLine); r != 0 {
				return r
			}
			if b = b[n:]; len(b) == 0 {
				break
			}
		}
		if r := p.push(b[0], maxLine); r != 0 {
			return r
		}
		b = b[1:]
	}
	return 0
}

// plainLen returns how many octets at the start of b are neither CR nor
// LF. Two IndexByte calls are much faster than bytes.IndexAny, which
// looks at one octet at a time; the second only searches the octets
// before the CR the first found.
func plainLen(b []byte) int {
	n := bytes.IndexByte(b, '\r')
	if n < 0 {
		n = len(b)
	}
	if i := bytes.IndexByte(b[:n], '\n'); i >= 0 {
		return i
	}
	return n
}

// atLineStart reports whether the next octet starts a new line, for the
// per-line deadline.
func (s *scanner) atLineStart() bool {
	switch s.mode {
	case modeChunk:
		return s.content.lineLen == 0 && !s.content.cr
	case modeOpaque:
		return true
	}
	return s.cmd.lineLen == 0 && !s.cmd.cr
}
