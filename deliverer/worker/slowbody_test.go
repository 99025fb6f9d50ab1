package worker

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// slowReader reads at most 64 KiB per 50 ms: about 1.3 MB/s.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(50 * time.Millisecond)
	return s.r.Read(p[:min(len(p), 64<<10)])
}

type slowSink struct {
	mu  sync.Mutex
	got [][32]byte
	n   []int
}

func (k *slowSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &slowSinkSession{k: k}, nil }

type slowSinkSession struct{ k *slowSink }

func (s *slowSinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *slowSinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *slowSinkSession) Reset()                               {}
func (s *slowSinkSession) Logout() error                        { return nil }
func (s *slowSinkSession) Data(r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, slowReader{r})
	if err != nil {
		return err
	}
	s.k.mu.Lock()
	s.k.got = append(s.k.got, [32]byte(h.Sum(nil)))
	s.k.n = append(s.k.n, int(n))
	s.k.mu.Unlock()
	return nil
}

// TestLargeBodyToASlowDestination: an 8 MB body from the object store to a
// destination that takes it at about 1.3 MB/s (six seconds, more than
// socket buffers hold) is delivered whole. nats.go bounded the whole read
// of an object by the JetStream default timeout (5 s), and every attempt
// failed half-way with "451 4.0.0 nats: timeout".
func TestLargeBodyToASlowDestination(t *testing.T) {
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := &slowSink{}
	srv := smtp.NewServer(sink)
	srv.Domain = "mx.slow.test"
	srv.MaxMessageBytes = 64 << 20
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e.service(t, func(s *Settings) {
		s.Routes = map[string]string{"slow.test": ln.Addr().String()}
		s.DataTimeout = time.Minute
	})
	line := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n")
	big := append([]byte("Subject: big and slow\r\n\r\n"), bytes.Repeat(line, 8<<20/len(line))...)
	job := e.enqueue(t, jobSpec{domain: "slow.test", rcpts: []string{"a@slow.test"}, bigBody: big})
	r := e.result(t, job, 60*time.Second)
	check(t, r.Recipients[0], delivered)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.got) != 1 || sink.got[0] != sha256.Sum256(big) {
		t.Fatalf("destination received %d messages of %v bytes, want 1 of %d bytes, byte-identical", len(sink.got), sink.n, len(big))
	}
}
