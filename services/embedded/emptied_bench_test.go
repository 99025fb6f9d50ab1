package embedded

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkEmptiedLastBlock is the minimal reproduction of the file store
// cost README, Performance calls "an emptied last block": when a removal
// (an acknowledgement in a work queue, a deletion) takes the last message
// out of the stream's last block, nats-server 2.15.2 replaces that block
// (filestore removeMsgBlock: a new block file, a tombstone written to it,
// the old file removed), so a queue that keeps up with its producer, and is
// therefore empty after each removal, pays a file creation per message.
// "empties" publishes a message and removes it; "keeps_one" removes the
// message before it instead, so the stream always holds its newest
// message and the last block is never emptied. Both make the same
// requests; the difference is the block replacement. Nothing of Sluice is
// involved: one work-queue stream, 4 KB messages, synchronous requests.
func BenchmarkEmptiedLastBlock(b *testing.B) {
	body := make([]byte, 4096)
	for _, keep := range []bool{false, true} {
		name := "empties"
		if keep {
			name = "keeps_one"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			js := benchJetStream(b, Options{Listen: "127.0.0.1:0", StoreDir: dir})
			ctx := context.Background()
			st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EMPTIED", Subjects: []string{"emptied.>"},
				Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage})
			if err != nil {
				b.Fatal(err)
			}
			var prev uint64
			cpu0 := processCPU()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				ack, err := js.Publish(ctx, "emptied.x", body)
				if err != nil {
					b.Fatal(err)
				}
				victim := ack.Sequence
				if keep {
					victim, prev = prev, ack.Sequence
				}
				if victim == 0 {
					continue
				}
				if err := st.DeleteMsg(ctx, victim); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			cpu := processCPU() - cpu0
			info, err := st.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			want := uint64(0)
			if keep {
				want = 1
			}
			if info.State.Msgs != want {
				b.Fatalf("stream holds %d messages, want %d", info.State.Msgs, want)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
			b.ReportMetric(float64(lastBlock(b, dir))/float64(b.N), "blocks/msg")
		})
	}
}

// processCPU is the user and system CPU this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lastBlock is the highest block number under dir: the file store numbers
// block files as it creates them, so it counts the blocks created.
func lastBlock(b *testing.B, dir string) int {
	last := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".blk") {
			if n, err := strconv.Atoi(strings.TrimSuffix(d.Name(), ".blk")); err == nil {
				last = max(last, n)
			}
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return last
}
