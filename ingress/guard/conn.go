package guard

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Conn is an accepted connection under the guard. go-smtp reads the client
// through it; the Conn checks every octet before go-smtp sees it and reads
// go-smtp's replies to follow the dialogue. When the client breaks a rule,
// the Conn answers with the rule's reply, closes the connection and from
// then on fails every Read and Write with a *Violation (which matches
// net.ErrClosed, so go-smtp ends the session without answering again).
//
// Its methods are called by the connection's goroutine in go-smtp, except
// Close and DataStarted, which anyone may call.
//
// The Conn also keeps go-smtp from ending a session under its own BDAT
// goroutine. go-smtp starts that goroutine when it accepts a
// transaction's first BDAT chunk, and the goroutine fetches the session
// only when it first runs; if the connection ends before then (a refused
// chunk, a client that hangs up after the BDAT line), go-smtp's Close has
// already cleared the session and the goroutine panics on it. So when the
// current transaction has such a goroutine and the session has not yet
// said DataStarted, a Read waits for it before it returns an error, which
// is what makes go-smtp close.
type Conn struct {
	net.Conn
	l      *Listener
	client netip.Addr

	mu       sync.Mutex
	sc       *scanner
	ready    []byte // scanned octets not yet handed to the reader
	held     []byte // octets after a DATA or STARTTLS line, waiting for its reply
	readErr  error  // an error that came with the last octets read
	pending  []kind // commands whose reply has not been written yet, in order
	out      []byte // the start of a reply line written in pieces
	errs     int    // 5xx replies so far
	commands int    // commands since the last accepted MAIL, see Options.MaxCommands

	lineDeadline time.Time   // the current line must be complete by then
	dataDeadline time.Time   // the message content must be complete by then
	timer        *time.Timer // fires at the deadline of a read in progress

	// The current transaction's Data (see the type's doc): started is set
	// when go-smtp has a BDAT goroutine for it, entered when the session's
	// Data began; both are cleared when a MAIL is accepted. closing is set
	// by Close. entry is closed (and replaced) when entered or closing is
	// set.
	started, entered, closing bool
	// contentOut is set while a Content reads the DATA content in
	// go-smtp's place (see DataContent).
	contentOut bool
	entry      chan struct{}

	rejected  *Violation
	replied   chan struct{} // closed once the rejection's reply is written and the connection closed
	closeOnce sync.Once
	closeErr  error
}

// Client is the client's IP address.
func (c *Conn) Client() netip.Addr { return c.client }

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.read(p)
	if err != nil {
		c.awaitData()
	}
	return n, err
}

// DataStarted tells the Conn that the session's Data began for the
// current transaction, so that the connection may end (see the type's
// doc). The session calls it first thing in Data, from whichever
// goroutine go-smtp runs Data on.
func (c *Conn) DataStarted() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.entered {
		c.entered = true
		c.wake()
	}
}

// wake releases the readers waiting in awaitData. c.mu is held.
func (c *Conn) wake() {
	if c.entry != nil {
		close(c.entry)
		c.entry = nil
	}
}

// awaitData returns once go-smtp's BDAT goroutine of the current
// transaction, if there is one, has entered the session's Data, or the
// Conn was closed. ReadTimeout bounds the wait should that never happen
// (it always does: the goroutine only needs go-smtp's connection lock,
// which nobody holds while go-smtp reads).
func (c *Conn) awaitData() {
	c.mu.Lock()
	if !c.started || c.entered || c.closing {
		c.mu.Unlock()
		return
	}
	if c.entry == nil {
		c.entry = make(chan struct{})
	}
	entry := c.entry
	c.mu.Unlock()
	t := time.NewTimer(c.l.opts.ReadTimeout)
	defer t.Stop()
	select {
	case <-entry:
	case <-t.C:
	}
}

