package e2e

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkClusterEndToEnd measures end-to-end throughput on nats-server
// processes: the same SMTP load (2,000 messages over 10 sessions, as fast
// as they are accepted) on one standalone server with unreplicated streams
// (R1), and on a three-node cluster with every stream replicated three
// times (R3). It reports msg/s from the first submission to the last
// arrival at the destination, and msg/s accepted. Run it with `make bench`
// or:
//
//	go test ./e2e -run '^$' -bench ClusterEndToEnd -benchtime 1x
func BenchmarkClusterEndToEnd(b *testing.B) {
	const n = 2000
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas=%d", nodes), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c := readyNodes(b, nodes)
				w := newWorld(b, worldOpts{cluster: c})
				b.ResetTimer()
				l := &load{w: w, n: n, sessions: 10}
				l.run()
				l.wait()
				if _, err := w.dest.Wait(n, 5*time.Minute); err != nil {
					b.Fatal(err)
				}
				took := time.Since(l.start)
				b.StopTimer()
				if p := l.perm.Load(); p > 0 {
					b.Fatalf("%d transactions refused with 5xx", p)
				}
				b.ReportMetric(float64(n)/took.Seconds(), "msg/s")
				b.ReportMetric(float64(n)/l.took.Seconds(), "accepted/s")
			}
		})
	}
}

// BenchmarkClusterDeliverers50ms is BenchmarkDeliverersSlowDestination on
// the three-node R3 cluster: 1, 2 and 4 deliverers of 4 concurrent
// deliveries each, against a destination that answers each transaction
// after 50 ms, with the queue filled while the deliverers are stopped
// (runSlowDestination).
// Adding deliverers adds throughput until the cluster's CPU is what limits
// it: on two cores shared by three nodes, four deliverers of 8 (640 msg/s
// of 50 ms transactions) are past that point, so the deliverers here run 4
// each (at most 320 msg/s) and what is measured is how they scale.
func BenchmarkClusterDeliverers50ms(b *testing.B) {
	// Twice BenchmarkDeliverersSlowDestination's 600: four deliverers
	// deliver those in under three seconds, too short a window on a
	// replicated cluster's slower start.
	const n = 1200
	for _, k := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("deliverers=%d", k), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c := readyCluster(b)
				rate := runSlowDestination(b, c, k, 4, n)
				b.ReportMetric(rate, "msg/s")
			}
		})
	}
}
