// Package cluster runs a JetStream cluster of real nats-server processes on
// loopback: each node with its own store directory, client, cluster
// (route) and monitoring ports, all routed to each other under one cluster
// name. It is what the end-to-end tests kill, freeze and restart to prove
// that nothing acknowledged is lost when a node fails, and what
// `sluice-local -cluster 3` runs so a user can try failover on a laptop.
//
// The nodes are child processes of a nats-server binary (built from the
// module the services are tested with), addressed by their process ids:
// Kill is SIGKILL, Freeze and Thaw are SIGSTOP and SIGCONT, Start restarts
// a node on the same ports and store directory.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure a Cluster.
type Options struct {
	// Bin is the nats-server binary.
	Bin string
	// Dir holds each node's configuration, store directory and log.
	Dir string
	// Nodes is the number of servers (default 3). One node runs as a
	// standalone server, without a cluster block: what a replicated
	// system is compared against.
	Nodes int
	// Name is the cluster's name (default "sluice").
	Name string
	// SyncAlways makes every node fsync every JetStream write.
	SyncAlways bool
	// Addr returns a free loopback address for each port of each node;
	// nil uses a port the kernel picks.
	Addr func() (string, error)
	// ClientPort, ClusterPort and MonitorPort, when not zero, fix the
	// first node's ports on 127.0.0.1; node i takes port+i-1 (the
	// defaults of a single nats-server are 4222, 6222 and 8222). Addr is
	// then not used.
	ClientPort, ClusterPort, MonitorPort int
}

// Cluster is a set of running (or killed, or frozen) nodes.
type Cluster struct {
	Nodes []*Node
	opts  Options
}

// Node is one nats-server of the cluster. Its addresses and directories
// stay the same across restarts.
type Node struct {
	// Name is the node's server name, as JetStream reports it in a
	// stream's Cluster.Leader and Cluster.Replicas.
	Name string
	// ClientAddr is host:port of the client listener.
	ClientAddr string
	// ClusterAddr is host:port of the route listener.
	ClusterAddr string
	// MonitorAddr is host:port of the HTTP monitoring endpoint (/healthz,
	// /jsz, /routez).
	MonitorAddr string
	// StoreDir holds the node's JetStream files.
	StoreDir string
	// Config and LogFile are the node's configuration and log.
	Config  string
	LogFile string

	bin string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	frozen bool
}

// Start writes every node's configuration and starts them all at once,
// without waiting for them to form a cluster: that is what Ready is for,
// and what a cold start test must not do.
func Start(o Options) (*Cluster, error) {
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Name == "" {
		o.Name = "sluice"
	}
	if o.Addr == nil {
		o.Addr = freeAddr
	}
	if _, err := os.Stat(o.Bin); err != nil {
		return nil, fmt.Errorf("cluster: nats-server binary: %w", err)
	}
	c := &Cluster{opts: o}
	for i := 1; i <= o.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("n%d", i), bin: o.Bin}
		for _, a := range []struct {
			addr *string
			port int
		}{{&n.ClientAddr, o.ClientPort}, {&n.ClusterAddr, o.ClusterPort}, {&n.MonitorAddr, o.MonitorPort}} {
			if a.port != 0 {
				*a.addr = fmt.Sprintf("127.0.0.1:%d", a.port+i-1)
				continue
			}
			addr, err := o.Addr()
			if err != nil {
				return nil, fmt.Errorf("cluster: %w", err)
			}
			*a.addr = addr
		}
		dir := filepath.Join(o.Dir, n.Name)
		n.StoreDir = filepath.Join(dir, "jetstream")
		n.Config = filepath.Join(dir, "nats.conf")
		n.LogFile = filepath.Join(dir, "nats.log")
		if err := os.MkdirAll(n.StoreDir, 0o755); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := os.WriteFile(n.Config, []byte(c.config(n)), 0o644); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	for _, n := range c.Nodes {
		if err := n.Start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// config is a node's nats-server configuration: JetStream on, routes to
// every other node (no cluster block for a single node). The routes name
// every node, this one included, as nats-server's own cluster examples
// do; a server skips the route to itself.
func (c *Cluster) config(n *Node) string {
	var routes []string
	for _, o := range c.Nodes {
		routes = append(routes, fmt.Sprintf("    nats-route://%s", o.ClusterAddr))
	}
	host, port, _ := net.SplitHostPort(n.ClientAddr)
	chost, cport, _ := net.SplitHostPort(n.ClusterAddr)
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\n", n.Name)
	fmt.Fprintf(&b, "host: %s\nport: %s\n", host, port)
	fmt.Fprintf(&b, "http: %q\n", n.MonitorAddr)
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n", n.StoreDir)
	if c.opts.SyncAlways {
		fmt.Fprintf(&b, "  sync_interval: always\n")
	}
	fmt.Fprintf(&b, "}\n")
	if len(c.Nodes) > 1 {
		fmt.Fprintf(&b, "cluster {\n  name: %q\n  host: %s\n  port: %s\n  routes: [\n%s\n  ]\n}\n",
			c.opts.Name, chost, cport, strings.Join(routes, "\n"))
	}
	return b.String()
}

// URLs is the comma-separated list of the nodes' client URLs, the form
// nats.url takes.
func (c *Cluster) URLs() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.URL())
	}
	return strings.Join(u, ",")
}

