package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/bouncer/service"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// TestTLSReportsRun: with bouncer.tls_reports enabled, two bouncers
// running side by side send yesterday's report for the one domain that
// publishes a TLS-RPT record exactly once, from the configured
// submitter, and keep sending nothing more on later rounds; a domain
// without a record gets none.
func TestTLSReportsRun(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	cfg := service.Default()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Bouncer.Hostname = "mta.sender.test"
	cfg.Bouncer.MetricsListen = "127.0.0.1:0"
	if err := streams.Provision(ctx, js, cfg.Queue); err != nil {
		t.Fatal(err)
	}
	kv, err := streams.TLSRPT(ctx, js, cfg.Queue)
	if err != nil {
		t.Fatal(err)
	}
	yesterday := wire.TLSRPTDay(time.Now().Add(-24 * time.Hour))
	for _, c := range []wire.TLSRPTCounts{
		{Domain: "example.test", PolicyType: "no-policy-found", Succeeded: 7, Failed: 1,
			Failures: []wire.TLSRPTFailure{{ResultType: "starttls-not-supported", ReceivingMX: "mx.example.test", Count: 1}}},
		{Domain: "silent.test", PolicyType: "no-policy-found", Succeeded: 3},
	} {
		b, _ := json.Marshal(c)
		if _, err := kv.Put(ctx, wire.TLSRPTCountKey(yesterday, c.PolicyType, c.Domain), b); err != nil {
			t.Fatal(err)
		}
	}
	dns := dnstest.Start(t)
	dns.MustAdd(t, `_smtp._tls.example.test. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls@reports.test"`)
	cfg.Bouncer.TLSReports = service.TLSReports{Enabled: true, Organization: "Sender Org", Contact: "postmaster@sender.test",
		DNSServer: dns.Addr, Interval: time.Second}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			done <- Run(runCtx, cfg, lifecycle.Host{OTel: telemetry.Env{Exporter: "none"}, LogOutput: &bytes.Buffer{}})
		}()
	}
	str, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := str.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no TLS report on SLUICE_MSGS within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // two more rounds of each bouncer
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("bouncer: %v", err)
		}
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages on %s, want the one report", info.State.Msgs, wire.StreamMessages)
	}
	raw, err := str.GetLastMsgForSubject(ctx, wire.SubjectMessages+".>")
	if err != nil {
		t.Fatal(err)
	}
	var m sluicev1.Message
	if err := proto.Unmarshal(raw.Data, &m); err != nil {
		t.Fatal(err)
	}
	body := string(m.Body)
	if len(m.Recipients) != 1 || m.Recipients[0].Address != "tls@reports.test" || m.MailFrom != "" ||
		!strings.Contains(body, "TLS-Report-Domain: example.test") ||
		!strings.Contains(body, "TLS-Report-Submitter: sender.test") ||
		!strings.Contains(body, "From: tls-reports@sender.test") {
		t.Fatalf("report to %v from %q:\n%.600s", m.Recipients, m.MailFrom, body)
	}
	if _, err := kv.Get(ctx, wire.TLSRPTSentKey(yesterday, "example.test")); err != nil {
		t.Errorf("the report is not recorded as sent: %v", err)
	}
}
