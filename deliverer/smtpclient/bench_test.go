package smtpclient

import (
	"bytes"
	"context"
	"testing"
)

// BenchmarkSend4K runs b.N transactions of a 4 KB message with two
// recipients over one reused session to a go-smtp server on loopback,
// which advertises PIPELINING. The figure includes the server's work.
func BenchmarkSend4K(b *testing.B) { benchSend(b, 4<<10, 2) }

// BenchmarkSend5M is the same with a 5 MB message, to show the cost of
// writing the content.
func BenchmarkSend5M(b *testing.B) { benchSend(b, 5<<20, 1) }

func benchSend(b *testing.B, size, rcpts int) {
	srv := startSink(b, nil)
	srv.mu.Lock()
	srv.discard = true
	srv.mu.Unlock()
	s := connect(b, testDialer(b), srv.Addr)
	msg := message(size)
	env := Envelope{From: "sender@example.org", Size: int64(len(msg))}
	for i := 0; i < rcpts; i++ {
		env.Recipients = append(env.Recipients, Recipient{Address: "rcpt@example.net"})
	}
	ctx := context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, o := range s.Send(ctx, env, bytes.NewReader(msg)) {
			if o.Err != nil {
				b.Fatal(o.Err)
			}
		}
		if !s.Reusable() {
			b.Fatal("session not reusable")
		}
	}
}
