package worker

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestSiteMetrics: the connections a deliverer holds are reported for its
// ten busiest sites by name and the rest as "other", and suspended sites
// are counted.
func TestSiteMetrics(t *testing.T) {
	e := newEnv(t)
	routes := map[string]string{}
	for i := range 12 {
		c, _ := listenCapture(t, capture.Options{})
		routes["m"+strconv.Itoa(i)+".test"] = c.Addr
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	s := testSettings(e)
	s.Routes = routes
	s.ConnectionCacheTime = time.Minute // idle sessions keep their slots
	_, js := e.ns.Connect(t)
	svc, err := New(s, Deps{JS: js, Tracer: e.tp.Tracer("test"), Meter: mp.Meter("test"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	startService(t, svc)
	var jobs []*sluicev1.Job
	for d := range routes {
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: d, rcpts: []string{"x@" + d}}))
	}
	for _, r := range e.resultsOf(t, jobs, 20*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	site := svc.shaper.Rules().Site("m0.test", routes["m0.test"])
	if err := svc.shaper.Suspend(context.Background(), site, time.Now().Add(time.Minute), "test"); err != nil {
		t.Fatal(err)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	conns := map[string]int64{}
	suspended := int64(-1)
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "sluice_deliverer_site_connections":
				for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
					v, _ := dp.Attributes.Value(attribute.Key("site"))
					conns[v.AsString()] = dp.Value
				}
			case "sluice_deliverer_sites_suspended":
				suspended = m.Data.(metricdata.Gauge[int64]).DataPoints[0].Value
			}
		}
	}
	named := 0
	for site, n := range conns {
		if site != "other" {
			named++
			if n != 1 {
				t.Errorf("site %s: %d connections, want 1", site, n)
			}
		}
	}
	if named != 10 || conns["other"] != 2 || suspended != 1 {
		t.Errorf("%d sites named, other %d, suspended %d; want 10, 2 and 1: %v", named, conns["other"], suspended, conns)
	}
}
