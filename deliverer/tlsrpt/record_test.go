package tlsrpt

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	kv, err := streams.TLSRPT(context.Background(), js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func stored(t *testing.T, kv jetstream.KeyValue, key string) wire.TLSRPTCounts {
	t.Helper()
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	var c wire.TLSRPTCounts
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

var day = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func session(ok bool) Session {
	s := Session{Domain: "example.test", PolicyType: PolicySTS, PolicyString: []string{"version: STSv1"}, MXHosts: []string{"mx.example.test"},
		MXHost: "mx.example.test", IP: "192.0.2.1"}
	if !ok {
		s.Result, s.Detail = "certificate-expired", "mta-sts enforce: mx.example.test certificate expired"
	}
	return s
}

// TestRecordersMeetInTheBucket: three deliverers count at once, in memory,
// and flush at once: the bucket holds the sum, exactly.
func TestRecordersMeetInTheBucket(t *testing.T) {
	kv := bucket(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 3 {
		r := NewRecorder(func() time.Time { return day })
		r.UseStore(kv)
		wg.Go(func() {
			for i := range 200 {
				r.Record(session(i%4 != 0))
			}
			if err := r.Flush(ctx); err != nil {
				t.Error(err)
			}
			// A second flush with nothing new writes nothing.
			if err := r.Flush(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	c := stored(t, kv, wire.TLSRPTCountKey("2026-03-01", PolicySTS, "example.test"))
	if c.Succeeded != 450 || c.Failed != 150 || len(c.Failures) != 1 || c.Failures[0].Count != 150 ||
		c.Failures[0].ResultType != "certificate-expired" || c.Domain != "example.test" || len(c.PolicyString) != 1 {
		t.Fatalf("counts %+v, want 450 successes and 150 certificate-expired failures", c)
	}
}

// TestFailedFlushKeepsCounts: counts a flush could not write are written
// by the next one, once, with what was counted meanwhile; Run's last flush
// at shutdown writes what is left.
func TestFailedFlushKeepsCounts(t *testing.T) {
	kv := bucket(t)
	r := NewRecorder(func() time.Time { return day })
	r.UseStore(kv)
	key := wire.TLSRPTCountKey("2026-03-01", PolicySTS, "example.test")
	for range 5 {
		r.Record(session(true))
	}
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Flush(dead); err == nil {
		t.Fatal("a flush with an ended context succeeded")
	}
	if _, err := kv.Get(context.Background(), key); err == nil {
		t.Fatal("the failed flush wrote counts")
	}
	r.Record(session(false))
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := stored(t, kv, key); c.Succeeded != 5 || c.Failed != 1 {
		t.Fatalf("after the retry: %+v, want 5 successes and 1 failure", c)
	}
	// Run: counts recorded before it stops are written by its last flush.
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, time.Hour, slog.New(slog.DiscardHandler)); close(done) }()
	r.Record(session(true))
	stop()
	<-done
	if c := stored(t, kv, key); c.Succeeded != 6 || c.Failed != 1 {
		t.Fatalf("after Run stopped: %+v, want 6 successes and 1 failure", c)
	}
}
