package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// madvHugepage is MADV_HUGEPAGE (linux/mman-common.h), the same value on
// every architecture.
const madvHugepage = 14

var hugePagesOnce sync.Once

// headroomBytes is how much heap HugePages maps ahead: about what the
// launcher's heap (the NATS server and all four services) reaches under
// load.
const headroomBytes = 256 << 20

// HugePages asks the kernel to back the Go heap of this process with
// transparent huge pages, as madvise(MADV_HUGEPAGE) does, and keeps doing
// so for the memory the heap maps as it grows, until ctx ends. It does
// nothing when SLUICE_HUGE_PAGES is "off", when the kernel offers no
// transparent huge pages, or when they are already used for everything
// ("always") or for nothing ("never").
//
// Why: the kernel's usual setting ("madvise") gives huge pages only to
// memory that asks for them, and Go's heap does not. Every first touch of a
// 4 KiB page of heap then costs a page fault; on a virtual machine each one
// costs microseconds, and the JetStream file store and the services touch
// fresh pages in bursts (a new block's write buffer, a grown heap), holding
// locks other messages wait on. With the heap on 2 MiB pages a paced load
// takes about a twentieth of the faults and its slowest messages lose most
// of their wait (see the README's performance section).
func HugePages(ctx context.Context) {
	if os.Getenv("SLUICE_HUGE_PAGES") == "off" || thpMode() != "madvise" {
		return
	}
	hugePagesOnce.Do(func() {
		// Map heap room before the first advice, so that a fresh process
		// does not fault its first tens of MiB in 4 KiB at a time before
		// the next pass: a large allocation maps new arena memory without
		// touching it, and once collected its pages stay mapped, advised
		// and untouched (no resident memory) until the heap reuses them.
		room := make([]byte, headroomBytes)
		a := &heapAdvisor{}
		a.advise()
		runtime.KeepAlive(room)
		runtime.GC() // free the room now, before the heap grows past it
		go a.run(ctx)
	})
}

// thpMode is the selected transparent huge page mode: always, madvise,
// never, or "" when the kernel has none.
func thpMode() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	if i := bytes.IndexByte(b, '['); i >= 0 {
		if j := bytes.IndexByte(b[i:], ']'); j > 0 {
			return string(b[i+1 : i+j])
		}
	}
	return ""
}

type heapAdvisor struct {
	// done holds the heap's mappings as last advised; one that has grown,
	// merged or split since is a new key and is advised again.
	done map[[2]uintptr]bool
}

// run advises new heap mappings four times a second: memory the heap maps
// between two passes is touched 4 KiB at a time until the next one. A pass
// reads /proc/self/maps (tens of lines) and costs tens of microseconds.
func (a *heapAdvisor) run(ctx context.Context) {
	t := time.NewTicker(adviseEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.advise()
		}
	}
}

const adviseEvery = 250 * time.Millisecond

// advise finds the heap's mappings and advises those not advised before.
// The heap is the run of adjacent anonymous mappings around the one that
// holds a, a heap object (it escapes to run's goroutine; a local probe
// would live on the stack): the runtime reserves arenas one after another
// (from a random base since Go 1.26) and maps each growth step as a mapping
// of its own, which starts without the advice.
func (a *heapAdvisor) advise() {
	at := uintptr(unsafe.Pointer(a))
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	var maps []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if m, ok := parseMapsLine(sc.Bytes()); ok {
			maps = append(maps, m)
		}
	}
	done := map[[2]uintptr]bool{}
	for _, r := range heapRun(maps, at) {
		if a.done[r] {
			done[r] = true
			continue
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, r[0], r[1]-r[0], madvHugepage); e == 0 {
			done[r] = true
		}
	}
	a.done = done
}

// mapping is one line of /proc/self/maps.
type mapping struct {
	lo, hi uintptr
	perms  string
	anon   bool // no file behind it (no path, or a name given with PR_SET_VMA)
}

// heapRun returns the read-write mappings of the run of adjacent anonymous
// mappings that contains address at.
func heapRun(maps []mapping, at uintptr) [][2]uintptr {
	i := 0
	for i < len(maps) && !(maps[i].lo <= at && at < maps[i].hi) {
		i++
	}
	if i == len(maps) || !maps[i].anon {
		return nil
	}
	first, last := i, i
	for first > 0 && maps[first-1].anon && maps[first-1].hi == maps[first].lo {
		first--
	}
	for last+1 < len(maps) && maps[last+1].anon && maps[last+1].lo == maps[last].hi {
		last++
	}
	var rw [][2]uintptr
	for _, m := range maps[first : last+1] {
		if m.perms == "rw-p" {
			rw = append(rw, [2]uintptr{m.lo, m.hi})
		}
	}
	return rw
}

// parseMapsLine reads "lo-hi perms offset dev inode [path]".
func parseMapsLine(l []byte) (mapping, bool) {
	f := bytes.Fields(l)
	if len(f) < 5 {
		return mapping{}, false
	}
	dash := bytes.IndexByte(f[0], '-')
	if dash < 0 {
		return mapping{}, false
	}
	lo, err1 := strconv.ParseUint(string(f[0][:dash]), 16, 64)
	hi, err2 := strconv.ParseUint(string(f[0][dash+1:]), 16, 64)
	if err1 != nil || err2 != nil {
		return mapping{}, false
	}
	anon := len(f) == 5 || bytes.HasPrefix(f[5], []byte("[anon:"))
	return mapping{lo: uintptr(lo), hi: uintptr(hi), perms: string(f[1]), anon: anon}, true
}
