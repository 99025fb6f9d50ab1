package smtpconn

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/sluice-mta/sluice/ingress/internal/benchmsg"
)

// BenchmarkContentScan measures the search for the end of DATA content,
// in pieces of the size fill reads.
func BenchmarkContentScan(b *testing.B) {
	for _, bs := range benchmsg.Sizes {
		in := append(benchmsg.Content(bs.Size), ".\r\n"...)
		b.Run(bs.Name, func(b *testing.B) {
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
	for _, bs := range benchmsg.Sizes {
		content := benchmsg.Content(bs.Size)
		in := append(append([]byte("DATA\r\n"), content...), ".\r\n"...)
		b.Run(bs.Name, func(b *testing.B) {
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
