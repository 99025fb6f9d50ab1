package worker

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestStillRunningJobIsNotAttemptedTwice: two deliverers whose in-progress
// acks are lost (none is sent) and a destination that takes 5 s to answer
// DATA, with an AckWait of 1 s: the job is handed out again several times
// while its delivery runs, and each time the deliverer that gets it asks
// the one running it, which says so, and parks it. The destination gets
// the message once.
func TestStillRunningJobIsNotAttemptedTwice(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{Delay: 5 * time.Second})
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	for _, name := range []string{"a", "b"} {
		svc := e.serviceWith(t, func(s *Settings) {
			s.Instance = name
			s.AckWait = time.Second
			s.Routes = map[string]string{"slow.test": c.Addr}
		}, func(d *Deps) { d.Meter = mp.Meter(name) })
		svc.noProgress.Store(true)
	}
	job := e.enqueue(t, jobSpec{domain: "slow.test", rcpts: []string{"x@slow.test"}})
	check(t, e.result(t, job, 30*time.Second).Recipients[0], delivered)
	// Handed out again after the result, the job would be acknowledged
	// ("finished"), never sent: wait past one more AckWait to be sure.
	time.Sleep(3 * time.Second)
	if n := len(c.Messages()); n != 1 {
		t.Fatalf("the destination got %d copies, want 1", n)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var parked int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "sluice_deliverer_jobs_steered_total" {
				for _, dp := range sum.DataPoints {
					if v, _ := dp.Attributes.Value("action"); v.AsString() == "still_running" {
						parked += dp.Value
					}
				}
			}
		}
	}
	if parked < 2 {
		t.Errorf("the running job was parked %d times, want at least 2 (handed out again every second for 5 s)", parked)
	}
}

// TestDeadDelivererJobIsTakenOver: a deliverer takes a job and goes silent
// in the middle of it (its NATS connection is gone, as when it is killed);
// the job is handed out again after AckWait, the other deliverer's question
// goes unanswered, and it delivers the job.
func TestDeadDelivererJobIsTakenOver(t *testing.T) {
	e := newEnv(t)
	c, _ := listenCapture(t, capture.Options{})
	routes := map[string]string{"dest.test": c.Addr}
	taken, release := make(chan struct{}), make(chan struct{})
	a := e.service(t, func(s *Settings) { s.Instance = "a"; s.AckWait = time.Second; s.Routes = routes })
	a.beforeAttempt = func(*sluicev1.Job) {
		close(taken)
		<-release
	}
	t.Cleanup(func() { close(release) })
	job := e.enqueue(t, jobSpec{domain: "dest.test", rcpts: []string{"y@dest.test"}})
	select {
	case <-taken:
	case <-time.After(10 * time.Second):
		t.Fatal("deliverer a did not take the job")
	}
	a.js.Conn().Close()
	e.service(t, func(s *Settings) { s.Instance = "b"; s.AckWait = time.Second; s.Routes = routes })
	r := e.result(t, job, 20*time.Second)
	check(t, r.Recipients[0], delivered)
	if r.Deliverer != "b" {
		t.Errorf("delivered by %q, want b", r.Deliverer)
	}
	if n := len(c.Messages()); n != 1 {
		t.Errorf("the destination got %d copies, want 1", n)
	}
}

// TestFinishedUnconfirmedIsReported: a deliverer that stored a job's
// result but could not confirm its ack says "finished" when asked, so the
// deliverer that gets the job again acknowledges it instead of sending it.
func TestFinishedUnconfirmedIsReported(t *testing.T) {
	e := newEnv(t)
	a := e.service(t, func(s *Settings) { s.Instance = "a" })
	b := e.service(t, func(s *Settings) { s.Instance = "b" })
	a.live.start("j1/1")
	a.live.start("j2/1")
	a.live.end("j2/1", true)
	ctx := context.Background()
	for key, want := range map[string]string{"j1/1": liveRunning, "j2/1": liveFinished, "j3/1": liveUnknown} {
		if got := b.askLive(ctx, "a", key); got != want {
			t.Errorf("b asks a about %s: %q, want %q", key, got, want)
		}
	}
	if got := b.askLive(ctx, "gone", "j1/1"); got != liveUnknown {
		t.Errorf("asking a deliverer that is not there: %q, want %q", got, liveUnknown)
	}
}
