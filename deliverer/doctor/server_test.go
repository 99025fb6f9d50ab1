package doctor

import (
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
)

func TestServe(t *testing.T) {
	ns := natstest.Start(t)
	nc, _ := ns.Connect(t)
	dns := dnstest.Start(t)
	dns.MustAdd(t, "mail.good.test. 60 IN A 192.0.2.10", "10.2.0.192.in-addr.arpa. 60 IN PTR mail.good.test.")
	d := newDoctor(t, dns, nil)
	svc, err := micro.AddService(nc, micro.Config{Name: admin.DelivererService, Version: "0.0.1",
		Metadata: map[string]string{admin.MetadataInstance: "d1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Serve(svc, d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { svc.Stop(); srv.Close() }()

	msg, err := nc.Request(admin.DoctorSubject(admin.DoctorDNS), []byte(`{}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep admin.DNSReport
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Deliverer.ServiceID != svc.Info().ID || rep.HELO.Name != "mail.good.test" || !rep.Reverse[0].ForwardConfirmed {
		t.Fatalf("report %+v", rep)
	}
	for _, c := range []struct{ subject, body, code string }{
		{admin.DoctorSubject(admin.DoctorConnect), `{}`, "400"},
		{admin.DoctorSubject(admin.DoctorAuth), `{"domain":"not a domain"}`, "400"},
		{admin.DoctorSubject(admin.DoctorDNSBL), `{`, "400"},
		{admin.DoctorSubject(admin.DoctorDNS), `{"domains":["good.test","bad domain"]}`, "400"},
	} {
		msg, err := nc.Request(c.subject, []byte(c.body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := msg.Header.Get(micro.ErrorCodeHeader); got != c.code {
			t.Errorf("%s %s: code %q (%s), want %s", c.subject, c.body, got, msg.Header.Get(micro.ErrorHeader), c.code)
		}
	}
	// A dns request that names domains gets them checked.
	msg, err = nc.Request(admin.DoctorSubject(admin.DoctorDNS), []byte(`{"domains":["Nowhere.Test."]}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rep = admin.DNSReport{}
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Domains) != 1 || rep.Domains[0].Domain != "nowhere.test" || rep.Domains[0].Error != "the domain does not exist (NXDOMAIN)" {
		t.Fatalf("domains %+v", rep.Domains)
	}
	// The endpoints have no queue group: every deliverer hears a request.
	for _, e := range svc.Info().Endpoints {
		if e.QueueGroup != "" {
			t.Errorf("endpoint %s has queue group %q", e.Name, e.QueueGroup)
		}
	}
}
