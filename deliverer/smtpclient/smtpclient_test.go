package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

var ctx = context.Background()

func env(rcpts ...string) Envelope {
	e := Envelope{From: "sender@example.org"}
	for _, r := range rcpts {
		e.Recipients = append(e.Recipients, Recipient{Address: r})
	}
	return e
}

// checkOutcome compares what matters of an outcome: delivered with its
// reply, or refused with code, enhanced code, text and permanence.
func checkOutcome(t *testing.T, i int, o Outcome, code int, enhanced, text string, permanent bool) {
	t.Helper()
	if code/100 == 2 {
		if o.Err != nil || o.Code != code || o.Enhanced != enhanced || o.Reply != text {
			t.Errorf("recipient %d: got %+v (err %v), want delivered %d %s %q", i, o, o.Err, code, enhanced, text)
		}
		return
	}
	e := o.Err
	if e == nil {
		t.Errorf("recipient %d: delivered, want %d %s %q", i, code, enhanced, text)
		return
	}
	if e.Code != code || e.Enhanced != enhanced || e.Text != text || e.Permanent != permanent ||
		e.Reason != sluicev1.Reason_REASON_REMOTE || e.RemoteHost != "mx.test[127.0.0.1]" {
		t.Errorf("recipient %d: got %d %s %q permanent=%v reason=%v host=%q, want %d %s %q permanent=%v",
			i, e.Code, e.Enhanced, e.Text, e.Permanent, e.Reason, e.RemoteHost, code, enhanced, text, permanent)
	}
}

func TestSendAllAccepted(t *testing.T) {
	srv := startSink(t, nil)
	s := connect(t, testDialer(t), srv.Addr)
	if !s.Offers("pipelining") || !s.Offers("DSN") {
		t.Fatalf("the sink offers %v, want PIPELINING and DSN", s.ext)
	}
	msg := "Subject: x\r\n\r\n.leading dot\r\nbare LF\n..two dots\r\nno final line break"
	e := Envelope{From: "sender@example.org", Size: 123, Ret: "hdrs", EnvID: "id+1 =x",
		Recipients: []Recipient{
			{Address: "a@example.net", Notify: uint32(sluicev1.Notify_NOTIFY_SUCCESS | sluicev1.Notify_NOTIFY_DELAY), ORCPT: "rfc822;a@example.net"},
			{Address: "b@example.net", Notify: uint32(sluicev1.Notify_NOTIFY_NEVER)},
		}}
	out := s.Send(ctx, e, strings.NewReader(msg))
	for i, o := range out {
		checkOutcome(t, i, o, 250, "2.0.0", "OK: queued", false)
	}
	got := srv.messages()
	if len(got) != 1 {
		t.Fatalf("%d messages arrived, want 1", len(got))
	}
	m := got[0]
	if m.from != "sender@example.org" || !reflect.DeepEqual(m.to, []string{"a@example.net", "b@example.net"}) {
		t.Errorf("envelope %q -> %q", m.from, m.to)
	}
	want := "Subject: x\r\n\r\n.leading dot\r\nbare LF\r\n..two dots\r\nno final line break\r\n"
	if string(m.body) != want {
		t.Errorf("content %q, want %q", m.body, want)
	}
	if m.mail.Size != 123 || m.mail.Body != smtp.Body8BitMIME || m.mail.Return != smtp.DSNReturnHeaders || m.mail.EnvelopeID != "id+1 =x" {
		t.Errorf("MAIL parameters %+v", m.mail)
	}
	if n := m.rcpt[0].Notify; !reflect.DeepEqual(n, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyDelayed}) {
		t.Errorf("NOTIFY of a: %v", n)
	}
	if r := m.rcpt[0]; r.OriginalRecipientType != smtp.DSNAddressTypeRFC822 || r.OriginalRecipient != "a@example.net" {
		t.Errorf("ORCPT of a: %s;%s", r.OriginalRecipientType, r.OriginalRecipient)
	}
	if n := m.rcpt[1].Notify; !reflect.DeepEqual(n, []smtp.DSNNotify{smtp.DSNNotifyNever}) {
		t.Errorf("NOTIFY of b: %v", n)
	}
	if !s.Reusable() || s.BrokeBeforeMail() || s.Uses() != 1 {
		t.Errorf("reusable %v, broke before MAIL %v, uses %d", s.Reusable(), s.BrokeBeforeMail(), s.Uses())
	}
}