func (c *Conn) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	if len(c.pending) > 0 && (c.pending[0] == kindBDAT || c.pending[0] == kindBDATLast) {
		// go-smtp reads a chunk before it answers its BDAT only when it
		// accepted it, and then it has a BDAT goroutine (RFC 3030 chunks
		// go to the session through a pipe that goroutine reads).
		c.started = true
	}
	for {
		if c.rejected != nil {
			c.mu.Unlock()
			return 0, c.violation()
		}
		if len(c.ready) > 0 {
			n := copy(p, c.ready)
			c.ready = c.ready[n:]
			c.mu.Unlock()
			return n, nil
		}
		if len(c.held) == 0 {
			break
		}
		// go-smtp asks for more only after it has answered every
		// command it was given, so the reply to the command that stopped
		// the scan has been written and the scanner is in the right mode.
		held := c.held
		c.held = nil
		if r := c.process(held); r != 0 {
			c.mu.Unlock()
			return 0, c.reject(r)
		}
	}
	if err := c.readErr; err != nil {
		c.readErr = nil
		err = c.cutShort(err)
		c.mu.Unlock()
		return 0, err
	}
	if c.sc.mode == modeOpaque {
		c.mu.Unlock()
		return c.Conn.Read(p)
	}
	dl := c.deadline(time.Now())
	c.mu.Unlock()

	// The deadline is enforced by a timer rather than the socket's read
	// deadline, because the layers below (TLS, the line-at-a-time
	// smtpconn, the idle timeout) read several times per line and set
	// their own deadline before each read.
	if c.timer == nil {
		c.timer = time.AfterFunc(time.Until(dl), func() { c.reject(ReasonTimeout) })
	} else {
		c.timer.Reset(time.Until(dl))
	}
	n, err := c.Conn.Read(p)
	c.timer.Stop()

	c.mu.Lock()
	if c.rejected != nil {
		c.mu.Unlock()
		return 0, c.violation()
	}
	if n == 0 && err != nil {
		err = c.cutShort(err)
		c.mu.Unlock()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, c.reject(ReasonTimeout)
		}
		return 0, err
	}
	c.readErr = err
	if c.sc.mode == modeOpaque {
		c.mu.Unlock()
		return n, nil
	}
	// Hand over what is safe directly from p; octets that must wait for
	// a reply go to c.held.
	if r := c.process(p[:n]); r != 0 {
		c.mu.Unlock()
		return 0, c.reject(r)
	}
	k := len(c.ready)
	c.ready = nil
	c.mu.Unlock()
	return k, nil
}

// cutShort turns the end of the stream inside a BDAT chunk into
// io.ErrUnexpectedEOF. go-smtp copies a chunk with io.Copy, for which
// io.EOF is a normal end: a client that hung up in the middle of the LAST
// chunk would have its truncated message stored. c.mu is held.
func (c *Conn) cutShort(err error) error {
	if err == io.EOF && c.sc.mode == modeChunk {
		return io.ErrUnexpectedEOF
	}
	return err
}

// process scans b, which starts where the previous scan stopped, and
// leaves in c.ready the scanned octets (a prefix of b) and in c.held the
// octets that must wait for a reply. It returns a reason when b breaks a
// rule. c.mu is held.
func (c *Conn) process(b []byte) Reason {
	n, r := c.sc.scan(b)
	if r != 0 {
		return r
	}
	for _, k := range c.sc.done {
		switch k {
		case kindChunksDone:
			// The last chunk is in: the content is complete.
			c.dataDeadline = time.Time{}
			continue
		case kindDataEnd:
			c.dataDeadline = time.Time{}
		case kindBDAT, kindBDATLast:
			if c.dataDeadline.IsZero() && c.l.opts.DataTimeout > 0 {
				c.dataDeadline = time.Now().Add(c.l.opts.DataTimeout)
			}
		case kindMail, kindRcpt, kindData, kindQuit:
		default:
			// Any other command (RSET, NOOP, ...) ends or suspends
			// chunked content; a new BDAT starts a new deadline.
			c.dataDeadline = time.Time{}
			c.commands++
			if c.l.opts.MaxCommands > 0 && c.commands > c.l.opts.MaxCommands {
				return ReasonTooManyCommands
			}
		}
		c.pending = append(c.pending, k)
	}
	if n < len(b) {
		c.held = append([]byte(nil), b[n:]...)
	}
	c.ready = b[:n]
	return 0
}

// deadline returns the time by which the next read must return: the
// earlier of the current line's deadline and the message content's. A new
// line gets ReadTimeout from now; a line in progress keeps the deadline it
// started with, so that a client sending one octet at a time cannot
// stretch a line forever (Postfix's smtpd_per_record_deadline). c.mu is
// held.
func (c *Conn) deadline(now time.Time) time.Time {
	if c.sc.atLineStart() || c.lineDeadline.IsZero() {
		c.lineDeadline = now.Add(c.l.opts.ReadTimeout)
	}
	dl := c.lineDeadline
	if !c.dataDeadline.IsZero() && c.dataDeadline.Before(dl) {
		dl = c.dataDeadline
	}
	return dl
}

