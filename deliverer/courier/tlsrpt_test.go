package courier

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlsrpt"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// TestTLSReportCounts: two deliverers (couriers with their own recorders)
// deliver at once to example.test under its enforced MTA-STS policy, to
// an MX host with a valid certificate and then to one with an expired
// certificate; the shared counts of the day have every session, the
// failures with their RFC 8460 result type, host and address.
func TestTLSReportCounts(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	kv, err := streams.TLSRPT(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 3, 1, 23, 59, 0, 0, time.UTC)
	const perDeliverer = 8
	run := func(certExpired bool) {
		w := newTLSWorld(t)
		w.publishSTS(t, "v1", "enforce", "mx.example.test")
		cert := w.ca.Valid(t, "mx.example.test")
		if certExpired {
			cert = w.ca.Expired(t, "mx.example.test")
		}
		srv := w.server(t, &cert)
		var wg sync.WaitGroup
		for range 2 {
			rec := tlsrpt.NewRecorder(func() time.Time { return day })
			rec.UseStore(kv)
			defer func() {
				if err := rec.Flush(ctx); err != nil {
					t.Error(err)
				}
			}()
			c := w.courier(t, srv, policy(tlspolicy.ModeMTASTS), tracetest.NewSpanRecorder())
			WithTLSReports(rec)(c)
			wg.Go(func() {
				for range perDeliverer {
					r := c.Deliver(ctx, tlsJob(), strings.NewReader(message))[0]
					if (r.Outcome == sluicev1.Outcome_OUTCOME_DELIVERED) == certExpired {
						t.Errorf("expired certificate %v: outcome %v %q", certExpired, r.Outcome, r.Text)
					}
				}
			})
		}
		wg.Wait()
	}
	// Two deliverers each run: their counts meet in the bucket when they
	// flush.
	run(false)
	run(true)

	e, err := kv.Get(ctx, wire.TLSRPTCountKey("2026-03-01", "sts", "example.test"))
	if err != nil {
		t.Fatal(err)
	}
	var c wire.TLSRPTCounts
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		t.Fatal(err)
	}
	if c.Domain != "example.test" || c.PolicyType != "sts" || c.Succeeded != 2*perDeliverer || c.Failed != 2*perDeliverer {
		t.Fatalf("counts %+v, want %d successes and %d failures for sts example.test", c, 2*perDeliverer, 2*perDeliverer)
	}
	want := wire.TLSRPTFailure{ResultType: "certificate-expired", ReceivingMX: "mx.example.test", ReceivingIP: "127.0.0.1",
		Detail: "mta-sts enforce: mx.example.test certificate expired", Count: 2 * perDeliverer}
	if len(c.Failures) != 1 || c.Failures[0] != want {
		t.Fatalf("failures %+v, want [%+v]", c.Failures, want)
	}
	if strings.Join(c.PolicyString, "|") != "version: STSv1|mode: enforce|mx: mx.example.test|max_age: 86400" ||
		strings.Join(c.MXHosts, ",") != "mx.example.test" {
		t.Errorf("policy string %q, mx hosts %q", c.PolicyString, c.MXHosts)
	}
}
