package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"unsafe"
)

func TestParseMapsLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want mapping
		ok   bool
	}{
		{"c000000000-c004000000 rw-p 00000000 00:00 0 ", mapping{0xc000000000, 0xc004000000, "rw-p", true}, true},
		{"7f4ef95ab000-7f4ef95d1000 r--p 00000000 fe:01 1234  /usr/lib/x86_64-linux-gnu/libc.so.6", mapping{0x7f4ef95ab000, 0x7f4ef95d1000, "r--p", false}, true},
		{"39996000-399b7000 rw-p 00000000 00:00 0  [heap]", mapping{0x39996000, 0x399b7000, "rw-p", false}, true},
		{"2c13e0400000-2c13e4c00000 rw-p 00000000 00:00 0  [anon: Go: heap]", mapping{0x2c13e0400000, 0x2c13e4c00000, "rw-p", true}, true},
		{"zz-10 rw-p 00000000 00:00 0", mapping{}, false},
		{"garbage", mapping{}, false},
	} {
		got, ok := parseMapsLine([]byte(c.line))
		if ok != c.ok || got != c.want {
			t.Errorf("parseMapsLine(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

// TestHeapRun: the run around the address is every adjacent anonymous
// mapping, reserved or not; only its read-write ones are returned, and a
// gap or a file ends it.
func TestHeapRun(t *testing.T) {
	maps := []mapping{
		{0x1000, 0x2000, "rw-p", true},    // anonymous, but not adjacent
		{0x10000, 0x20000, "r--p", false}, // a file right before the run
		{0x20000, 0x30000, "---p", true},  // reserved arena start
		{0x30000, 0x40000, "rw-p", true},  // mapped heap
		{0x40000, 0x50000, "rw-p", true},  // a later growth step
		{0x50000, 0x60000, "---p", true},  // reserved
		{0x60000, 0x70000, "rw-p", true},  // mapped again
		{0x80000, 0x90000, "rw-p", true},  // after a gap: not the heap
	}
	got := heapRun(maps, 0x45000)
	want := [][2]uintptr{{0x30000, 0x40000}, {0x40000, 0x50000}, {0x60000, 0x70000}}
	if len(got) != len(want) {
		t.Fatalf("heapRun = %x, want %x", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("heapRun = %x, want %x", got, want)
		}
	}
	if r := heapRun(maps, 0x15000); r != nil {
		t.Fatalf("heapRun in a file mapping = %x, want nothing", r)
	}
	if r := heapRun(maps, 0x75000); r != nil {
		t.Fatalf("heapRun in a gap = %x, want nothing", r)
	}
}

// TestHugePagesAdvisesTheHeap: where the kernel gives huge pages on request
// (mode "madvise"), the mapping holding a heap object allocated after the
// call carries the advice (VmFlags "hg" in /proc/self/smaps), and so does
// memory the heap maps later; in any other mode the call changes nothing.
func TestHugePagesAdvisesTheHeap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	HugePages(ctx)
	want := thpMode() == "madvise" && os.Getenv("SLUICE_HUGE_PAGES") != "off"
	obj := new([1024]byte)
	if got := advised(t, uintptr(unsafe.Pointer(obj))); got != want {
		t.Fatalf("heap object's mapping advised = %v; want %v (transparent huge pages: %q)", got, want, thpMode())
	}
	if !want {
		return
	}
	// Grow the heap past the room mapped ahead, then let one pass run.
	var keep [][]byte
	for range (headroomBytes >> 20) + 64 {
		keep = append(keep, make([]byte, 1<<20))
	}
	last := keep[len(keep)-1]
	passAdvisor = &heapAdvisor{} // on the heap, as HugePages's own is
	passAdvisor.advise()
	if !advised(t, uintptr(unsafe.Pointer(&last[0]))) {
		t.Fatal("memory the heap mapped later is not advised after a pass")
	}
}

// passAdvisor is package-level so that the test's advisor escapes to the
// heap: advise finds the heap from the advisor's own address.
var passAdvisor *heapAdvisor

// advised reports whether the mapping holding address at has VmFlags "hg".
func advised(t *testing.T, at uintptr) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Bytes()
		if m, ok := parseMapsLine(l); ok { // a mapping's first line; its fields are "Key: value"
			in = m.lo <= at && at < m.hi
			continue
		}
		if in && bytes.HasPrefix(l, []byte("VmFlags:")) {
			return strings.Contains(" "+string(l[len("VmFlags:"):])+" ", " hg ")
		}
	}
	t.Fatalf("no mapping holds %#x", at)
	return false
}
