package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// TestSendDay: counts of 2026-03-01 for two domains, one of which
// publishes a TLS-RPT record; the first reporter enqueues exactly one
// report on SLUICE_MSGS, to the record's rua addresses, whose gunzipped
// JSON has the day's counts and failure types; a second reporter sends
// nothing for the same day.
func TestSendDay(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	kv, err := streams.TLSRPT(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	put := func(c wire.TLSRPTCounts) {
		b, _ := json.Marshal(c)
		if _, err := kv.Put(ctx, wire.TLSRPTCountKey("2026-03-01", c.PolicyType, c.Domain), b); err != nil {
			t.Fatal(err)
		}
	}
	put(wire.TLSRPTCounts{Domain: "example.test", PolicyType: "sts", PolicyString: []string{"version: STSv1", "mode: enforce", "mx: mx.example.test", "max_age: 86400"},
		MXHosts: []string{"mx.example.test"}, Succeeded: 16, Failed: 3, Failures: []wire.TLSRPTFailure{
			{ResultType: "certificate-expired", ReceivingMX: "mx.example.test", ReceivingIP: "127.0.0.1", Detail: "mta-sts enforce: mx.example.test certificate expired", Count: 3}}})
	put(wire.TLSRPTCounts{Domain: "example.test", PolicyType: "no-policy-found", Succeeded: 2})
	put(wire.TLSRPTCounts{Domain: "quiet.test", PolicyType: "no-policy-found", Succeeded: 5})
	// Another day is not this day's business.
	b, _ := json.Marshal(wire.TLSRPTCounts{Domain: "example.test", PolicyType: "sts", Succeeded: 99})
	if _, err := kv.Put(ctx, wire.TLSRPTCountKey("2026-03-02", "sts", "example.test"), b); err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t)
	dns.MustAdd(t, `_smtp._tls.example.test. 60 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,mailto:other@reports.test"`)

	cfg := Config{Params: Params{Organization: "Sluice Test", Contact: "postmaster@sender.test", Submitter: "sender.test"},
		Hostname: "mta.sender.test", DNSServer: dns.Addr}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Date(2026, 3, 2, 0, 5, 0, 0, time.UTC)
	sent, err := NewReporter(cfg, kv, js, log).SendDay(ctx, "2026-03-01", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 || sent[0].Domain != "example.test" || strings.Join(sent[0].To, ",") != "tlsrpt@reports.test,other@reports.test" {
		t.Fatalf("sent %+v, want one report for example.test to its two rua addresses", sent)
	}
	again, err := NewReporter(cfg, kv, js, log).SendDay(ctx, "2026-03-01", now)
	if err != nil || len(again) != 0 {
		t.Fatalf("second reporter sent %+v (%v), want nothing", again, err)
	}

	str, err := js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages on %s, want 1", info.State.Msgs, wire.StreamMessages)
	}
	raw, err := str.GetLastMsgForSubject(ctx, wire.MessageSubject(sent[0].QueueID))
	if err != nil {
		t.Fatal(err)
	}
	var m sluicev1.Message
	if err := proto.Unmarshal(raw.Data, &m); err != nil {
		t.Fatal(err)
	}
	if m.MailFrom != "" || len(m.Recipients) != 2 || m.Recipients[0].Address != "tlsrpt@reports.test" {
		t.Fatalf("envelope from %q to %v", m.MailFrom, m.Recipients)
	}
	rep := readReport(t, m.Body)
	if rep.OrganizationName != "Sluice Test" || rep.ContactInfo != "postmaster@sender.test" ||
		rep.DateRange.Start != "2026-03-01T00:00:00Z" || rep.DateRange.End != "2026-03-01T23:59:59Z" ||
		rep.ReportID != "2026-03-01_example.test@sender.test" || len(rep.Policies) != 2 {
		t.Fatalf("report %+v", rep)
	}
	nf, sts := rep.Policies[0], rep.Policies[1]
	if nf.Policy.Type != "no-policy-found" || nf.Policy.Domain != "example.test" || nf.Summary != (Summary{2, 0}) {
		t.Errorf("no-policy-found entry %+v", nf)
	}
	want := FailureDetail{ResultType: "certificate-expired", ReceivingMX: "mx.example.test", ReceivingIP: "127.0.0.1", FailedSessions: 3,
		AdditionalInfo: "mta-sts enforce: mx.example.test certificate expired"}
	if sts.Policy.Type != "sts" || sts.Summary != (Summary{16, 3}) || len(sts.FailureDetails) != 1 || sts.FailureDetails[0] != want ||
		strings.Join(sts.Policy.MXHost, ",") != "mx.example.test" || len(sts.Policy.String) != 4 {
		t.Errorf("sts entry %+v", sts)
	}
}

// readReport checks the mail's form (RFC 8460 §5.3) and returns its
// report.
func readReport(t *testing.T, body []byte) Report {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get("TLS-Report-Domain") != "example.test" || msg.Header.Get("TLS-Report-Submitter") != "sender.test" ||
		msg.Header.Get("Subject") != "Report Domain: example.test Submitter: sender.test Report-ID: <2026-03-01_example.test@sender.test>" {
		t.Fatalf("headers %v", msg.Header)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("content type %q %v (%v)", mt, params, err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	if _, err := mr.NextPart(); err != nil { // the text
		t.Fatal(err)
	}
	p, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if ct := p.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/tlsrpt+gzip") {
		t.Fatalf("report part is %s", ct)
	}
	// 1772323200 and 1772409599 are the day's first and last seconds.
	if fn := p.FileName(); !strings.HasPrefix(fn, "sender.test!example.test!1772323200!1772409599!") || !strings.HasSuffix(fn, ".json.gz") {
		t.Fatalf("file name %q", fn)
	}
	// multipart decodes the base64 transfer encoding only for
	// quoted-printable; decode it here.
	b64, _ := io.ReadAll(p)
	gz, err := io.ReadAll(newBase64(b64))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func newBase64(b []byte) io.Reader {
	return base64.NewDecoder(base64.StdEncoding, bytes.NewReader(bytes.ReplaceAll(b, []byte("\r\n"), nil)))
}
