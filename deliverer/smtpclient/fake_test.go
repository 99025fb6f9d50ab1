package smtpclient

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// fake is a scripted SMTP server on loopback for what go-smtp's server
// cannot be made to do: accept DATA after refusing every recipient, answer
// 421, or show how commands arrived. It serves one connection.
type fake struct {
	Addr netip.AddrPort
	// ext is listed after EHLO.
	ext []string
	// answer gives the reply to a command line (without CRLF); "." stands
	// for the end of the content. Unscripted commands get "250 2.0.0 ok".
	answer func(cmd string) string

	mu   sync.Mutex
	log  []string // commands in order; the content as "<content>"
	read []int    // for each entry of log, how many reads had arrived
	body string   // the last content, as sent (dot-stuffed, CRLF)
	done chan struct{}
}

func startFake(t *testing.T, ext []string, answer func(string) string) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{Addr: netip.MustParseAddrPort(ln.Addr().String()), ext: ext, answer: answer, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		f.serve(c)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-f.done
	})
	return f
}

// countingReader counts the reads that returned data.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n++
	}
	return n, err
}

func (f *fake) record(s string, reads int) {
	f.mu.Lock()
	f.log = append(f.log, s)
	f.read = append(f.read, reads)
	f.mu.Unlock()
}

func (f *fake) serve(c net.Conn) {
	cr := &countingReader{r: c}
	br := bufio.NewReader(cr)
	reply := func(s string) bool {
		_, err := io.WriteString(c, s+"\r\n")
		return err == nil
	}
	if !reply("220 fake.test ESMTP") {
		return
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimSuffix(line, "\r\n")
		f.record(cmd, cr.n)
		var r string
		switch {
		case strings.HasPrefix(cmd, "EHLO "):
			r = "250-fake.test"
			for _, e := range f.ext {
				r += "\r\n250-" + e
			}
			r += "\r\n250 HELP"
		case cmd == "QUIT":
			reply("221 2.0.0 bye")
			return
		default:
			r = f.answer(cmd)
			if r == "" {
				r = "250 2.0.0 ok"
			}
		}
		if r == "close" {
			return
		}
		if !reply(r) {
			return
		}
		if cmd == "DATA" && strings.HasPrefix(r, "354") {
			var b strings.Builder
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				b.WriteString(l)
			}
			f.mu.Lock()
			f.body = b.String()
			f.mu.Unlock()
			if b.Len() == 0 {
				f.record(".", cr.n)
			} else {
				f.record("<content>", cr.n)
			}
			r = f.answer(".")
			if r == "" {
				r = "250 2.0.0 queued"
			}
			if !reply(r) {
				return
			}
		}
	}
}

// commands returns the commands after EHLO, and for each how many reads
// had arrived when it was complete.
func (f *fake) commands() ([]string, []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.log {
		if strings.HasPrefix(c, "EHLO ") {
			return append([]string(nil), f.log[i+1:]...), append([]int(nil), f.read[i+1:]...)
		}
	}
	return nil, nil
}
