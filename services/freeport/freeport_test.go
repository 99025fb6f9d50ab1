package freeport

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestAddrAcrossProcesses: a second process that walks the same ports
// (as test binaries of two packages can) gets none of those this one handed
// out, though none of them is bound.
func TestAddrAcrossProcesses(t *testing.T) {
	if start := os.Getenv("SLUICE_FREEPORT_CHILD"); start != "" {
		portMu.Lock()
		fmt.Sscan(start, &nextPort)
		portMu.Unlock()
		for range 20 {
			a, err := Addr()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println("PORT", a)
		}
		return
	}
	portMu.Lock()
	start := nextPort
	portMu.Unlock()
	mine := map[string]bool{}
	for range 20 {
		a, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		mine[a] = true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAddrAcrossProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("SLUICE_FREEPORT_CHILD=%d", start))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		a, ok := strings.CutPrefix(line, "PORT ")
		if !ok {
			continue
		}
		n++
		if mine[a] {
			t.Errorf("the other process got %s too", a)
		}
	}
	if n != 20 {
		t.Fatalf("child handed out %d ports, want 20:\n%s", n, out)
	}
}