func TestSendRefusals(t *testing.T) {
	srv := startSink(t, nil)
	srv.mu.Lock()
	srv.rcptErr["full@example.net"] = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}
	srv.rcptErr["gone@example.net"] = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	srv.mailErr["spammer@example.org"] = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Go away"}
	srv.mu.Unlock()
	// One session carries every case, so each must leave it reusable.
	s := connect(t, testDialer(t), srv.Addr)
	msg := "Subject: x\r\n\r\nhi\r\n"
	wantMsgs := 0
	send := func(e Envelope) []Outcome {
		t.Helper()
		out := s.Send(ctx, e, strings.NewReader(msg))
		if !s.Reusable() || s.BrokeBeforeMail() {
			t.Fatalf("after %v: reusable %v, broke before MAIL %v", e, s.Reusable(), s.BrokeBeforeMail())
		}
		if n := len(srv.messages()); n != wantMsgs {
			t.Fatalf("after %v: %d messages arrived, want %d", e, n, wantMsgs)
		}
		return out
	}

	t.Run("one recipient refused", func(t *testing.T) {
		wantMsgs++
		out := send(env("a@example.net", "gone@example.net", "b@example.net"))
		checkOutcome(t, 0, out[0], 250, "2.0.0", "OK: queued", false)
		checkOutcome(t, 1, out[1], 550, "5.1.1", "No such user", true)
		checkOutcome(t, 2, out[2], 250, "2.0.0", "OK: queued", false)
		if m := srv.messages()[wantMsgs-1]; !reflect.DeepEqual(m.to, []string{"a@example.net", "b@example.net"}) {
			t.Errorf("delivered to %v", m.to)
		}
	})
	t.Run("every recipient refused, 4xx and 5xx", func(t *testing.T) {
		out := send(env("full@example.net", "gone@example.net"))
		checkOutcome(t, 0, out[0], 452, "4.2.2", "Mailbox full", false)
		checkOutcome(t, 1, out[1], 550, "5.1.1", "No such user", true)
	})
	t.Run("MAIL refused", func(t *testing.T) {
		e := env("a@example.net", "b@example.net")
		e.From = "spammer@example.org"
		out := send(e)
		for i := range out {
			checkOutcome(t, i, out[i], 553, "5.7.1", "Go away", true)
		}
	})
	t.Run("content refused", func(t *testing.T) {
		srv.mu.Lock()
		srv.dataErr = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Content rejected"}
		srv.mu.Unlock()
		defer func() { srv.mu.Lock(); srv.dataErr = nil; srv.mu.Unlock() }()
		out := send(env("a@example.net", "gone@example.net"))
		checkOutcome(t, 0, out[0], 554, "5.6.0", "Content rejected", true)
		checkOutcome(t, 1, out[1], 550, "5.1.1", "No such user", true)
	})
	t.Run("content refused temporarily", func(t *testing.T) {
		srv.mu.Lock()
		srv.dataErr = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try later"}
		srv.mu.Unlock()
		defer func() { srv.mu.Lock(); srv.dataErr = nil; srv.mu.Unlock() }()
		out := send(env("a@example.net"))
		checkOutcome(t, 0, out[0], 451, "4.3.0", "Try later", false)
	})
	t.Run("delivers again afterwards", func(t *testing.T) {
		wantMsgs++
		out := send(env("b@example.net"))
		checkOutcome(t, 0, out[0], 250, "2.0.0", "OK: queued", false)
	})
	if sessions, _ := srv.counts(); sessions != 1 || s.Uses() != 6 {
		t.Errorf("%d server sessions, %d uses; want 1 and 6", sessions, s.Uses())
	}
}