// Node returns the node with the given server name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Ready waits until every node answers its monitoring /healthz with 200,
// which nats-server gives once it is connected to the JetStream meta group
// and every stream and consumer it holds is current.
func (c *Cluster) Ready(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := n.Ready(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Close kills every node (thawing a frozen one first, so that nothing is
// left stopped) and waits for each to be gone. It is safe to call twice.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// URL is the node's client URL.
func (n *Node) URL() string { return "nats://" + n.ClientAddr }

// Start starts the node's process (again), appending its output to its
// log file. Starting a running node is an error.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("cluster: node %s is running (pid %d)", n.Name, n.cmd.Process.Pid)
		}
	}
	lf, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	cmd := exec.Command(n.bin, "-c", n.Config)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("cluster: start node %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		lf.Close()
		close(done)
	}()
	n.cmd, n.done, n.frozen = cmd, done, false
	return nil
}

// Pid is the process id of the node's current run, or 0 when it never ran.
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Running reports whether the node's process is alive (frozen or not).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Done is closed when the node's current run ends.
func (n *Node) Done() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.done
}

// Kill sends SIGKILL (kill -9) and waits until the process is gone.
func (n *Node) Kill() {
	n.signal(syscall.SIGKILL, 10*time.Second)
}

// Stop shuts the node down with SIGTERM, as an orchestrator does for a
// rolling restart, and kills it if it has not exited within grace.
func (n *Node) Stop(grace time.Duration) {
	if !n.signal(syscall.SIGTERM, grace) {
		n.Kill()
	}
}

// Freeze stops the process with SIGSTOP: it keeps its sockets open but
// answers nothing, like a node in a long pause or behind a dead link.
func (n *Node) Freeze() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("cluster: node %s never started", n.Name)
	}
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("cluster: freeze %s: %w", n.Name, err)
	}
	n.frozen = true
	// The signal is queued, not yet taken: a thread still running can
	// answer one more request. Wait until every thread is stopped.
	waitStopped(n.cmd.Process.Pid, 2*time.Second)
	return nil
}

// waitStopped polls /proc until every thread of pid is in the stopped
// state, or until limit passes (where /proc cannot be read, it returns).
func waitStopped(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return
		}
		stopped := true
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			// "pid (comm) S ...": the state follows the last ')'.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Thaw resumes a frozen node with SIGCONT.
func (n *Node) Thaw() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("cluster: node %s never started", n.Name)
	}
	if err := n.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("cluster: thaw %s: %w", n.Name, err)
	}
	n.frozen = false
	return nil
}

// signal sends sig to a running node and waits up to wait for it to exit;
// it reports whether the node is gone. A frozen node is thawed after the
// signal, so that SIGTERM is acted on and nothing stays stopped.
func (n *Node) signal(sig syscall.Signal, wait time.Duration) bool {
	n.mu.Lock()
	cmd, done, frozen := n.cmd, n.done, n.frozen
	n.mu.Unlock()
	if cmd == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
	}
	_ = cmd.Process.Signal(sig)
	if frozen {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Ready waits until the node's monitoring /healthz answers 200: the server
// is up, in the JetStream meta group, and current on every stream and
// consumer it holds a replica of.
func (n *Node) Ready(ctx context.Context) error {
	var last error
	for {
		last = n.healthz(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-n.Done():
			return fmt.Errorf("cluster: node %s exited; see %s", n.Name, n.LogFile)
		case <-ctx.Done():
			return fmt.Errorf("cluster: node %s not ready: %w (last: %v)", n.Name, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) healthz(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.MonitorAddr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b [256]byte
		k, _ := resp.Body.Read(b[:])
		return errors.New(strings.TrimSpace(string(b[:k])))
	}
	return nil
}

// Clients returns the names of the clients connected to the node (its
// monitoring /connz), so a test can say which services a failure of the
// node cut off.
func (n *Node) Clients(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.MonitorAddr+"/connz?limit=1024", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var z struct {
		Conns []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&z); err != nil {
		return nil, fmt.Errorf("cluster: %s /connz: %w", n.Name, err)
	}
	var names []string
	for _, c := range z.Conns {
		names = append(names, c.Name)
	}
	return names, nil
}

// freeAddr asks the kernel for a free loopback port.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
