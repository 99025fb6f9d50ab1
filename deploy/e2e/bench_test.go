package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkDeliverersSlowDestination measures how delivery throughput grows
// with deliverer processes when the destination answers each transaction
// after 50 ms (so deliveries wait on the network, not on CPU). Run it with
// `make bench` or:
//
//	go test ./e2e -run '^$' -bench DeliverersSlow -benchtime 1x
//
// It reports msg/s for 1, 2 and 4 deliverers of 8 concurrent deliveries each.
func BenchmarkDeliverersSlowDestination(b *testing.B) {
	const n = 600
	for _, k := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("deliverers=%d", k), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				rate := runSlowDestination(b, k, n)
				b.ReportMetric(rate, "msg/s")
			}
		})
	}
}

func runSlowDestination(b *testing.B, deliverers, n int) float64 {
	b.Helper()
	w := newWorld(b, worldOpts{destDelay: 50 * time.Millisecond, deliverers: deliverers,
		config: map[string]map[string]any{"deliverer": {"concurrency": 8}}})
	b.ResetTimer()
	start := time.Now()
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
	if _, err := w.dest.Wait(n, 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	return float64(n) / elapsed.Seconds()
}
