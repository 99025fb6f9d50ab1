package doctor

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/natstest"
)

// fakeDeliverer serves the dns check as a deliverer does (the
// sluice-deliverer micro service, no queue group) and answers each request
// with answer, which may also not answer at all.
func fakeDeliverer(t *testing.T, nc *nats.Conn, instance string, answer func(req micro.Request, who admin.DelivererIdentity)) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{
		Name:     admin.DelivererService,
		Version:  "0.0.1",
		Metadata: map[string]string{admin.MetadataInstance: instance, admin.MetadataHostname: instance + ".test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	who := admin.DelivererIdentity{ServiceID: svc.Info().ID, Instance: instance, Hostname: instance + ".test"}
	g := svc.AddGroup(admin.DoctorPrefix, micro.WithGroupQueueGroupDisabled())
	if err := g.AddEndpoint(admin.DoctorDNS, micro.HandlerFunc(func(req micro.Request) { answer(req, who) })); err != nil {
		t.Fatal(err)
	}
	// The service's subscriptions reach the server with the next flush:
	// without it a request from another connection may find no responders.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestGather runs three deliverers that answer the dns check with a
// report, with an error, and not at all, and checks what Discover finds and
// what Ask gathers and Decode makes of it.
func TestGather(t *testing.T) {
	ns := natstest.Start(t)
	nc, _ := ns.Connect(t)
	ctx := context.Background()

	// Nobody there.
	if _, err := Discover(ctx, nc, admin.DoctorDNS, time.Second); err == nil || err.Error() != "no answer from sluice-deliverer within 1s (is any deliverer running? nats: no responders)" {
		t.Fatalf("no deliverer: %v", err)
	}

	services, _ := ns.Connect(t)
	fakeDeliverer(t, services, "d1", func(req micro.Request, who admin.DelivererIdentity) {
		var r admin.DoctorRequest
		_ = json.Unmarshal(req.Data(), &r)
		_ = req.RespondJSON(admin.DNSReport{Deliverer: who, HELO: admin.DNSName{Name: strings.Join(r.Domains, ",")},
			Verdict: admin.Verdict{Severity: admin.SeverityOK, Summary: "all right"}})
	})
	fakeDeliverer(t, services, "d2", func(req micro.Request, who admin.DelivererIdentity) {
		body, _ := json.Marshal(map[string]any{"deliverer": who})
		_ = req.Error("400", `domains: "bad!" is not a domain name`, body)
	})
	fakeDeliverer(t, services, "d3", func(micro.Request, admin.DelivererIdentity) {})

	// Deliverers that do not serve the check are not expected.
	if _, err := Discover(ctx, nc, admin.DoctorTLS, time.Second); err == nil || err.Error() != "no answer from sluice-deliverer within 1s (is any deliverer running? no reply)" {
		t.Fatalf("no deliverer serving tls: %v", err)
	}
	found, err := Discover(ctx, nc, admin.DoctorDNS, 5*time.Second)
	if err != nil || len(found) != 3 {
		t.Fatalf("discovered %+v, %v", found, err)
	}
	start := time.Now()
	answers, err := Ask(ctx, nc, admin.DoctorDNS, admin.DoctorRequest{Domains: []string{"a.test"}}, found, 1500*time.Millisecond)
	if err != nil || len(answers) != 3 || time.Since(start) < 1500*time.Millisecond {
		t.Fatalf("answers %+v, %v after %s", answers, err, time.Since(start))
	}
	for i, want := range []struct{ name, err string }{
		{"d1", ""},
		{"d2", `error 400: domains: "bad!" is not a domain name`},
		{"d3", "no answer within 1.5s"},
	} {
		a := answers[i]
		if a.Name() != want.name || a.Hostname != want.name+".test" || found[a.ID] != a.Deliverer || a.Err != want.err || (a.Raw == nil) != (want.err != "") {
			t.Errorf("answer %d: %+v, want %s %q", i, a, want.name, want.err)
		}
	}

	r := Decode(admin.DoctorDNS, answers[0])
	if rep, ok := r.Typed.(*admin.DNSReport); !ok || rep.HELO.Name != "a.test" || r.Verdict.Summary != "all right" || r.Err != "" {
		t.Errorf("d1 decoded: %+v", r)
	}
	for _, a := range answers[1:] {
		if r := Decode(admin.DoctorDNS, a); r.Typed != nil || r.Verdict != (admin.Verdict{Severity: admin.SeverityError, Summary: a.Err}) {
			t.Errorf("%s decoded: %+v", a.Name(), r)
		}
	}
}

// TestDecode reads the report of each check as its own type, with its
// findings, verdict and domain, and judges an unreadable one an error.
func TestDecode(t *testing.T) {
	finding := admin.Finding{Severity: admin.SeverityWarning, Problem: "p", Fix: "f"}
	verdict := admin.Verdict{Severity: admin.SeverityWarning, Summary: "s"}
	for _, tc := range []struct {
		check  string
		report any
		domain string
	}{
		{admin.DoctorDNS, &admin.DNSReport{Findings: []admin.Finding{finding}, Verdict: verdict}, ""},
		{admin.DoctorDNSBL, &admin.DNSBLReport{Findings: []admin.Finding{finding}, Verdict: verdict}, ""},
		{admin.DoctorConnect, &admin.ConnectReport{Domain: "c.test", Findings: []admin.Finding{finding}, Verdict: verdict}, "c.test"},
		{admin.DoctorAuth, &admin.AuthReport{Domain: "a.test", Findings: []admin.Finding{finding}, Verdict: verdict}, "a.test"},
		{admin.DoctorTLS, &admin.TLSReport{Domain: "t.test", Findings: []admin.Finding{finding}, Verdict: verdict}, "t.test"},
	} {
		raw, _ := json.Marshal(tc.report)
		r := Decode(tc.check, Answer{Raw: raw})
		again, _ := json.Marshal(r.Typed)
		if string(again) != string(raw) || len(r.Findings) != 1 || r.Findings[0] != finding || r.Verdict != verdict || r.Domain() != tc.domain || r.Err != "" {
			t.Errorf("%s: %+v (%s)", tc.check, r, again)
		}
	}

	r := Decode(admin.DoctorDNS, Answer{Deliverer: Deliverer{ID: "x1"}, Raw: json.RawMessage(`{"verdict":7}`)})
	if !strings.HasPrefix(r.Err, "unreadable answer: json: cannot unmarshal") || r.Verdict.Severity != admin.SeverityError || r.Verdict.Summary != r.Err || r.Name() != "x1" {
		t.Errorf("unreadable: %+v", r)
	}
	if name := (Deliverer{}).Name(); name != "?" {
		t.Errorf("nameless deliverer: %q", name)
	}
}
