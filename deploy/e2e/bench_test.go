package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
)

// BenchmarkDeliverersSlowDestination measures how delivery throughput grows
// with deliverer processes when the destination answers each transaction
// after 50 ms (so deliveries wait on the network, not on CPU). Run it with
// `make bench` or:
//
//	go test ./e2e -run '^$' -bench DeliverersSlow -benchtime 1x
//
// The queue is filled with the deliverers stopped; the rate is measured
// from the first to the last arrival once they start. It reports msg/s
// for 1, 2 and 4 deliverers of 8 concurrent deliveries each.
func BenchmarkDeliverersSlowDestination(b *testing.B) {
	const n = 600
	for _, k := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("deliverers=%d", k), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				rate := runSlowDestination(b, nil, k, 8, n)
				b.ReportMetric(rate, "msg/s")
			}
		})
	}
}

// BenchmarkShaping measures what traffic shaping costs when no limit is
// reached: two deliverers send a queued backlog to one site that answers at
// once, with shaping (connection slots in the shaping bucket, slow start
// from 32 of 64: above the 16 connections the deliverers use) and with
// deliverer.shaping.disabled. The bar: within 5%.
func BenchmarkShaping(b *testing.B) {
	const n = 2000
	for _, mode := range []string{"on", "off"} {
		b.Run("shaping="+mode, func(b *testing.B) {
			shaping := map[string]any{"default": map[string]any{"max_connections": 64, "initial_connections": 32}}
			if mode == "off" {
				shaping["disabled"] = true
			}
			for i := 0; i < b.N; i++ {
				b.ReportMetric(runDelivery(b, nil, 2, 8, n, 0, shaping), "msg/s")
			}
		})
	}
}

// runSlowDestination runs the system on the embedded server, or on c when
// it is not nil, with deliverers of concurrency deliveries each, and
// returns the delivery rate.
func runSlowDestination(b *testing.B, c *cluster.Cluster, deliverers, concurrency, n int) float64 {
	b.Helper()
	// The fleet's connection limit per site (deliverer.shaping, 20 by
	// default, from 5 with slow start) is raised above what four
	// deliverers of 8 use, so what is measured is the deliverers.
	return runDelivery(b, c, deliverers, concurrency, n, 50*time.Millisecond, map[string]any{
		"default": map[string]any{"max_connections": 64, "initial_connections": 32}})
}

// runDelivery queues n messages with the deliverers stopped, starts them and
// returns the delivery rate, with the destination answering each message
// after delay and the deliverers' shaping configuration.
func runDelivery(b *testing.B, c *cluster.Cluster, deliverers, concurrency, n int, delay time.Duration, shaping map[string]any) float64 {
	b.Helper()
	w := newWorld(b, worldOpts{cluster: c, destDelay: delay, deliverers: deliverers,
		config: map[string]map[string]any{"deliverer": {"concurrency": concurrency, "shaping": shaping}}})
	// Fill the queue with the deliverers stopped, so what is timed is
	// delivery alone, not submission competing with it for the CPU.
	var procs []*stack.Proc
	for _, p := range w.st.Procs() {
		if strings.HasPrefix(p.Name, "deliverer") {
			p.Stop(10 * time.Second)
			procs = append(procs, p)
		}
	}
	var wg sync.WaitGroup
	next := make(chan int)
	go func() {
		for i := 0; i < n; i++ {
			next <- i
		}
		close(next)
	}()
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := w.send("a@sender.test", []string{fmt.Sprintf("r%d@dest.test", i)}, message(fmt.Sprintf("s%d", i), "x")); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Let the scheduler turn every message into a job.
	time.Sleep(2 * time.Second)
	b.ResetTimer()
	for _, p := range procs {
		if err := p.Start(); err != nil {
			b.Fatal(err)
		}
	}
	cpu := cpuSnapshot(w.st, c)
	ms, err := w.dest.Wait(n, 5*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b, n)
	// Throughput between the first and the last arrival, so the deliverer
	// processes' start-up is not counted.
	first, last := ms[0].Received, ms[0].Received
	for _, m := range ms {
		if m.Received.Before(first) {
			first = m.Received
		}
		if m.Received.After(last) {
			last = m.Received
		}
	}
	return float64(n-1) / last.Sub(first).Seconds()
}
