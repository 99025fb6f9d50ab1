package smtpconn

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// benchContent is a message of about size octets as a client sends it: a
// short header section and a body of 76-character lines (the length
// base64 and quoted-printable produce), every line ending in CRLF.
func benchContent(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: Alice <alice@example.org>\r\nTo: Bob <bob@example.test>\r\n")
	b.WriteString("Subject: benchmark\r\nMessage-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n\r\n")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	line := make([]byte, 78)
	for i := 0; b.Len() < size; i++ {
		for j := range 76 {
			line[j] = alphabet[(i*7+j)%len(alphabet)]
		}
		line[76], line[77] = '\r', '\n'
		b.Write(line)
	}
	return b.Bytes()
}

var benchSizes = []struct {
	name string
	size int
}{{"4KB", 4 << 10}, {"5MB", 5 << 20}}

// BenchmarkContentScan measures the search for the end of DATA content,
// in pieces of the size fill reads.
func BenchmarkContentScan(b *testing.B) {
	for _, bs := range benchSizes {
		in := append(benchContent(bs.size), ".\r\n"...)
		b.Run(bs.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				var s contentState
				done := false
				for rest := in; len(rest) > 0 && !done; {
					var n int
					n, done = s.scan(rest[:min(4096, len(rest))])
					rest = rest[n:]
				}
				if !done {
					b.Fatal("end of data not found")
				}
			}
		})
	}
}

// pipeConn is a client that has sent everything in r and discards the
// server's replies.
type pipeConn struct {
	net.Conn
	r io.Reader
}

func (c *pipeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *pipeConn) Close() error                { return nil }

// BenchmarkConnData measures a DATA transaction's content through a Conn,
// read in pieces of 4096 as go-smtp's bufio.Reader reads.
func BenchmarkConnData(b *testing.B) {
	for _, bs := range benchSizes {
		content := benchContent(bs.size)
		in := append(append([]byte("DATA\r\n"), content...), ".\r\n"...)
		b.Run(bs.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			buf := make([]byte, 4096)
			for b.Loop() {
				c := Server(&pipeConn{r: bytes.NewReader(in)}, Config{MaxLineLength: 2000})
				if n, err := c.Read(buf); err != nil || string(buf[:n]) != "DATA\r\n" {
					b.Fatalf("read %q, %v", buf[:n], err)
				}
				if _, err := c.Write([]byte("354 Go ahead\r\n")); err != nil {
					b.Fatal(err)
				}
				total := 6
				for {
					n, err := c.Read(buf)
					total += n
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				if total != len(in) {
					b.Fatalf("read %d of %d octets", total, len(in))
				}
			}
		})
	}
}
