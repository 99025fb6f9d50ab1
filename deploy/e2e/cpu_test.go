package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
)

// cpuUse is the CPU time of the processes of a benchmark (the services of
// a stack and the nodes of a cluster) at one moment, to report where the
// time of a run went.
type cpuUse struct {
	pids  map[string]int
	start map[string]time.Duration
}

func cpuSnapshot(st *stack.Stack, c *cluster.Cluster) *cpuUse {
	u := &cpuUse{pids: map[string]int{}, start: map[string]time.Duration{}}
	for _, p := range st.Procs() {
		if pid := p.Pid(); pid > 0 {
			u.pids[p.Name] = pid
		}
	}
	if c != nil {
		for _, n := range c.Nodes {
			if pid := n.Pid(); pid > 0 {
				u.pids[n.Name] = pid
			}
		}
	}
	for name, pid := range u.pids {
		u.start[name] = procCPU(pid)
	}
	return u
}

// report logs each process's CPU time since the snapshot and reports the
// total per message (the machine's whole work for one delivery).
func (u *cpuUse) report(b *testing.B, n int) {
	type row struct {
		name string
		d    time.Duration
	}
	var rows []row
	var total time.Duration
	for name, pid := range u.pids {
		d := procCPU(pid) - u.start[name]
		rows = append(rows, row{name, d})
		total += d
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].d > rows[j].d })
	var sb strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&sb, " %s %.2fs (%.0f%%)", r.name, r.d.Seconds(), 100*r.d.Seconds()/max(total.Seconds(), 1e-9))
	}
	b.Logf("CPU time by process:%s", sb.String())
	b.ReportMetric(float64(total.Microseconds())/float64(n), "cpu-µs/msg")
}

// procCPU is the user and system CPU time of a process (0 when it is
// gone), from /proc/<pid>/stat at the usual 100 ticks per second.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * (time.Second / 100)
}