// Write implements net.Conn. It passes the server's replies on and reads
// their codes: 354 to DATA starts message content, 220 to STARTTLS makes
// the stream opaque, 2xx to MAIL restarts the command count, every 5xx
// counts as an error, and 421 closes the connection once written
// (RFC 5321 §3.8).
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.rejected != nil {
		c.mu.Unlock()
		return 0, c.violation()
	}
	opaque := c.sc.mode == modeOpaque
	c.mu.Unlock()

	n, err := c.Conn.Write(b)

	var (
		r        Reason
		closeNow bool
	)
	if !opaque {
		c.mu.Lock()
		r, closeNow = c.replies(b[:n])
		c.mu.Unlock()
	}
	if r != 0 {
		c.reject(r)
	} else if closeNow {
		c.Close()
	}
	return n, err
}

// replies follows the reply lines in b. c.mu is held.
func (c *Conn) replies(b []byte) (r Reason, closeNow bool) {
	c.out = append(c.out, b...)
	for {
		i := indexCRLF(c.out)
		if i < 0 {
			break
		}
		line := c.out[:i]
		c.out = c.out[i+2:]
		if len(line) < 3 || (len(line) > 3 && line[3] != ' ') {
			continue // a continuation line of a multi-line reply
		}
		code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
		var k kind = -1
		if len(c.pending) > 0 {
			k, c.pending = c.pending[0], c.pending[1:]
		}
		switch {
		case k == kindData && code == 354:
			c.sc.mode = modeData
			if c.l.opts.DataTimeout > 0 {
				c.dataDeadline = time.Now().Add(c.l.opts.DataTimeout)
			}
		case k == kindStartTLS && code == 220:
			c.sc.mode = modeOpaque
		case k == kindMail && code/100 == 2:
			c.commands = 0
			// A new transaction: any BDAT goroutine of an earlier one
			// has been given its pipe's end by go-smtp's reset.
			c.started, c.entered = false, false
		case k == kindBDAT && code == 250:
			// An accepted chunk that go-smtp did not have to read from
			// us (empty, or already buffered): it has a BDAT goroutine.
			c.started = true
		}
		if code/100 == 5 {
			c.errs++
			if c.l.opts.MaxErrors > 0 && c.errs >= c.l.opts.MaxErrors {
				r = ReasonTooManyErrors
			}
		}
		if code == 421 {
			closeNow = true
		}
	}
	if len(c.out) > 1024 {
		c.out = c.out[:0] // not a reply stream we understand; do not grow
	}
	return r, closeNow
}

func indexCRLF(b []byte) int {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			return i
		}
	}
	return -1
}

// reject answers the client with r's reply, closes the connection and
// records why. Later calls do nothing. It returns the Violation that Read
// and Write return from now on.
func (c *Conn) reject(r Reason) error {
	c.mu.Lock()
	if c.rejected != nil {
		c.mu.Unlock()
		return c.violation()
	}
	v := &Violation{Reason: r}
	c.rejected = v
	c.replied = make(chan struct{})
	c.mu.Unlock()

	c.l.closed(c, r)
	reply := r.reply()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.l.opts.WriteTimeout))
	_, _ = fmt.Fprintf(c.Conn, "%d %d.%d.%d %s\r\n", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], reply.Message)
	c.close()
	close(c.replied)
	return v
}

// violation returns the connection's violation once its reply has been
// written. The reply is written by whichever goroutine found the
// violation (a reader, a writer, or the line timer); the others wait for
// it, so that none of them closes the connection under the reply (a
// client timed out by the timer while go-smtp's own read deadline also
// ran out was sometimes dropped without its 421).
func (c *Conn) violation() error {
	c.mu.Lock()
	v, replied := c.rejected, c.replied
	c.mu.Unlock()
	<-replied
	return v
}

// Close implements net.Conn. It is safe to call more than once. A
// rejection's reply being written is waited for.
func (c *Conn) Close() error {
	c.mu.Lock()
	replied := c.replied
	// Whoever closes the Conn from above is done with the session: no
	// reader needs to wait for its Data any more.
	c.closing = true
	c.wake()
	c.mu.Unlock()
	if replied != nil {
		<-replied
	}
	return c.close()
}

func (c *Conn) close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.l.release(c)
	})
	return c.closeErr
}