// TestPipelinedGroup: MAIL, every RCPT and DATA arrive in one read, and the
// replies map to the recipients in order.
func TestPipelinedGroup(t *testing.T) {
	f := startFake(t, []string{"PIPELINING", "8BITMIME", "SIZE 1000"}, func(cmd string) string {
		switch cmd {
		case "RCPT TO:<b@example.net>":
			return "550-5.1.1 No such user\r\n550 5.1.1 Really"
		case "DATA":
			return "354 go ahead"
		case ".":
			return "250 2.0.0 Ok: queued as 123"
		}
		return ""
	})
	s := connect(t, testDialer(t), f.Addr)
	e := env("a@example.net", "b@example.net", "c@example.net")
	e.Size = 500
	out := s.Send(ctx, e, strings.NewReader("Subject: x\r\n\r\n.hi\r\n"))
	checkOutcome(t, 0, out[0], 250, "2.0.0", "Ok: queued as 123", false)
	checkOutcome(t, 1, out[1], 550, "5.1.1", "No such user\nReally", true)
	checkOutcome(t, 2, out[2], 250, "2.0.0", "Ok: queued as 123", false)
	cmds, reads := f.commands()
	want := []string{"MAIL FROM:<sender@example.org> BODY=8BITMIME SIZE=500",
		"RCPT TO:<a@example.net>", "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "DATA", "<content>"}
	if !reflect.DeepEqual(cmds, want) {
		t.Fatalf("commands %q, want %q", cmds, want)
	}
	for i := 1; i < 5; i++ {
		if reads[i] != reads[0] {
			t.Errorf("%q arrived in read %d, MAIL in read %d: not one group", cmds[i], reads[i], reads[0])
		}
	}
	if f.body != "Subject: x\r\n\r\n..hi\r\n" {
		t.Errorf("content %q", f.body)
	}
	if s.Uses() != 1 || !s.Reusable() {
		t.Errorf("uses %d, reusable %v", s.Uses(), s.Reusable())
	}
	// RFC 1870 §6: nothing is sent for a message over the limit.
	big := env("a@example.net")
	big.Size = 1001
	if o := s.Send(ctx, big, strings.NewReader("x"))[0]; o.Err == nil || o.Err.Code != 552 || o.Err.Enhanced != "5.3.4" || !o.Err.Permanent {
		t.Errorf("oversized message: %+v", o.Err)
	}
	s.Close()
	if cmds, _ := f.commands(); cmds[len(cmds)-1] != "QUIT" || len(cmds) != 7 {
		t.Errorf("commands after Close: %q", cmds)
	}
}

// TestPipelinedNoRecipientDataAccepted: RFC 2920 §3.1, a server that
// accepts DATA though it refused every RCPT gets a lone dot, not the
// content, and the session goes on.
func TestPipelinedNoRecipientDataAccepted(t *testing.T) {
	f := startFake(t, []string{"PIPELINING"}, func(cmd string) string {
		switch {
		case strings.HasPrefix(cmd, "RCPT"):
			return "450 4.2.1 Try again later"
		case cmd == "DATA":
			return "354 go ahead"
		case cmd == ".":
			return "554 5.5.1 No valid recipients"
		}
		return ""
	})
	s := connect(t, testDialer(t), f.Addr)
	out := s.Send(ctx, env("a@example.net"), strings.NewReader("Subject: x\r\n\r\nhi\r\n"))
	checkOutcome(t, 0, out[0], 450, "4.2.1", "Try again later", false)
	if !s.Reusable() {
		t.Fatal("session not reusable after the lone dot")
	}
	cmds, _ := f.commands()
	want := []string{"MAIL FROM:<sender@example.org>", "RCPT TO:<a@example.net>", "DATA", "."}
	if !reflect.DeepEqual(cmds, want) {
		t.Fatalf("commands %q, want %q", cmds, want)
	}
}

// TestPipelinedMailRefused: after a refused MAIL the RCPT and DATA replies
// are read, DATA refused as it should be needs no RSET, and every
// recipient gets MAIL's refusal.
func TestPipelinedMailRefused(t *testing.T) {
	f := startFake(t, []string{"PIPELINING"}, func(cmd string) string {
		switch {
		case strings.HasPrefix(cmd, "MAIL"):
			return "451 4.7.1 Greylisted"
		case strings.HasPrefix(cmd, "RCPT"), cmd == "DATA":
			return "503 5.5.1 Bad sequence"
		}
		return ""
	})
	s := connect(t, testDialer(t), f.Addr)
	out := s.Send(ctx, env("a@example.net", "b@example.net"), strings.NewReader("x\r\n"))
	for i := range out {
		checkOutcome(t, i, out[i], 451, "4.7.1", "Greylisted", false)
	}
	if !s.Reusable() || s.BrokeBeforeMail() {
		t.Fatalf("reusable %v, broke before MAIL %v", s.Reusable(), s.BrokeBeforeMail())
	}
	// The next transaction reads its own replies, not stale ones.
	out = s.Send(ctx, env("c@example.net"), strings.NewReader("x\r\n"))
	checkOutcome(t, 0, out[0], 451, "4.7.1", "Greylisted", false)
	cmds, _ := f.commands()
	if len(cmds) != 7 || cmds[3] != "DATA" || cmds[6] != "DATA" {
		t.Fatalf("commands %q", cmds)
	}
}

// TestDataRefusedThenReset: a refused DATA leaves MAIL and RCPT open on the
// server; RSET closes them before the session is used again.
func TestDataRefusedThenReset(t *testing.T) {
	for _, ext := range [][]string{{"PIPELINING"}, nil} {
		f := startFake(t, ext, func(cmd string) string {
			if cmd == "DATA" {
				return "451 4.3.0 No space"
			}
			return ""
		})
		s := connect(t, testDialer(t), f.Addr)
		out := s.Send(ctx, env("a@example.net"), strings.NewReader("x\r\n"))
		checkOutcome(t, 0, out[0], 451, "4.3.0", "No space", false)
		cmds, _ := f.commands()
		want := []string{"MAIL FROM:<sender@example.org>", "RCPT TO:<a@example.net>", "DATA", "RSET"}
		if !reflect.DeepEqual(cmds, want) || !s.Reusable() {
			t.Fatalf("%v: commands %q, reusable %v", ext, cmds, s.Reusable())
		}
	}
}

// TestWithoutPipelining: each command waits for its reply, so each arrives
// in a read of its own, and a transaction with no accepted recipient ends
// with RSET instead of DATA.
func TestWithoutPipelining(t *testing.T) {
	f := startFake(t, []string{"8BITMIME"}, func(cmd string) string {
		switch cmd {
		case "RCPT TO:<gone@example.net>":
			return "550 5.1.1 No such user"
		case "DATA":
			return "354 go ahead"
		}
		return ""
	})
	s := connect(t, testDialer(t), f.Addr)
	out := s.Send(ctx, env("a@example.net", "gone@example.net"), strings.NewReader("hi\r\n"))
	checkOutcome(t, 0, out[0], 250, "2.0.0", "queued", false)
	checkOutcome(t, 1, out[1], 550, "5.1.1", "No such user", true)
	out = s.Send(ctx, env("gone@example.net"), strings.NewReader("hi\r\n"))
	checkOutcome(t, 0, out[0], 550, "5.1.1", "No such user", true)
	cmds, reads := f.commands()
	want := []string{"MAIL FROM:<sender@example.org> BODY=8BITMIME", "RCPT TO:<a@example.net>", "RCPT TO:<gone@example.net>", "DATA", "<content>",
		"MAIL FROM:<sender@example.org> BODY=8BITMIME", "RCPT TO:<gone@example.net>", "RSET"}
	if !reflect.DeepEqual(cmds, want) {
		t.Fatalf("commands %q, want %q", cmds, want)
	}
	for i := 1; i < len(reads); i++ {
		if reads[i] == reads[i-1] {
			t.Errorf("%q arrived in the same read as %q", cmds[i], cmds[i-1])
		}
	}
	if !s.Reusable() || s.Uses() != 2 {
		t.Errorf("reusable %v, uses %d", s.Reusable(), s.Uses())
	}
}

// TestStaleSession: a server that hangs up on MAIL (421 or silently) is
// what BrokeBeforeMail reports, so the courier retries on a new connection.
func TestStaleSession(t *testing.T) {
	for _, r := range []string{"421 4.4.2 Idle too long", "close"} {
		f := startFake(t, []string{"PIPELINING"}, func(cmd string) string {
			if strings.HasPrefix(cmd, "MAIL") {
				return r
			}
			return ""
		})
		s := connect(t, testDialer(t), f.Addr)
		out := s.Send(ctx, env("a@example.net", "b@example.net"), strings.NewReader("x\r\n"))
		if !s.BrokeBeforeMail() || s.Reusable() {
			t.Errorf("%q: broke before MAIL %v, reusable %v", r, s.BrokeBeforeMail(), s.Reusable())
		}
		for i, o := range out {
			if o.Err == nil || o.Err.Permanent || o.Err.Code/100 != 4 {
				t.Errorf("%q: recipient %d: %+v", r, i, o.Err)
			}
		}
		if r != "close" {
			checkOutcome(t, 0, out[0], 421, "4.4.2", "Idle too long", false)
		}
	}
}

// TestInjectionRefused: an address with a line break is never sent; it
// costs only its own recipient the delivery.
func TestInjectionRefused(t *testing.T) {
	if _, err := New(Config{Hostname: "client.test\r\nMAIL FROM:<x>"}); err == nil {
		t.Error("New accepted a host name with a line break")
	}
	srv := startSink(t, nil)
	s := connect(t, testDialer(t), srv.Addr)
	e := env("a@example.net")
	e.From = "x@example.org>\r\nRCPT TO:<victim@example.net"
	out := s.Send(ctx, e, strings.NewReader("x\r\n"))
	if o := out[0].Err; o == nil || o.Code != 451 || o.Text != errLineBreak.Error() || o.Permanent {
		t.Errorf("injected MAIL FROM: %+v", o)
	}
	out = s.Send(ctx, env("a@example.net", "b@example.net>\r\nRCPT TO:<victim@example.net", "c@example.net\n"), strings.NewReader("hi\r\n"))
	checkOutcome(t, 0, out[0], 250, "2.0.0", "OK: queued", false)
	for i := 1; i < 3; i++ {
		if o := out[i].Err; o == nil || o.Code != 451 || o.Text != errLineBreak.Error() {
			t.Errorf("injected RCPT TO %d: %+v", i, o)
		}
	}
	got := srv.messages()
	if len(got) != 1 || !reflect.DeepEqual(got[0].to, []string{"a@example.net"}) {
		t.Fatalf("messages %+v", got)
	}
	if !s.Reusable() {
		t.Error("session not reusable")
	}
}

func TestXtext(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"abc", "abc"}, {"a+b=c d", "a+2Bb+3Dc+20d"}, {"", ""},
	} {
		if got := encodeXtext(c.in); got != c.want {
			t.Errorf("encodeXtext(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := encodeUTF8Addr("jö+x@é.example", true); got != `jö\x{2B}x@é.example` {
		t.Errorf("unitext: %q", got)
	}
	if got := encodeUTF8Addr("jö+x@é.example", false); got != `j\x{F6}\x{2B}x@\x{E9}.example` {
		t.Errorf("xtext: %q", got)
	}
}

// textprotoDot is what net/textproto's DotWriter makes of chunks.
func textprotoDot(chunks [][]byte) []byte {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	w := textproto.NewWriter(bw).DotWriter()
	for _, c := range chunks {
		w.Write(c)
	}
	w.Close()
	return b.Bytes()
}

func ourDot(chunks [][]byte) []byte {
	var b bytes.Buffer
	bw := bufio.NewWriterSize(&b, 16)
	w := &dotWriter{w: bw}
	for _, c := range chunks {
		if n, err := w.Write(c); n != len(c) || err != nil {
			panic("short write")
		}
	}
	w.Close()
	bw.Flush()
	return b.Bytes()
}

func TestDotWriterMatchesTextproto(t *testing.T) {
	fixed := []string{"", ".", "\n", "\r", "\r\n", "\r\r\n", "\r\r\r\n", ".\r\n", "a\n.b\r\n..\r\n.", "a\r", "a\rb\n", "\n.\n", "x"}
	for _, in := range fixed {
		c := [][]byte{[]byte(in)}
		if got, want := ourDot(c), textprotoDot(c); !bytes.Equal(got, want) {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(".\r\naé ")
	for n := 0; n < 5000; n++ {
		in := make([]byte, r.IntN(200))
		for i := range in {
			in[i] = alphabet[r.IntN(len(alphabet))]
		}
		// The same content in random pieces, empty ones included.
		var chunks [][]byte
		for rest := in; len(rest) > 0; {
			k := r.IntN(min(len(rest), 20) + 1)
			chunks = append(chunks, rest[:k])
			rest = rest[k:]
		}
		got, want := ourDot(chunks), textprotoDot(chunks)
		if !bytes.Equal(got, want) {
			t.Fatalf("%q in %d pieces: got %q, want %q", in, len(chunks), got, want)
		}
	}
}

func BenchmarkDotWriter(b *testing.B) {
	msg := message(1 << 20)
	for _, c := range []struct {
		name string
		w    func(*bufio.Writer) interface {
			Write([]byte) (int, error)
		}
	}{
		{"textproto", func(bw *bufio.Writer) interface{ Write([]byte) (int, error) } {
			return textproto.NewWriter(bw).DotWriter()
		}},
		{"chunked", func(bw *bufio.Writer) interface{ Write([]byte) (int, error) } { return &dotWriter{w: bw} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			bw := bufio.NewWriterSize(discard{}, writeBuffer)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				w := c.w(bw)
				for p := msg; len(p) > 0; {
					k := min(len(p), 32<<10)
					w.Write(p[:k])
					p = p[k:]
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// failingBody gives its content, then fails: the queue lost mid-message.
type failingBody struct {
	content *strings.Reader
	err     error
}

func (b *failingBody) Read(p []byte) (int, error) {
	if b.content.Len() > 0 {
		return b.content.Read(p)
	}
	return 0, b.err
}

// TestContentReadFailure: when the message content cannot be read from the
// queue half-way through DATA, the attempt fails temporarily as our own
// failure (REASON_INTERNAL, 451 4.3.0, with the cause), not as the
// server's; the server gets no message and the session is not reused.
func TestContentReadFailure(t *testing.T) {
	srv := startSink(t, nil)
	s := connect(t, testDialer(t), srv.Addr)
	lost := errors.New("nats: connection closed")
	body := &failingBody{content: strings.NewReader("Subject: x\r\n\r\n" + strings.Repeat("line of the body\r\n", 4000)), err: lost}
	out := s.Send(ctx, env("a@example.net", "b@example.net"), body)
	for i, o := range out {
		e := o.Err
		if e == nil {
			t.Fatalf("recipient %d delivered from a body that could not be read", i)
		}
		if e.Permanent || e.Code != 451 || e.Enhanced != "4.3.0" || e.Reason != sluicev1.Reason_REASON_INTERNAL ||
			e.Text != "reading the message content from the queue failed: nats: connection closed" ||
			!errors.Is(e, lost) || e.RemoteHost != "mx.test[127.0.0.1]" {
			t.Errorf("recipient %d: %d %s %q permanent=%v reason=%v host=%q", i, e.Code, e.Enhanced, e.Text, e.Permanent, e.Reason, e.RemoteHost)
		}
	}
	if got := srv.messages(); len(got) != 0 {
		t.Fatalf("the server accepted %d messages from a body cut short", len(got))
	}
	if s.Reusable() {
		t.Error("a session left in the middle of DATA would be reused")
	}
}
