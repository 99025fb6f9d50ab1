// Package freeport hands out loopback addresses to listen on, for tests and
// for the processes `sluice-local -processes` starts on one machine: below
// the kernel's ephemeral port range, and never the same one to two
// processes at once (test binaries of several packages run side by side).
package freeport

import (
	"fmt"
	"net"
	"os"
	"sync"
)

var (
	portMu   sync.Mutex
	nextPort = 20000 + (os.Getpid()%500)*20
)

// Addr returns a loopback address whose port was free a moment ago. Ports
// come from below Linux's ephemeral range (32768+), so the port cannot be
// taken meanwhile by an outgoing connection of another test; each call in a
// process returns a new port, and no other process that uses Addr gets
// it while this one runs (reservePort): test binaries of several packages
// run at once and would otherwise pick the same free port and race to bind
// it.
func Addr() (string, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for i := 0; i < 2000; i++ {
		p := nextPort
		nextPort++
		if nextPort >= 32000 {
			nextPort = 20000
		}
		if !reservePort(p) {
			continue // another test process has it
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr, nil
	}
	return "", fmt.Errorf("no free loopback port found in 20000-32000")
}
