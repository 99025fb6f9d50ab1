package smtpclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Envelope is what one transaction sends.
//
// There is no body type: BODY=8BITMIME is declared whenever the server
// offers 8BITMIME (which is right for 7-bit content too), and 8-bit content
// goes as it is to a server that does not, like Postfix does by default
// instead of bouncing or downgrading (RFC 6152 §3 would have us convert).
type Envelope struct {
	From       string
	Recipients []Recipient
	// Size is the message size for the SIZE parameter (RFC 1870).
	Size int64
	// SMTPUTF8 asks for RFC 6531 handling; the server must offer it.
	SMTPUTF8 bool
	// RequireTLS sends the RFC 8689 REQUIRETLS parameter; the caller checks
	// that the session is TLS and that the server offers it.
	RequireTLS bool
	// Ret and EnvID are the RFC 3461 MAIL parameters, sent when the server
	// offers DSN.
	Ret   string
	EnvID string
}

// Recipient is one RCPT TO with its RFC 3461 parameters.
type Recipient struct {
	Address string
	// Notify is a sluicev1.Notify bit set; 0 sends no NOTIFY.
	Notify uint32
	// ORCPT is "addr-type;address" as the ingress stored it.
	ORCPT string
}

// Outcome is what happened to one recipient: Err is nil when the server
// accepted the message for it, and Reply is then the final reply text.
type Outcome struct {
	Err      *status.Error
	Code     int
	Enhanced string
	Reply    string
}

