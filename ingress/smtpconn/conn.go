// Package smtpconn is the server side of one SMTP connection underneath
// go-smtp. It terminates TLS itself (implicit TLS, RFC 8314, and STARTTLS,
// RFC 3207), follows the dialogue closely enough to know whether the bytes
// it hands on are a command line, DATA content or a BDAT chunk, and adapts
// the command lines go-smtp v0.25.1 gets wrong: it takes RFC 6710
// MT-PRIORITY off MAIL FROM (go-smtp only parses it on RCPT TO and answers
// "500 5.5.4 Unknown MAIL FROM argument") and keeps the value for the
// session.
//
// Why TLS lives here: go-smtp reads from whatever net.Conn it is given, and
// after STARTTLS or on port 465 that is a *tls.Conn, whose plaintext no
// wrapper can see. Terminating TLS below go-smtp means go-smtp always reads
// plaintext through this Conn, so command rewriting (and any other
// plaintext layer stacked on top, such as a smuggling guard) works the same
// on every port. go-smtp is then run without a TLS configuration: this Conn
// answers STARTTLS, adds STARTTLS and REQUIRETLS to the EHLO reply, and
// reports the TLS state to the session through TLS().
//
// Rewriting is only ever done in command state. In command state the Conn
// hands go-smtp one line per Read, so go-smtp has written its reply to each
// command before it asks for the next bytes; a DATA command switches to
// content only after go-smtp answered 354, content ends exactly where
// go-smtp's own reader ends it (CRLF "." CRLF), and a BDAT chunk is passed
// on untouched, byte for byte.
package smtpconn

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config describes what one listener's connections offer.
type Config struct {
	// TLS is the server's TLS configuration; nil means no TLS on this
	// listener (STARTTLS is then neither advertised nor answered).
	TLS *tls.Config
	// Implicit starts TLS before the first byte (submissions on port 465,
	// RFC 8314 §3.3) instead of offering STARTTLS.
	Implicit bool
	// RequireTLS adds REQUIRETLS (RFC 8689) to the EHLO reply of TLS
	// connections.
	RequireTLS bool
	// MaxLineLength is go-smtp's line limit. A command line longer than this
	// is passed on unexamined, and go-smtp refuses it.
	MaxLineLength int
	// HandshakeTimeout bounds a TLS handshake; zero means 30 seconds.
	HandshakeTimeout time.Duration
}

// Priority is an RFC 6710 MT-PRIORITY parameter taken off a MAIL command.
type Priority struct {
	// Given says the MAIL command carried the parameter.
	Given bool
	// Value is the priority, -9 to 9, when Given and Err is nil.
	Value int
	// Err is set when the parameter was malformed or repeated.
	Err error
}

// ErrBadPriority is Priority.Err for a malformed or repeated MT-PRIORITY.
var ErrBadPriority = errors.New("malformed MT-PRIORITY parameter")

// The dialogue states the Conn distinguishes.
type mode int

const (
	modeCommand   mode = iota // next bytes are a command line
	modeAfterData             // a DATA line was handed on; its reply decides
	modeContent               // DATA content up to CRLF "." CRLF
	modeChunk                 // a BDAT chunk of chunkLeft bytes
)

// Conn is one server-side SMTP connection. It implements net.Conn; go-smtp
// reads and writes through it. Read and Write are called from the
// connection's goroutine; TLS, NeedsHello and TakeMTPriority may be called
// from any goroutine.
type Conn struct {
	raw net.Conn
	cfg Config

	// Read side, touched only by Read.
	cur       net.Conn           // raw, or the *tls.Conn once TLS is up
	in        []byte             // received, not yet examined
	readSize  int                // size of the next read buffer (see fill)
	rbuf      []byte             // the read buffer fill may reuse
	big       *[maxReadSize]byte // a streaming read buffer from bigBufs (see fill)
	out       []byte             // examined, not yet handed to go-smtp
	mode      mode
	chunkLeft int64
	content   contentState
	eof       error // sticky read error once in is drained
	started   bool  // implicit handshake attempted

	mu         sync.Mutex
	reply      int  // code of the first reply line written since the last hand-off
	swallow    bool // drop writes: the reply to our injected RSET
	ehlo       bool // the last line handed on was EHLO: extend its reply
	ehloBuf    []byte
	tlsState   *tls.ConnectionState
	needsHello bool
	priority   Priority
	handErr    error
	// okCode is the RFC 3463 enhanced code of a success reply to the
	// command last handed on (2.1.0 for MAIL, 2.1.5 for RCPT), "" for
	// other commands. See precise.
	okCode string
}

// Server returns the server side of c. With cfg.Implicit the TLS handshake
// runs on the first Read or Write.
func Server(c net.Conn, cfg Config) *Conn {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	return &Conn{raw: c, cur: c, cfg: cfg}
}

