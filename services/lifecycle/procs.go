package lifecycle

import (
	"context"
	"os"
	"runtime"
	"sync"
	"time"
)

// AdaptProcs runs the process on one P (GOMAXPROCS=1) while it uses less
// than a CPU, and on all the CPUs it may use (GOMAXPROCS as Go set it at
// start, which honours a container's CPU limit) as soon as it needs more,
// until ctx ends. It does nothing when the GOMAXPROCS variable is set (the
// operator chose), when SLUICE_ADAPT_PROCS is "off", or when the process
// has only one CPU anyway.
//
// Why: a Go process with several Ps that readies a goroutine while the other
// Ps are idle wakes a thread to look for work; below saturation that thread
// finds none and sleeps again, at every message and in every service. At a
// steady 400 msg/s that search doubled the CPU a message costs (see the
// README's performance section); with one P there is no idle P to wake. At
// saturation the process needs every CPU, and gets them within one sample.
func AdaptProcs(ctx context.Context) {
	if _, set := os.LookupEnv("GOMAXPROCS"); set || os.Getenv("SLUICE_ADAPT_PROCS") == "off" {
		return
	}
	adaptOnce.Do(func() {
		most := runtime.GOMAXPROCS(0)
		if most <= 1 {
			return
		}
		c := newProcsControl(most)
		runtime.GOMAXPROCS(c.procs)
		go c.run(ctx, processCPU)
	})
}

var adaptOnce sync.Once

// The controller's settings. A sample is the CPU the process used over
// procsSample, in CPUs (1.0: one CPU busy all the time).
const (
	procsSample = 100 * time.Millisecond
	// busyAt: on one P, when the last busyWindow of samples averages at or
	// above it (or one sample reaches busyNow), the process switches to all
	// CPUs. One P three quarters busy has little headroom for a burst.
	busyAt     = 0.75
	busyNow    = 0.95
	busyWindow = 3
	// quietBelow: on all CPUs, when a whole hold averages below it, the
	// process switches back to one P. It is above busyAt because the same
	// work costs more CPU on several Ps (the search above): at a steady 400
	// msg/s the whole system in one process used about 0.8 CPU on two Ps
	// and 0.65 on one. A switch it got wrong is undone within a few samples,
	// and doubles the hold before the next try.
	quietBelow = 1.0
	holdMin    = 5 * time.Second
	holdMax    = 80 * time.Second
	// probeFailsWithin: back to all CPUs this soon after a switch to one P
	// means the switch was wrong.
	probeFailsWithin = 2 * time.Second
)

// procsControl decides GOMAXPROCS from samples of the CPU the process
// uses: one P, or most.
type procsControl struct {
	most  int
	procs int
	hold  time.Duration
	// On one P: the last samples (a ring of busyWindow) and how long the
	// process has been on one P. On all CPUs: how long, and how much CPU
	// (CPUs × time), the current hold has seen.
	recent      [busyWindow]float64
	n           int
	probing     bool
	sinceSwitch time.Duration
	held        time.Duration
	heldCPU     float64
}

func newProcsControl(most int) *procsControl {
	return &procsControl{most: most, procs: 1, hold: holdMin}
}

// next takes a sample (CPUs used over the interval d) and returns
// GOMAXPROCS for the next interval.
func (c *procsControl) next(used float64, d time.Duration) int {
	if c.procs == 1 {
		c.sinceSwitch += d
		c.recent[c.n%busyWindow] = used
		c.n++
		sum := 0.0
		for _, u := range c.recent {
			sum += u
		}
		if used >= busyNow || (c.n >= busyWindow && sum/busyWindow >= busyAt) {
			switch {
			case !c.probing:
			case c.sinceSwitch <= probeFailsWithin:
				c.hold = min(2*c.hold, holdMax)
			default:
				c.hold = holdMin
			}
			c.procs, c.held, c.heldCPU, c.probing = c.most, 0, 0, false
		}
		return c.procs
	}
	c.held += d
	c.heldCPU += used * d.Seconds()
	if c.held >= c.hold {
		if c.heldCPU/c.held.Seconds() < quietBelow {
			c.procs, c.probing, c.sinceSwitch, c.n, c.recent = 1, true, 0, 0, [busyWindow]float64{}
		}
		c.held, c.heldCPU = 0, 0
	}
	return c.procs
}

// run samples the process's CPU every procsSample and applies what the
// controller decides.
func (c *procsControl) run(ctx context.Context, cpu func() (time.Duration, bool)) {
	t := time.NewTicker(procsSample)
	defer t.Stop()
	last, ok := cpu()
	if !ok {
		runtime.GOMAXPROCS(c.most)
		return
	}
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			used, ok := cpu()
			if !ok {
				runtime.GOMAXPROCS(c.most)
				return
			}
			d := now.Sub(lastAt)
			if d <= 0 {
				continue
			}
			was := c.procs
			if p := c.next(float64(used-last)/float64(d), d); p != was {
				runtime.GOMAXPROCS(p)
			}
			last, lastAt = used, now
		}
	}
}