// Send runs one mail transaction: MAIL, a RCPT per recipient, DATA with the
// content from body. It returns one Outcome per recipient, in order. A
// rejected RCPT affects only its recipient; MAIL, DATA and connection
// failures apply to every recipient still open.
//
// When the server offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go
// out in one write and their replies are read in order afterwards; otherwise
// each command waits for its reply. Both end with the server ready for the
// next transaction, which the session may then carry (see Reusable).
func (s *Session) Send(ctx context.Context, env Envelope, body io.Reader) []Outcome {
	out := make([]Outcome, len(env.Recipients))
	failAll := func(e *status.Error, which func(i int) bool) []Outcome {
		for i := range out {
			if which(i) {
				out[i].Err = e
			}
		}
		return out
	}
	all := func(int) bool { return true }
	open := func(i int) bool { return out[i].Err == nil }

	if err := s.hello(); err != nil {
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
	}
	if env.SMTPUTF8 && !s.Offers("SMTPUTF8") {
		// RFC 6531 §3.4: without SMTPUTF8 at the next hop the message
		// cannot be delivered as it is.
		return failAll(&status.Error{Permanent: true, Code: 553, Enhanced: "5.6.7", Reason: sluicev1.Reason_REASON_PROTOCOL,
			RemoteHost: s.RemoteHost(), Text: "the server does not support SMTPUTF8 and the message needs it"}, all)
	}
	if max, ok := s.maxMessageSize(); ok && max > 0 && env.Size > int64(max) {
		// RFC 1870 §6: do not send what the server announced it refuses.
		return failAll(&status.Error{Permanent: true, Code: 552, Enhanced: "5.3.4", Reason: sluicev1.Reason_REASON_REMOTE,
			RemoteHost: s.RemoteHost(), Text: fmt.Sprintf("message size %d exceeds the server's limit of %d", env.Size, max)}, all)
	}
	s.uses++
	s.brokeAtMail = false

	// Every command line is made before anything is sent: a pipelined
	// group cannot be taken back halfway, and a line that cannot be sent
	// must not cost the others their delivery.
	mail, err := s.mailCommand(env)
	if err != nil {
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
	}
	rcpts := make([]string, 0, len(env.Recipients))
	sent := make([]int, 0, len(env.Recipients)) // indexes into out of rcpts
	for i, r := range env.Recipients {
		line, err := s.rcptCommand(r)
		if err != nil {
			out[i].Err = s.classify(err, sluicev1.Reason_REASON_REMOTE)
			continue
		}
		rcpts = append(rcpts, line)
		sent = append(sent, i)
	}
	if len(sent) == 0 {
		return out
	}

	pipelined := s.Offers("PIPELINING")
	s.writeLine(mail)
	if pipelined {
		// RFC 2920 §3.1: DATA may end a group, and must be its last
		// command; the content waits for its 354.
		for _, l := range rcpts {
			s.writeLine(l)
		}
		s.writeLine("DATA")
	}
	err = s.flush()
	if err == nil {
		_, _, err = s.reply(250, s.d.cfg.CommandTimeout)
	}
	if err != nil {
		if !isReply(err) || replyCode(err) == 421 {
			// No reply, or 421 "closing transmission channel" (RFC 5321
			// §3.8), as a server that dropped an idle client sends.
			s.broken, s.brokeAtMail = true, true
			return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
		}
		failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), all)
		if pipelined {
			s.drainRefused(len(rcpts))
		}
		return out
	}

	accepted := 0
	for k, i := range sent {
		var err error
		if !pipelined {
			s.writeLine(rcpts[k])
			err = s.flush()
		}
		if err == nil {
			_, _, err = s.reply(25, s.d.cfg.CommandTimeout)
		}
		if err == nil {
			accepted++
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// Not a reply: the connection broke, nothing more can happen.
			s.broken = true
			e := s.classify(err, sluicev1.Reason_REASON_REMOTE)
			return failAll(e, func(j int) bool { return j >= i || out[j].Err == nil })
		}
		out[i].Err = status.FromReply(se, sluicev1.Reason_REASON_REMOTE, s.RemoteHost())
	}

	err = nil
	if !pipelined {
		if accepted == 0 {
			s.reset()
			return out
		}
		s.writeLine("DATA")
		err = s.flush()
	}
	if err == nil {
		_, _, err = s.reply(354, s.d.cfg.CommandTimeout)
	}
	if err != nil {
		if !isReply(err) {
			s.broken = true
		} else {
			// The refused DATA left MAIL and RCPT open on the server
			// (RFC 2920 §3.1: "the client SMTP can just issue RSET").
			s.reset()
		}
		if accepted == 0 {
			// Each recipient has its refusal already.
			return out
		}
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), open)
	}
	if accepted == 0 {
		// RFC 2920 §3.1: the server accepted the pipelined DATA though it
		// accepted no recipient; "the client SMTP should send a single
		// dot", and the transaction is over whatever its reply.
		s.loneDot()
		return out
	}

	src := &source{r: body}
	if err := s.content(src); err != nil {
		// The content could not be sent; what the server does with a
		// half message is its business, the attempt has failed.
		s.broken = true
		if src.err != nil {
			// Our queue failed, not the server: a postmaster looking at
			// the attempt must not go looking at the destination.
			e := status.Temporary(sluicev1.Reason_REASON_INTERNAL, 451, "4.3.0",
				"reading the message content from the queue failed: "+src.err.Error())
			e.RemoteHost, e.Err = s.RemoteHost(), src.err
			return failAll(e, open)
		}
		e := s.classify(err, sluicev1.Reason_REASON_REMOTE)
		if e.Reason == sluicev1.Reason_REASON_INTERNAL {
			e.Reason = sluicev1.Reason_REASON_REMOTE
		}
		return failAll(e, open)
	}
	_, msg, err := s.reply(250, s.d.cfg.DataTimeout)
	if err != nil {
		if !isReply(err) {
			s.broken = true
		}
		return failAll(s.classify(err, sluicev1.Reason_REASON_REMOTE), open)
	}
	enh, text := "2.0.0", msg
	if ec, rest, ok := splitEnhanced(msg); ok {
		enh, text = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2]), rest
	}
	for i := range out {
		if out[i].Err == nil {
			out[i] = Outcome{Code: 250, Enhanced: enh, Reply: text}
		}
	}
	return out
}