var _ net.Conn = (*Conn)(nil)

// TLS returns the connection's TLS state once TLS is up.
func (c *Conn) TLS() (tls.ConnectionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tlsState == nil {
		return tls.ConnectionState{}, false
	}
	return *c.tlsState, true
}

// NeedsHello reports that TLS started and the client has not yet sent EHLO
// or HELO again. RFC 3207 §4.2: the server discards what it knew from before
// the handshake, so a transaction must start with a new EHLO.
func (c *Conn) NeedsHello() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.needsHello
}

// TakeMTPriority returns the MT-PRIORITY taken off the MAIL command go-smtp
// is processing, and forgets it.
func (c *Conn) TakeMTPriority() Priority {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.priority
	c.priority = Priority{}
	return p
}

// NetConn returns the TCP connection underneath, like tls.Conn.NetConn.
func (c *Conn) NetConn() net.Conn { return c.raw }

// LocalAddr, RemoteAddr and the deadline setters act on the TCP connection;
// a TLS connection shares its deadlines.
func (c *Conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// Close closes the TCP connection. It does not send a TLS close_notify,
// which could block a stopping server on a client that does not read.
func (c *Conn) Close() error { return c.raw.Close() }

// handshake runs a server TLS handshake on the TCP connection.
func (c *Conn) handshake() error {
	tc := tls.Server(c.raw, c.cfg.TLS)
	_ = c.raw.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	err := tc.Handshake()
	_ = c.raw.SetDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("smtpconn: TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	c.mu.Lock()
	c.tlsState = &st
	c.mu.Unlock()
	c.cur = tc
	return nil
}

// implicitHandshake starts implicit TLS once; its error is sticky.
func (c *Conn) implicitHandshake() error {
	c.mu.Lock()
	if !c.cfg.Implicit || c.cfg.TLS == nil || c.started {
		err := c.handErr
		c.mu.Unlock()
		return err
	}
	c.started = true
	c.mu.Unlock()
	err := c.handshake()
	c.mu.Lock()
	c.handErr = err
	c.mu.Unlock()
	return err
}

// Write passes go-smtp's replies to the client, noting each reply's code
// and extending the EHLO reply.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.implicitHandshake(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	if c.swallow {
		c.mu.Unlock()
		return len(p), nil
	}
	if c.reply == 0 && len(p) >= 3 {
		c.reply, _ = strconv.Atoi(string(p[:3]))
	}
	if code := c.okCode; code != "" {
		c.okCode = ""
		if q := precise(p, code); q != nil {
			c.mu.Unlock()
			if _, err := c.cur.Write(q); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	if !c.ehlo {
		c.mu.Unlock()
		return c.cur.Write(p)
	}
	c.ehloBuf = append(c.ehloBuf, p...)
	var send []byte
	for {
		i := bytes.IndexByte(c.ehloBuf, '\n')
		if i < 0 {
			break
		}
		line := c.ehloBuf[:i+1]
		c.ehloBuf = c.ehloBuf[i+1:]
		switch {
		case bytes.HasPrefix(line, []byte("250-")):
			send = append(send, line...)
		case bytes.HasPrefix(line, []byte("250 ")):
			send = append(send, c.extendEHLO(line)...)
			c.ehlo = false
		default:
			// Not a successful EHLO reply: nothing to extend.
			send = append(send, line...)
			c.ehlo = false
		}
		if !c.ehlo {
			send = append(send, c.ehloBuf...)
			c.ehloBuf = nil
			break
		}
	}
	c.mu.Unlock()
	if len(send) > 0 {
		if _, err := c.cur.Write(send); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// precise rewrites go-smtp's success reply to MAIL or RCPT ("250 2.0.0
// Roger, accepting mail from <a>", "250 2.0.0 I'll make sure <b> gets
// this") into the RFC 3463 form postmasters expect from an MTA: 2.1.0 for
// the sender, 2.1.5 for a recipient (RFC 3463 §3.2), as Postfix answers. Only
// a whole one-line 250 reply is rewritten; anything else (a refusal, a
// reply split across writes) is passed on as it is.
func precise(p []byte, code string) []byte {
	if len(p) < 6 || !bytes.HasPrefix(p, []byte("250 ")) || !bytes.HasSuffix(p, []byte("\r\n")) ||
		bytes.IndexByte(p[:len(p)-2], '\n') >= 0 {
		return nil
	}
	return []byte("250 " + code + " Ok\r\n")
}

// extendEHLO turns the last line of an EHLO reply into a continuation and
// appends the extensions this layer implements. c.mu is held.
func (c *Conn) extendEHLO(last []byte) []byte {
	var ext []string
	if c.cfg.TLS != nil && c.tlsState == nil {
		ext = append(ext, "STARTTLS")
	}
	if c.cfg.RequireTLS && c.tlsState != nil {
		ext = append(ext, "REQUIRETLS")
	}
	if len(ext) == 0 {
		return last
	}
	out := append([]byte("250-"), last[4:]...)
	for i, e := range ext {
		sep := "-"
		if i == len(ext)-1 {
			sep = " "
		}
		out = append(out, "250"+sep+e+"\r\n"...)
	}
	return out
}

// Read hands go-smtp the next bytes: one command line, or content, or a
// chunk, never across a change of state.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.implicitHandshake(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for len(c.out) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// next examines input until something is ready to hand on.
func (c *Conn) next() error {
	c.mu.Lock()
	reply := c.reply
	c.swallow = false
	c.mu.Unlock()
	if c.mode == modeAfterData {
		// go-smtp answered the DATA command before reading again: only 354
		// means content follows.
		c.mode = modeCommand
		if reply == 354 {
			c.mode = modeContent
			c.content = contentState{}
		}
	}
	switch c.mode {
	case modeContent:
		if err := c.fill(); err != nil {
			return err
		}
		n, done := c.content.scan(c.in)
		c.out, c.in = c.in[:n:n], c.in[n:]
		if done {
			c.mode = modeCommand
		}
		return nil
	case modeChunk:
		if err := c.fill(); err != nil {
			return err
		}
		n := int64(len(c.in))
		if n > c.chunkLeft {
			n = c.chunkLeft
		}
		c.out, c.in = c.in[:n:n], c.in[n:]
		if c.chunkLeft -= n; c.chunkLeft == 0 {
			c.mode = modeCommand
		}
		return nil
	}
	line, err := c.line()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.reply = 0
	c.mu.Unlock()
	if reply == 334 {
		// A SASL response inside AUTH (RFC 4954 §4), not a command.
		c.out = line
		return nil
	}
	return c.command(line)
}

// Read buffer sizes of fill: commands and small messages arrive in small
// reads; a large message streams, and reading it 4 KiB at a time cost a
// system call (and a trip through every layer above) per 4 KiB.
const (
	minReadSize = 4 << 10
	maxReadSize = 64 << 10
)

// keptReadSize is the largest read buffer a connection keeps between
// reads. A larger one, for a large message, comes from bigBufs while reads
// fill it, and goes back once one does not.
const keptReadSize = 16 << 10

// bigBufs are the read buffers of connections receiving large messages.
// Allocating one per read cost a sixth of all the bytes the process
// allocated at 5 MB messages, and the clearing of each.
var bigBufs = sync.Pool{New: func() any { return new([maxReadSize]byte) }}

// fill makes sure c.in holds at least one byte. The buffer doubles while
// reads fill it and returns to the minimum when one does not. A read reuses
// the last buffer when nothing still points into it (in and out are both
// drained; Read copies out to go-smtp), as between the commands and small
// messages of an ordinary session; otherwise it gets a fresh one. A read
// larger than keptReadSize goes to the connection's pooled buffer while
// nothing points into it.
func (c *Conn) fill() error {
	if len(c.in) > 0 {
		return nil
	}
	if c.eof != nil {
		return c.eof
	}
	if c.readSize < minReadSize {
		c.readSize = minReadSize
	}
	var buf []byte
	if c.big != nil && len(c.out) == 0 && c.readSize <= keptReadSize {
		// The stream paused: nothing points into the big buffer any more.
		bigBufs.Put(c.big)
		c.big = nil
	}
	switch {
	case c.readSize > keptReadSize && len(c.out) == 0:
		if c.big == nil {
			c.big = bigBufs.Get().(*[maxReadSize]byte)
		}
		buf = c.big[:c.readSize:c.readSize]
	case len(c.out) == 0 && cap(c.rbuf) >= c.readSize:
		buf = c.rbuf[:c.readSize]
	case c.readSize <= keptReadSize:
		c.rbuf = make([]byte, c.readSize)
		buf = c.rbuf
	default:
		buf = make([]byte, c.readSize)
	}
	n, err := c.cur.Read(buf)
	if n == len(buf) {
		c.readSize = min(2*c.readSize, maxReadSize)
	} else {
		c.readSize = minReadSize
	}
	c.in = buf[:n]
	if err != nil {
		c.eof = err
		if n == 0 {
			return err
		}
	}
	return nil
}

// line returns the next line with its terminator. A line longer than the
// limit, or a partial line at the end of input, is returned as it is.
func (c *Conn) line() ([]byte, error) {
	limit := c.cfg.MaxLineLength
	if limit <= 0 {
		limit = 2000
	}
	for {
		if i := bytes.IndexByte(c.in, '\n'); i >= 0 {
			l := c.in[: i+1 : i+1]
			c.in = c.in[i+1:]
			return l, nil
		}
		if len(c.in) > limit || (c.eof != nil && len(c.in) > 0) {
			l := c.in
			c.in = nil
			return l, nil
		}
		if c.eof != nil {
			return nil, c.eof
		}
		if len(c.in) == 0 {
			c.fill() // an error is kept in c.eof, and seen above
			continue
		}
		buf := make([]byte, 4096)
		n, err := c.cur.Read(buf)
		c.in = append(c.in, buf[:n]...)
		if err != nil {
			c.eof = err
		}
	}
}

// command examines one command line and queues what go-smtp should read.
func (c *Conn) command(line []byte) error {
	text := strings.TrimRight(string(line), "\r\n")
	upper := strings.ToUpper(text)
	switch {
	case strings.HasPrefix(upper, "STARTTLS") && c.cfg.TLS != nil && !c.cfg.Implicit:
		return c.startTLS(strings.TrimSpace(text[len("STARTTLS"):]) != "")
	case strings.HasPrefix(upper, "EHLO"), strings.HasPrefix(upper, "HELO"):
		c.mu.Lock()
		c.needsHello = false
		c.ehlo = strings.HasPrefix(upper, "EHLO")
		c.ehloBuf = nil
		c.mu.Unlock()
	case strings.HasPrefix(upper, "MAIL "):
		rewritten, prio := takePriority(text)
		c.mu.Lock()
		c.priority = prio
		c.okCode = "2.1.0"
		c.mu.Unlock()
		if prio.Given {
			line = append([]byte(rewritten), line[len(text):]...)
		}
	case strings.HasPrefix(upper, "RCPT "):
		c.mu.Lock()
		c.okCode = "2.1.5"
		c.mu.Unlock()
	case upper == "DATA":
		c.mode = modeAfterData
	case strings.HasPrefix(upper, "BDAT "):
		// The same syntax go-smtp accepts; whenever it accepts the syntax
		// it reads the chunk, even if it refuses the command.
		if size, ok := bdatSize(text[5:]); ok && size > 0 {
			c.mode, c.chunkLeft = modeChunk, size
		}
	}
	c.out = line
	return nil
}

// startTLS answers STARTTLS and upgrades the connection.
func (c *Conn) startTLS(withArgs bool) error {
	c.mu.Lock()
	active := c.tlsState != nil
	c.mu.Unlock()
	switch {
	case withArgs:
		_, err := io.WriteString(c.cur, "501 5.5.4 Syntax: STARTTLS takes no parameters\r\n")
		return err
	case active:
		_, err := io.WriteString(c.cur, "503 5.5.1 TLS already active\r\n")
		return err
	}
	if _, err := io.WriteString(c.cur, "220 2.0.0 Ready to start TLS\r\n"); err != nil {
		return err
	}
	// Anything the client pipelined after STARTTLS was sent in the clear
	// and must not be taken as if it came over TLS (the STARTTLS command
	// injection of CVE-2011-0411).
	c.in = nil
	if err := c.handshake(); err != nil {
		return err
	}
	// go-smtp must forget the envelope too: it gets an RSET whose reply we
	// drop (RFC 3207 §4.2).
	c.mu.Lock()
	c.needsHello = true
	c.swallow = true
	c.reply = 0
	c.mu.Unlock()
	c.out = []byte("RSET\r\n")
	return nil
}

// bdatSize parses BDAT's arguments as go-smtp does: a 32-bit size and an
// optional LAST.
func bdatSize(arg string) (int64, bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		return 0, false
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, false
	}
	return int64(n), true
}

// contentState finds the end of DATA content with the same states as
// go-smtp's reader, so that both agree on where content ends: a line
// holding only "." after CRLF (or at the start). RFC 5321 §4.1.1.4.
type contentState struct {
	st int
}

const (
	csLineStart = iota
	csDot
	csDotCR
	csCR
	csText
)

// scan consumes b up to and including the end-of-data line, returning how
// many bytes belong to the content and whether the end was found.
func (s *contentState) scan(b []byte) (int, bool) {
	for i := 0; i < len(b); i++ {
		if s.st == csText {
			// In the middle of a line only a CR changes the state: skip
			// to it at once.
			j := bytes.IndexByte(b[i:], '\r')
			if j < 0 {
				return len(b), false
			}
			i += j
			s.st = csCR
			continue
		}
		ch := b[i]
		switch s.st {
		case csLineStart:
			switch ch {
			case '.':
				s.st = csDot
			case '\r':
				s.st = csCR
			default:
				s.st = csText
			}
		case csDot:
			if ch == '\r' {
				s.st = csDotCR
			} else {
				s.st = csText
			}
		case csDotCR:
			if ch == '\n' {
				return i + 1, true
			}
			s.st = csText
		case csCR:
			if ch == '\n' {
				s.st = csLineStart
			} else {
				s.st = csText
			}
		case csText:
			if ch == '\r' {
				s.st = csCR
			}
		}
	}
	return len(b), false
}
