package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// TestTwoProcesses builds the binary and runs two deliverer processes that
// share the consumers and one slow destination: each delivers a share, the
// total is exact, and both stop cleanly on SIGTERM.
func TestTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sluice-deliverer")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t)
	dest, err := capture.Listen("127.0.0.1:0", capture.Options{Delay: 60 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer dest.Close()

	// A bad config exits 2.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("deliverer: {concurrency: 0}\n"), 0o644)
	if err := exec.Command(bin, "-config", bad).Run(); err == nil || err.(*exec.ExitError).ExitCode() != 2 {
		t.Errorf("bad config: %v, want exit 2", err)
	}

	var procs []*exec.Cmd
	var logs []*syncBuffer
	for _, name := range []string{"p1", "p2"} {
		cfg := filepath.Join(dir, name+".yaml")
		y := fmt.Sprintf("nats: {url: %q}\ndeliverer:\n  hostname: deliverer.test\n  instance: %s\n  dns_server: %q\n  concurrency: 4\n  metrics_listen: \"\"\n  routes: {shared.test: %q}\n",
			ns.ClientURL(), name, dns.Addr, dest.Addr)
		if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
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
	// Both processes must have created their consumers before the jobs
	// arrive, so that both get a share.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs[0].String(), `"started"`) || !strings.Contains(logs[1].String(), `"started"`) {
		if time.Now().After(deadline) {
			t.Fatalf("processes did not start:\n%s\n%s", logs[0], logs[1])
		}
		time.Sleep(20 * time.Millisecond)
	}

	const n = 30
	var ids []string
	for i := range n {
		qid := wire.NewQueueID(time.Now())
		body := fmt.Sprintf("Subject: proc-%d\r\n\r\nhi\r\n", i)
		m, _ := proto.Marshal(&sluicev1.Message{Schema: 1, QueueId: qid, MailFrom: "s@origin.test", Body: []byte(body)})
		ack, err := js.Publish(ctx, wire.MessageSubject(qid), m, jetstream.WithMsgID(qid))
		if err != nil {
			t.Fatal(err)
		}
		job := &sluicev1.Job{Schema: 1, JobId: wire.JobID(qid, 0), QueueId: qid, MsgSeq: ack.Sequence, MailFrom: "s@origin.test",
			Recipients: []*sluicev1.Recipient{{Address: "a@shared.test"}}, Domain: "shared.test",
			Priority: sluicev1.Priority_PRIORITY_NORMAL, Attempt: 1, BodySize: int64(len(body))}
		ids = append(ids, job.JobId)
		jd, _ := proto.Marshal(job)
		if _, err := js.Publish(ctx, wire.JobSubject(job.Priority, job.JobId), jd, jetstream.WithMsgID(job.JobId+"/1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dest.Wait(n, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// Read every result: who delivered what.
	results, err := js.Stream(ctx, wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]int{}
	for _, id := range ids {
		var raw *jetstream.RawStreamMsg
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if raw, err = results.GetLastMsgForSubject(ctx, wire.ResultSubject(id)); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("result of %s: %v", id, err)
		}
		r := &sluicev1.Result{}
		if err := proto.Unmarshal(raw.Data, r); err != nil {
			t.Fatal(err)
		}
		if r.Recipients[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			t.Errorf("job %s: %v", id, r.Recipients[0])
		}
		by[r.Deliverer]++
	}
	if info, err := results.Info(ctx); err != nil || info.State.Msgs != n {
		t.Errorf("results stream holds %d results, want %d (%v)", info.State.Msgs, n, err)
	}
	time.Sleep(200 * time.Millisecond)
	if dest.Count() != n {
		t.Errorf("destination got %d messages, want %d", dest.Count(), n)
	}
	if by["p1"] == 0 || by["p2"] == 0 {
		t.Errorf("shares %v: both processes should deliver", by)
	}
	t.Logf("shares %v", by)

	for i, p := range procs {
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("process %d exit: %v\n%s", i, err, logs[i])
			}
		case <-time.After(15 * time.Second):
			t.Errorf("process %d did not stop", i)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
