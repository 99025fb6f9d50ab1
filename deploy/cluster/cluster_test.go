package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var natsServer string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-cluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	natsServer = filepath.Join(dir, "nats-server")
	cmd := exec.Command("go", "build", "-o", natsServer, "github.com/nats-io/nats-server/v2")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "cluster: building nats-server failed:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestKillFreezeRestart forms a three-node cluster, creates an R3 stream,
// and checks what the end-to-end tests rely on: a killed leader is
// replaced, a restarted node catches up on what it missed, and a frozen
// node is alive but answers nothing until thawed.
func TestKillFreezeRestart(t *testing.T) {
	c, err := Start(Options{Bin: natsServer, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster ready after %s", time.Since(start).Round(time.Millisecond))
	if len(c.Nodes) != 3 {
		t.Fatalf("%d nodes", len(c.Nodes))
	}
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Each attempt has its own deadline: a request lost while a leader
	// is elected gets no answer at all.
	var s jetstream.Stream
	retry(t, "create R3 stream", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3})
		return err
	})
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			retry(t, "publish", func() error {
				ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				_, err := js.Publish(ctx, fmt.Sprintf("t.%d", i), []byte("x"), jetstream.WithMsgID(fmt.Sprint(i)))
				return err
			})
		}
	}
	info := func() *jetstream.StreamInfo {
		var in *jetstream.StreamInfo
		retry(t, "stream info", func() error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			in, err = s.Info(ctx)
			if err == nil && (in.Cluster == nil || in.Cluster.Leader == "") {
				err = fmt.Errorf("no leader")
			}
			return err
		})
		return in
	}
	publish(0, 100)

	leader := c.Node(info().Cluster.Leader)
	if leader == nil {
		t.Fatalf("leader %q is not a node of the cluster", info().Cluster.Leader)
	}
	pid := leader.Pid()
	leader.Kill()
	if leader.Running() {
		t.Fatalf("%s (pid %d) still running after Kill", leader.Name, pid)
	}
	publish(100, 200)
	if in := info(); in.Cluster.Leader == leader.Name || in.State.Msgs != 200 {
		t.Fatalf("after killing %s: leader %s, %d messages, want another leader and 200", leader.Name, in.Cluster.Leader, in.State.Msgs)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	if leader.Pid() == pid {
		t.Fatalf("restarted %s has the old pid %d", leader.Name, pid)
	}
	if err := leader.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	retry(t, "every replica current", func() error {
		in := info()
		if len(in.Cluster.Replicas) != 2 {
			return fmt.Errorf("%d replicas", len(in.Cluster.Replicas))
		}
		for _, r := range in.Cluster.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("replica %s current=%v offline=%v", r.Name, r.Current, r.Offline)
			}
		}
		return nil
	})

	// A frozen node keeps its process but fails its health check; thawed,
	// it answers again.
	n := c.Nodes[0]
	if err := n.Freeze(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	if err := n.Ready(short); err == nil {
		t.Fatalf("frozen %s answered its health check", n.Name)
	}
	cancelShort()
	if !n.Running() {
		t.Fatalf("frozen %s is not running", n.Name)
	}
	if err := n.Thaw(); err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	// Close leaves nothing running, frozen nodes included.
	if err := n.Freeze(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, n := range c.Nodes {
		if n.Running() {
			t.Fatalf("%s still running after Close", n.Name)
		}
	}
}

func retry(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
