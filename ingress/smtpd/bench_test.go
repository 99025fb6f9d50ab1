package smtpd

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/sluice-mta/sluice/ingress"
	"github.com/sluice-mta/sluice/ingress/store"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"

	"github.com/sluice-mta/sluice/ingress/internal/benchmsg"
)

// startBench runs an ingress against a fresh JetStream server, like start
// but without the telemetry recorders, whose work would be measured too.
func startBench(b *testing.B) string {
	b.Helper()
	set := ingress.DefaultSettings()
	set.Listen = "127.0.0.1:0"
	set.Hostname = "mx.sluice.test"
	set.MetricsListen = ""
	q := config.DefaultQueue()
	ns := natstest.Start(b)
	_, js := ns.Connect(b)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, q); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.New(ctx, js, q, store.Options{RequestTimeout: 10 * time.Second, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Options{Settings: set, Store: st, Tracer: tracenoop.NewTracerProvider().Tracer(""), Meter: metricnoop.NewMeterProvider().Meter(""), Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
	})
	return srv.Addr().String()
}

// benchClient speaks SMTP on a raw connection, so that the benchmark can
// send BDAT (go-smtp's client only sends DATA).
type benchClient struct {
	b    *testing.B
	conn net.Conn
	r    *bufio.Reader
}

// do sends out and fails the benchmark unless the reply has code want.
func (c *benchClient) do(out []byte, want int) {
	if _, err := c.conn.Write(out); err != nil {
		c.b.Fatal(err)
	}
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.b.Fatal(err)
		}
		if len(line) < 4 || line[3] != '-' {
			if code, _ := strconv.Atoi(line[:min(3, len(line))]); code != want {
				c.b.Fatalf("reply %q to %.40q, want %d", line, out, want)
			}
			return
		}
	}
}

// BenchmarkMessage sends messages through the whole ingress on loopback,
// one transaction per iteration, with DATA and with BDAT: smtpconn, the
// guard, go-smtp's dot reader, the content check and the store. It
// measures the whole picture; run it with -cpuprofile to see the share of
// each layer (the NATS server runs in the same process).
func BenchmarkMessage(b *testing.B) {
	addr := startBench(b)
	for _, size := range []struct {
		name string
		n    int
	}{{"4KB", 4 << 10}, {"5MB", 5 << 20}} {
		content := benchmsg.Content(size.n)
		// The content has no line starting with a dot: no stuffing needed.
		data := append(append([]byte("DATA\r\n"), content...), ".\r\n"...)
		bdat := append([]byte("BDAT "+strconv.Itoa(len(content))+" LAST\r\n"), content...)
		for _, mode := range []string{"DATA", "BDAT"} {
			b.Run(size.name+"/"+mode, func(b *testing.B) {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				c := &benchClient{b: b, conn: conn, r: bufio.NewReader(conn)}
				c.do(nil, 220)
				c.do([]byte("EHLO client.example.org\r\n"), 250)
				b.SetBytes(int64(len(content)))
				for b.Loop() {
					c.do([]byte("MAIL FROM:<alice@example.org>\r\n"), 250)
					c.do([]byte("RCPT TO:<bob@example.test>\r\n"), 250)
					if mode == "DATA" {
						c.do(data[:6], 354)
						c.do(data[6:], 250)
					} else {
						c.do(bdat, 250)
					}
				}
				c.do([]byte("QUIT\r\n"), 221)
			})
		}
	}
}
