package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// site is a destination that counts the connections open at once.
type site struct {
	net.Listener
	mu        sync.Mutex
	open, max int
	delivered atomic.Int64
}

func (s *site) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.open++
	s.max = max(s.max, s.open)
	s.mu.Unlock()
	return &siteConn{Conn: c, s: s}, nil
}

func (s *site) stats() (open, maxOpen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open, s.max
}

type siteConn struct {
	net.Conn
	s    *site
	once sync.Once
}

func (c *siteConn) Close() error {
	c.once.Do(func() { c.s.mu.Lock(); c.s.open--; c.s.mu.Unlock() })
	return c.Conn.Close()
}

type siteSession struct{ s *site }

func (x siteSession) Mail(string, *smtp.MailOptions) error { return nil }
func (x siteSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (x siteSession) Data(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	time.Sleep(30 * time.Millisecond)
	x.s.delivered.Add(1)
	return err
}
func (x siteSession) Reset()        {}
func (x siteSession) Logout() error { return nil }

// TestShapingAcrossProcesses runs three deliverer processes against one
// site limited to 3 connections: the site never sees more than 3 at once;
// SIGHUP reloads the shaping section; and when a process holding the
// site's slots is killed (SIGKILL: its connections die with it, its slots
// are not released), the others take over within the lease TTL.
func TestShapingAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sluice-deliverer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dest := &site{Listener: ln}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return siteSession{dest}, nil }))
	srv.Domain = "mx.limited.test"
	go srv.Serve(dest)
	t.Cleanup(func() { srv.Close() })

	const limit = 3
	configFor := func(name string, maxConns int) string {
		return fmt.Sprintf("nats: {url: %q}\ndeliverer:\n  hostname: deliverer.test\n  instance: %s\n  dns_server: %q\n"+
			"  concurrency: 8\n  metrics_listen: \"\"\n  connection_cache_time: 1m\n  routes: {limited.test: %q}\n"+
			// A job handed to p1 or p2 in the instant before they are
			// killed comes back after ack_wait (30 s by default), which
			// is not what this test measures: keep it under the lease TTL.
			"  ack_wait: 5s\n"+
			"  shaping:\n    default: {max_connections: %d, initial_connections: %d}\n    busy_delay: 50ms\n",
			ns.ClientURL(), name, dns.Addr, ln.Addr().String(), maxConns, maxConns)
	}
	var procs []*exec.Cmd
	var logs []*syncBuffer
	start := func(name string) {
		cfg := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(cfg, []byte(configFor(name, limit)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-config", cfg)
		buf := &syncBuffer{}
		cmd.Stderr = buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		procs, logs = append(procs, cmd), append(logs, buf)
	}
	waitLog := func(i int, what string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs[i].String(), what); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d never logged %s:\n%s", i+1, what, logs[i])
			}
		}
	}
	// p1 and p2 first: they take every slot of the site.
	start("p1")
	start("p2")
	for i := range procs {
		waitLog(i, `"started"`)
	}
	n := 0
	send := func(k int) {
		t.Helper()
		for range k {
			n++
			qid := wire.NewQueueID(time.Now())
			body := fmt.Sprintf("Subject: shaped-%d\r\n\r\nhi\r\n", n)
			m, _ := proto.Marshal(&sluicev1.Message{Schema: 1, QueueId: qid, MailFrom: "s@origin.test", Body: []byte(body)})
			ack, err := js.Publish(ctx, wire.MessageSubject(qid), m, jetstream.WithMsgID(qid))
			if err != nil {
				t.Fatal(err)
			}
			job := &sluicev1.Job{Schema: 1, JobId: wire.JobID(qid, 0), QueueId: qid, MsgSeq: ack.Sequence, MailFrom: "s@origin.test",
				Recipients: []*sluicev1.Recipient{{Address: "a@limited.test"}}, Domain: "limited.test",
				Priority: sluicev1.Priority_PRIORITY_NORMAL, Attempt: 1, BodySize: int64(len(body))}
			jd, _ := proto.Marshal(job)
			if _, err := js.Publish(ctx, wire.JobSubject(job.Priority, job.JobId), jd, jetstream.WithMsgID(job.JobId+"/1")); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitDelivered := func(want int64, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for dest.delivered.Load() < want {
			if time.Since(start) > within {
				t.Fatalf("%d of %d messages delivered after %s", dest.delivered.Load(), want, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}

	send(60)
	waitDelivered(60, 60*time.Second)
	_, maxOpen := dest.stats()
	t.Logf("two processes, 16 delivery slots, a site limited to %d: at most %d connections open at once", limit, maxOpen)
	if maxOpen == 0 || maxOpen > limit {
		t.Errorf("%d connections open at once, want 1..%d", maxOpen, limit)
	}

	// SIGHUP puts a changed shaping section in force.
	if err := os.WriteFile(filepath.Join(dir, "p1.yaml"), []byte(configFor("p1", limit)), 0o644); err != nil {
		t.Fatal(err)
	}
	procs[0].Process.Signal(syscall.SIGHUP)
	waitLog(0, "deliverer.shaping reloaded")
	if procs[0].ProcessState != nil {
		t.Fatal("SIGHUP stopped the process")
	}

	// Their idle sessions keep the site's slots (connection_cache_time
	// 1m). p3 starts, and p1 and p2 are killed with SIGKILL: their
	// connections die with them, their slots are not released.
	kv, err := js.KeyValue(ctx, wire.BucketShaping)
	if err != nil {
		t.Fatal(err)
	}
	holders := map[string]int{}
	lister, err := kv.ListKeysFiltered(ctx, "conn.>")
	if err != nil {
		t.Fatal(err)
	}
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		for _, p := range []string{"p1", "p2"} {
			if strings.Contains(string(e.Value()), `"instance":"`+p+`"`) {
				holders[p]++
			}
		}
	}
	if holders["p1"]+holders["p2"] == 0 {
		t.Fatalf("no slot held after the first batch: %v", holders)
	}
	start("p3")
	waitLog(2, `"started"`)
	for _, p := range procs[:2] {
		_ = p.Process.Kill()
		_, _ = p.Process.Wait()
	}
	killed := time.Now()
	send(20)
	took := waitDelivered(80, 40*time.Second)
	_, maxOpen = dest.stats()
	t.Logf("p1 and p2, holding %v slots, killed with SIGKILL: p3 delivered 20 more %s later (lease TTL 6s); at most %d connections open at once",
		holders, took.Round(10*time.Millisecond), maxOpen)
	if since := time.Since(killed); since > 6*time.Second+4*time.Second {
		t.Errorf("the site was blocked %s after the holders of its slots died, want within the lease TTL 6s + 4s", since)
	}
	if maxOpen > limit {
		t.Errorf("%d connections open at once, want at most %d", maxOpen, limit)
	}
}
