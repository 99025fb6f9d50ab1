package smtpconn

import (
	"bytes"
	"io"
	"testing"
)

// chunks returns one of its pieces per Read, as a lock-step client's
// commands and a small message arrive.
type chunks struct{ left [][]byte }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.left) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.left[0])
	if c.left[0] = c.left[0][n:]; len(c.left[0]) == 0 {
		c.left = c.left[1:]
	}
	return n, nil
}

// A lock-step session reads every command and the content through one
// buffer, and what go-smtp reads is exactly what the client sent.
func TestReadBufferReused(t *testing.T) {
	session := []string{
		"EHLO client.example\r\n",
		"MAIL FROM:<a@example.org>\r\n",
		"RCPT TO:<b@example.net>\r\n",
		"DATA\r\n",
		"Subject: reuse\r\n\r\nfirst line\r\n..dot line\r\n.\r\n",
		"MAIL FROM:<c@example.org>\r\n",
		"QUIT\r\n",
	}
	src := &chunks{}
	for _, s := range session {
		src.left = append(src.left, []byte(s))
	}
	c := Server(&pipeConn{r: src}, Config{MaxLineLength: 2000})
	reply := map[string]string{"DATA\r\n": "354 Go ahead\r\n"}

	var got bytes.Buffer
	var first *byte
	buf := make([]byte, 4096)
	for i, want := range session {
		var piece bytes.Buffer
		for piece.Len() < len(want) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("piece %d: %v after %q", i, err, piece.String())
			}
			piece.Write(buf[:n])
		}
		if piece.String() != want {
			t.Fatalf("piece %d: read %q, want %q", i, piece.String(), want)
		}
		got.Write(piece.Bytes())
		if first == nil {
			first = &c.rbuf[0]
		} else if &c.rbuf[0] != first {
			t.Errorf("piece %d was read into a new buffer", i)
		}
		r, ok := reply[want]
		if !ok {
			r = "250 OK\r\n"
		}
		if _, err := c.Write([]byte(r)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.Read(buf); err != io.EOF {
		t.Fatalf("after the session: %d octets, %v; want EOF", n, err)
	}
}

// A large message streams through one pooled buffer, which the connection
// gives back once the stream pauses; what go-smtp reads is exactly what
// the client sent.
func TestLargeContentStreamsThroughOneBuffer(t *testing.T) {
	var content bytes.Buffer
	for i := range 80 * maxReadSize / 1024 {
		content.Write(bytes.Repeat([]byte{'a' + byte(i%26)}, 1022))
		content.WriteString("\r\n")
	}
	session := []string{"EHLO client.example\r\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@example.net>\r\n", "DATA\r\n",
		content.String(), ".\r\n", "MAIL FROM:<c@example.org>\r\n", "QUIT\r\n"}
	src := &chunks{}
	for _, s := range session {
		src.left = append(src.left, []byte(s))
	}
	c := Server(&pipeConn{r: src}, Config{MaxLineLength: 2000})

	buf := make([]byte, 4096)
	var streaming *[maxReadSize]byte
	for i, want := range session {
		var piece bytes.Buffer
		for piece.Len() < len(want) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("piece %d: %v", i, err)
			}
			piece.Write(buf[:n])
			if at := piece.Len(); i == 4 && at > len(want)/4 && at < len(want)*3/4 {
				if streaming == nil {
					streaming = c.big
				}
				if c.big == nil || c.big != streaming {
					t.Fatalf("%d octets into the message: read into %p, not the one pooled buffer %p", at, c.big, streaming)
				}
			}
		}
		if piece.String() != want {
			t.Fatalf("piece %d: read %d octets, not the %d sent", i, piece.Len(), len(want))
		}
		if i == len(session)-2 && c.big != nil {
			t.Fatalf("after the message, the connection still holds its stream buffer")
		}
		r := "250 OK\r\n"
		if want == "DATA\r\n" {
			r = "354 Go ahead\r\n"
		}
		if _, err := c.Write([]byte(r)); err != nil {
			t.Fatal(err)
		}
	}
}
