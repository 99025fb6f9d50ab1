package lifecycle

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// feed gives the controller samples of used CPUs, one per procsSample, and
// returns GOMAXPROCS after each.
func feed(c *procsControl, used ...float64) []int {
	out := make([]int, len(used))
	for i, u := range used {
		out[i] = c.next(u, procsSample)
	}
	return out
}

func repeat(u float64, n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = u
	}
	return s
}

func samplesIn(d time.Duration) int { return int(d / procsSample) }

func TestProcsControlGoesBusy(t *testing.T) {
	c := newProcsControl(8)
	if c.procs != 1 {
		t.Fatalf("starts on %d Ps, want 1", c.procs)
	}
	// Below busyAt, on average, it stays on one P however long.
	if got := feed(c, repeat(0.6, 100)...); got[99] != 1 {
		t.Fatalf("at 0.6 CPU: %d Ps, want 1", got[99])
	}
	// One sample above busyAt is not enough when the window's average is
	// below it...
	if got := feed(c, 0.9); got[0] != 1 {
		t.Fatalf("one sample of 0.9 among 0.6: %d Ps, want 1", got[0])
	}
	// ...a window that averages at busyAt or more is.
	if got := feed(c, 0.8); got[0] != 8 {
		t.Fatalf("window averaging %.2f: %d Ps, want 8", (0.6+0.9+0.8)/3, got[0])
	}
	// A sample at busyNow switches at once.
	c = newProcsControl(4)
	if got := feed(c, 0.1, busyNow); got[1] != 4 {
		t.Fatalf("a saturated sample: %v, want 4", got)
	}
}

func TestProcsControlGoesQuiet(t *testing.T) {
	c := newProcsControl(2)
	feed(c, 1)
	if c.procs != 2 {
		t.Fatalf("busy: %d Ps, want 2", c.procs)
	}
	hold := samplesIn(holdMin)
	// A hold that averages above quietBelow keeps every CPU, however low
	// some of its samples.
	mixed := make([]float64, hold)
	for i := range mixed {
		mixed[i] = []float64{0.5, 1.6}[i%2]
	}
	if got := feed(c, mixed...); got[hold-1] != 2 {
		t.Fatalf("a hold averaging 1.05: %d Ps, want 2", got[hold-1])
	}
	// A hold averaging below it returns to one P, at its end and not
	// before, even with a sample above quietBelow in it.
	quiet := repeat(0.5, hold)
	quiet[hold/2] = 1.8
	got := feed(c, quiet...)
	if got[hold-2] != 2 || got[hold-1] != 1 {
		t.Fatalf("a quiet hold: ends with %v, want 2 then 1", got[hold-2:])
	}
}

// A switch to one P that is undone at once doubles the hold before the
// next try, up to holdMax; one that lasts resets it.
func TestProcsControlBacksOff(t *testing.T) {
	c := newProcsControl(2)
	feed(c, 1)
	want := holdMin
	for range 6 {
		if c.hold != want {
			t.Fatalf("hold %v, want %v", c.hold, want)
		}
		feed(c, repeat(0.9, samplesIn(c.hold))...)
		if c.procs != 1 {
			t.Fatalf("after a quiet hold of %v: %d Ps, want 1", c.hold, c.procs)
		}
		feed(c, 1) // back at once: the work needs more than one P
		if c.procs != 2 {
			t.Fatalf("busy again: %d Ps, want 2", c.procs)
		}
		want = min(2*want, holdMax)
	}
	if c.hold != holdMax {
		t.Fatalf("hold after six failed tries %v, want %v", c.hold, holdMax)
	}
	feed(c, repeat(0.5, samplesIn(c.hold))...)
	feed(c, repeat(0.5, samplesIn(probeFailsWithin)+1)...)
	feed(c, 1)
	if c.procs != 2 || c.hold != holdMin {
		t.Fatalf("after a switch that lasted: %d Ps, hold %v; want 2 and %v", c.procs, c.hold, holdMin)
	}
}

// The real thing, in a process of its own (GOMAXPROCS is process-wide):
// idle it runs on one P, busy on every CPU, idle again on one; with
// GOMAXPROCS or SLUICE_ADAPT_PROCS=off in the environment it leaves Go's
// choice alone.
func TestAdaptProcsProcess(t *testing.T) {
	if os.Getenv("SLUICE_ADAPT_CHILD") != "" {
		adaptChild()
		return
	}
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: there is nothing to adapt")
	}
	run := func(env ...string) string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestAdaptProcsProcess$", "-test.v")
		cmd.Env = append(os.Environ(), append(env, "SLUICE_ADAPT_CHILD=1")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if rest, ok := strings.CutPrefix(l, "procs: "); ok {
				return rest
			}
		}
		t.Fatalf("child printed no procs line:\n%s", out)
		return ""
	}
	n := runtime.NumCPU()
	if got, want := run(), fmt.Sprintf("idle=1 busy=%d idle=1", n); got != want {
		t.Errorf("adapting: %s, want %s", got, want)
	}
	if got, want := run("GOMAXPROCS=2"), "idle=2 busy=2 idle=2"; got != want {
		t.Errorf("GOMAXPROCS=2 set: %s, want %s", got, want)
	}
	if got, want := run("SLUICE_ADAPT_PROCS=off"), fmt.Sprintf("idle=%d busy=%d idle=%[1]d", n, n); got != want {
		t.Errorf("SLUICE_ADAPT_PROCS=off: %s, want %s", got, want)
	}
}

// adaptChild adapts, then reports GOMAXPROCS idle, while every CPU spins,
// and idle again: once a hold has passed when it adapts, at once when it
// must not.
func adaptChild() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	AdaptProcs(ctx)
	time.Sleep(3 * procsSample)
	idle := runtime.GOMAXPROCS(0)
	stop := make(chan struct{})
	for range runtime.NumCPU() {
		go func() {
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
					for i := range 10000 {
						x += i
					}
				}
			}
		}()
	}
	time.Sleep(10 * procsSample)
	busy := runtime.GOMAXPROCS(0)
	close(stop)
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && os.Getenv("SLUICE_ADAPT_PROCS") != "off" {
		time.Sleep(holdMin + 5*procsSample)
	}
	fmt.Println("procs: idle=" + strconv.Itoa(idle) + " busy=" + strconv.Itoa(busy) + " idle=" + strconv.Itoa(runtime.GOMAXPROCS(0)))
}