// content sends the message, dot-stuffed, and the end-of-data line.
func (s *Session) content(body io.Reader) error {
	dw := &dotWriter{w: s.w}
	buf := copyBuffers.Get().(*[]byte)
	_, err := io.CopyBuffer(dw, body, *buf)
	copyBuffers.Put(buf)
	if err != nil {
		return err
	}
	dw.Close()
	return s.flush()
}

// source keeps the error of the reader the content comes from (the body
// from the queue), which io.CopyBuffer returns like a write error: Send
// tells the two apart by it.
type source struct {
	r   io.Reader
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// copyBuffers hold the buffers content copies bodies through: io.Copy
// would allocate one of 32 KiB per message, the largest allocation of a
// delivery.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// drainRefused reads the replies that follow a refused MAIL in a pipelined
// group: one per RCPT, then DATA's. RFC 2920 §3.1 has the client check them
// all; a DATA the server accepted nonetheless is ended with a lone dot.
func (s *Session) drainRefused(rcpts int) {
	for range rcpts {
		if _, _, err := s.reply(25, s.d.cfg.CommandTimeout); err != nil && !isReply(err) {
			s.broken = true
			return
		}
	}
	if _, _, err := s.reply(354, s.d.cfg.CommandTimeout); err != nil {
		if !isReply(err) {
			s.broken = true
		}
		return
	}
	s.loneDot()
}

// loneDot ends a DATA the server accepted when there is nothing to send
// (RFC 2920 §3.1); whatever the server replies, the transaction is over.
func (s *Session) loneDot() {
	s.writeLine(".")
	if err := s.flush(); err != nil {
		s.broken = true
	} else if _, _, err := s.reply(250, s.d.cfg.DataTimeout); err != nil && !isReply(err) {
		s.broken = true
	}
}

// reset sends RSET to end a transaction that did not reach the end of DATA;
// the session cannot be reused when it fails.
func (s *Session) reset() {
	if _, _, err := s.cmd(250, "RSET"); err != nil {
		s.broken = true
	}
}

// maxMessageSize is the limit of the server's SIZE keyword (RFC 1870 §4),
// when it gives one.
func (s *Session) maxMessageSize() (int, bool) {
	v := s.ext["SIZE"]
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// mailCommand is the MAIL FROM line with the parameters the server offers.
func (s *Session) mailCommand(env Envelope) (string, error) {
	if err := validateArg(env.From); err != nil {
		return "", err
	}
	var sb strings.Builder
	sb.Grow(64 + len(env.From) + len(env.EnvID))
	sb.WriteString("MAIL FROM:<")
	sb.WriteString(env.From)
	sb.WriteString(">")
	if s.Offers("8BITMIME") {
		sb.WriteString(" BODY=8BITMIME")
	}
	if s.Offers("SIZE") && env.Size != 0 {
		sb.WriteString(" SIZE=")
		sb.WriteString(strconv.FormatInt(env.Size, 10))
	}
	if env.RequireTLS {
		if !s.Offers("REQUIRETLS") {
			return "", errors.New("smtp: server does not support REQUIRETLS")
		}
		sb.WriteString(" REQUIRETLS")
	}
	if env.SMTPUTF8 {
		if !s.Offers("SMTPUTF8") {
			return "", errors.New("smtp: server does not support SMTPUTF8")
		}
		sb.WriteString(" SMTPUTF8")
	}
	if s.Offers("DSN") {
		switch strings.ToUpper(env.Ret) {
		case "FULL":
			sb.WriteString(" RET=FULL")
		case "HDRS":
			sb.WriteString(" RET=HDRS")
		}
		if env.EnvID != "" {
			// RFC 3461 §4.4: ENVID is printable US-ASCII, sent as xtext.
			if !printableOrSpace(env.EnvID) {
				return "", errors.New("smtp: Malformed ENVID parameter value")
			}
			sb.WriteString(" ENVID=")
			sb.WriteString(encodeXtext(env.EnvID))
		}
	}
	return sb.String(), nil
}

// rcptCommand is the RCPT TO line; the RFC 3461 parameters go only to a
// server that offers DSN.
func (s *Session) rcptCommand(r Recipient) (string, error) {
	if err := validateArg(r.Address); err != nil {
		return "", err
	}
	var sb strings.Builder
	sb.Grow(64 + len(r.Address) + 2*len(r.ORCPT))
	sb.WriteString("RCPT TO:<")
	sb.WriteString(r.Address)
	sb.WriteString(">")
	if !s.Offers("DSN") {
		return sb.String(), nil
	}
	n := r.Notify
	switch {
	case n&uint32(sluicev1.Notify_NOTIFY_NEVER) != 0:
		sb.WriteString(" NOTIFY=NEVER")
	case n&uint32(sluicev1.Notify_NOTIFY_SUCCESS|sluicev1.Notify_NOTIFY_FAILURE|sluicev1.Notify_NOTIFY_DELAY) != 0:
		// RFC 3461 §4.1: a comma-separated list of SUCCESS, FAILURE and
		// DELAY.
		sep := " NOTIFY="
		for _, v := range []struct {
			bit  sluicev1.Notify
			name string
		}{{sluicev1.Notify_NOTIFY_SUCCESS, "SUCCESS"}, {sluicev1.Notify_NOTIFY_FAILURE, "FAILURE"}, {sluicev1.Notify_NOTIFY_DELAY, "DELAY"}} {
			if n&uint32(v.bit) != 0 {
				sb.WriteString(sep)
				sb.WriteString(v.name)
				sep = ","
			}
		}
	}
	// RFC 3461 §4.2: ORCPT=addr-type;xtext. An rfc822 address that is not
	// printable ASCII is not sent rather than sent wrong; a utf-8 one is
	// encoded as RFC 6533 §3 says, unitext when the server offers SMTPUTF8.
	if typ, addr, ok := strings.Cut(r.ORCPT, ";"); ok && addr != "" {
		switch strings.ToLower(typ) {
		case "rfc822":
			if printableASCII(addr) {
				sb.WriteString(" ORCPT=RFC822;")
				sb.WriteString(encodeXtext(addr))
			}
		case "utf-8":
			sb.WriteString(" ORCPT=UTF-8;")
			sb.WriteString(encodeUTF8Addr(addr, s.Offers("SMTPUTF8")))
		}
	}
	return sb.String(), nil
}

// printableASCII reports whether s is printable US-ASCII without spaces.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// printableOrSpace reports whether s is printable US-ASCII or spaces.
func printableOrSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// xtextSafe reports whether c stands for itself in xtext (RFC 3461 §4):
// printable US-ASCII other than space, "+" and "=".
func xtextSafe(c rune) bool { return c >= '!' && c <= '~' && c != '+' && c != '=' }

// encodeXtext encodes s as RFC 3461 §4 xtext: "+" and two upper-case hex
// digits for every character that does not stand for itself. s is
// printable US-ASCII (the callers check), so every character is one byte.
func encodeXtext(s string) string {
	var sb strings.Builder
	sb.Grow(len(s))
	for _, c := range s {
		if xtextSafe(c) {
			sb.WriteRune(c)
			continue
		}
		sb.WriteByte('+')
		sb.WriteString(strings.ToUpper(strconv.FormatInt(int64(c), 16)))
	}
	return sb.String()
}

// encodeUTF8Addr encodes an address as RFC 6533 §3 utf-8-addr-unitext
// (non-ASCII characters as they are), or as utf-8-addr-xtext when unitext
// is false; characters that do not stand for themselves become \x{HEX}.
func encodeUTF8Addr(s string, unitext bool) string {
	var sb strings.Builder
	sb.Grow(len(s))
	for _, c := range s {
		if xtextSafe(c) || unitext && c > 0x7f {
			sb.WriteRune(c)
			continue
		}
		sb.WriteString(`\x{`)
		sb.WriteString(strings.ToUpper(strconv.FormatInt(int64(c), 16)))
		sb.WriteByte('}')
	}
	return sb.String()
}
