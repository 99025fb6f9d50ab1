package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestClusterSluiceLocal runs `sluice-local -cluster 3` as `make cluster`
// does, as a process of its binary with nats-server beside it, on free
// ports: it waits for the banner, sends a message to the SMTP address the
// banner gives and sees it captured; kills -9 one of the nats-server
// nodes it started and sends another, which is captured too, while
// sluice-local starts the node again; then stops sluice-local with
// SIGTERM and checks that every nats-server it started (by pid, the
// restarted node's included) is gone.
func TestClusterSluiceLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds sluice-local and nats-server and starts a three-node cluster")
	}
	if runtime.GOOS != "linux" {
		t.Skip("finds the child processes in /proc")
	}
	bin := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"sluice-local", "github.com/sluice-mta/sluice/deploy/cmd/sluice-local"},
		{"nats-server", "github.com/nats-io/nats-server/v2"},
	} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("building %s: %v\n%s", b.out, err, out)
		}
	}

	data := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "sluice-local"),
		"-cluster", "3", "-nats-server", filepath.Join(bin, "nats-server"),
		"-bin", bin, "-data", data, "-jaeger", "", "-metrics-port", "0",
		"-smtp", freeAddr(t), "-capture", freeAddr(t),
		"-nats", fmt.Sprintf("127.0.0.1:%d", freePorts(t, 3)),
		"-cluster-port", fmt.Sprint(freePorts(t, 3)),
		"-monitor-port", fmt.Sprint(freePorts(t, 3)),
		"-node-restart", "2s")
	out := &lines{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Every nats-server this sluice-local started, by pid; the cleanup
	// kills those still alive if the test fails before it checks them.
	var nodePids sync.Map
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		nodePids.Range(func(k, _ any) bool {
			if alive(k.(int)) {
				syscall.Kill(k.(int), syscall.SIGKILL)
			}
			return true
		})
		if t.Failed() {
			t.Logf("--- sluice-local output:\n%s", out.String())
		}
	})
	record := func() {
		for _, pid := range natsChildren(cmd.Process.Pid) {
			nodePids.Store(pid, true)
		}
	}

	// The banner comes once the cluster and the services are ready; a
	// loaded machine elects the cluster's leaders in seconds to a minute.
	banner := out.wait(t, 3*time.Minute, exited, regexp.MustCompile(`Ctrl-C stops everything`))
	m := regexp.MustCompile(`Send mail to\s+smtp://(\S+)`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no SMTP address in the banner:\n%s", banner)
	}
	smtpAddr := m[1]
	nodes := regexp.MustCompile(`(?m)^\s+(n\d+)\s+nats://\S+\s+pid (\d+)`).FindAllStringSubmatch(banner, -1)
	if len(nodes) != 3 {
		t.Fatalf("banner lists %d nodes, want 3:\n%s", len(nodes), banner)
	}
	record()
	for _, n := range nodes {
		pid, _ := strconv.Atoi(n[2])
		if _, ok := nodePids.Load(pid); !ok {
			t.Fatalf("node %s pid %d is not a nats-server child of sluice-local (pid %d)", n[1], pid, cmd.Process.Pid)
		}
	}

	capture := filepath.Join(data, "capture")
	sendRetrying(t, smtpAddr, "you@example.test", "Subject: first\r\nMessage-ID: <first@example.com>\r\n\r\nbefore the kill\r\n")
	waitCaptured(t, capture, 1, time.Minute)

	victim, _ := strconv.Atoi(nodes[0][2])
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	t.Logf("killed node %s (pid %d)", nodes[0][1], victim)
	sendRetrying(t, smtpAddr, "you@example.test", "Subject: second\r\nMessage-ID: <second@example.com>\r\n\r\nafter the kill\r\n")
	t.Logf("second message accepted %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))
	waitCaptured(t, capture, 2, time.Minute)
	t.Logf("second message captured %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))

	// sluice-local starts the killed node again (-node-restart 2s).
	restarted := out.wait(t, time.Minute, exited, regexp.MustCompile(`NATS node started.*node=`+nodes[0][1]+` pid=\d+`))
	pid := regexp.MustCompile(`NATS node started.*node=` + nodes[0][1] + ` pid=(\d+)`).FindStringSubmatch(restarted)
	again, _ := strconv.Atoi(pid[1])
	record()
	if _, ok := nodePids.Load(again); !ok || again == victim {
		t.Fatalf("restarted node pid %d is not a new nats-server child of sluice-local", again)
	}
	t.Logf("sluice-local started %s again as pid %d", nodes[0][1], again)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("sluice-local exited with %v after SIGTERM", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("sluice-local still runs a minute after SIGTERM")
	}
	var survivors []int
	nodePids.Range(func(k, _ any) bool {
		if alive(k.(int)) {
			survivors = append(survivors, k.(int))
		}
		return true
	})
	if len(survivors) > 0 {
		t.Fatalf("nats-server processes of sluice-local survived it: pids %v", survivors)
	}
	if n := len(captured(capture)); n != 2 {
		t.Errorf("%d messages captured, want 2", n)
	}
}

// lines collects a process's output and lets a test wait for a line.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait waits until the output has a line matching re and returns the
// output up to that line; it fails if the process exits first.
func (l *lines) wait(t *testing.T, d time.Duration, exited chan error, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := l.String()
		sc := bufio.NewScanner(strings.NewReader(s))
		n := 0
		for sc.Scan() {
			n += len(sc.Bytes()) + 1
			if re.Match(sc.Bytes()) {
				return s[:min(n, len(s))]
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("sluice-local exited (%v) before printing %q", err, re)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sluice-local did not print %q in %s", re, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sendRetrying submits a message, again after a failure for up to a
// minute, as a client does: while a node is down the services may answer
// 4xx until the streams it led have new leaders.
func sendRetrying(t *testing.T, addr, to, msg string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := trySend(addr, to, msg)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("message to %s not accepted in a minute: %v", to, err)
		}
		t.Logf("sending again after: %v", err)
		time.Sleep(500 * time.Millisecond)
	}
}

// trySend submits one message over SMTP without TLS.
func trySend(addr, to, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		return err
	}
	if err := c.Mail("me@example.com", nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	// Accepted: a failed QUIT must not send it again.
	c.Quit()
	return nil
}

// captured lists the .eml files of the capture destination.
func captured(dir string) []string {
	eml, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	return eml
}

// waitCaptured waits until dir holds n captured messages.
func waitCaptured(t *testing.T, dir string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for len(captured(dir)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages captured after %s, want %d", len(captured(dir)), d, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// natsChildren returns the pids of the nats-server processes whose parent
// is pid, from /proc.
func natsChildren(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var kids []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 2 || s[open+1:end] != "nats-server" || fields[1] != strconv.Itoa(pid) {
			continue
		}
		if kid, err := strconv.Atoi(strings.TrimSpace(s[:open])); err == nil {
			kids = append(kids, kid)
		}
	}
	return kids
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist) && syscall.Kill(pid, 0) == nil
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	fields := strings.Fields(s[end+1:])
	return len(fields) == 0 || fields[0] != "Z"
}
