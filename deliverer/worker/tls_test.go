package worker

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

// TestMTASTSSurvivesRestart: a deliverer enforces a domain's MTA-STS
// policy (its MX presents an expired certificate: deferred with reason tls
// and the policy's words), stops, and a new deliverer enforces the same
// policy from the shared key-value cache although the policy server is
// gone by then, where without the cache it would deliver (may). A domain
// whose MX has a valid certificate is delivered over verified TLS, and the
// attempt span says so.
func TestMTASTSSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "Test CA")
	expired, valid := ca.Expired(t, "mx.sts.test"), ca.Valid(t, "mx.ok.test")
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Domain: "mx.test", TLS: &tls.Config{
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hi.ServerName == "mx.ok.test" {
				return &valid, nil
			}
			return &expired, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, p, _ := net.SplitHostPort(srv.Addr)
	smtpPort, _ := strconv.Atoi(p)

	var hits atomic.Int64
	https := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "version: STSv1\nmode: enforce\nmx: mx."+r.Host[len("mta-sts."):]+"\nmax_age: 86400\n")
	}))
	https.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Valid(t, "mta-sts.sts.test", "mta-sts.ok.test")}}
	https.StartTLS()
	defer https.Close()
	for _, d := range []string{"sts.test", "ok.test"} {
		e.dns.MustAdd(t, d+". 60 IN MX 10 mx."+d+".", "mx."+d+". 60 IN A 127.0.0.1",
			`_mta-sts.`+d+`. 60 IN TXT "v=STSv1; id=20261204"`)
	}

	start := func() *Service {
		s := testSettings(e)
		s.SMTPPort = smtpPort
		s.TLSPolicy.Default = tlspolicy.ModeMTASTS
		_, js := e.ns.Connect(t)
		svc, err := New(s, Deps{JS: js, Tracer: e.tp.Tracer("test"), Meter: noop.NewMeterProvider().Meter(""),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			TLSPolicy: tlspolicy.Options{RootCAs: ca.Pool(), HTTPSDial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, https.Listener.Addr().String())
			}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := svc.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return svc
	}
	stop := func(svc *Service) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deferred := func(r *sluicev1.RecipientResult) {
		t.Helper()
		if r.Outcome != sluicev1.Outcome_OUTCOME_TEMPORARY || r.Reason != sluicev1.Reason_REASON_TLS || r.Code != 451 ||
			r.EnhancedCode != "4.7.5" || r.Text != "mta-sts enforce: mx.sts.test certificate expired" || r.RemoteHost != "mx.sts.test[127.0.0.1]" {
			t.Fatalf("result %v %v %d %s %q %s, want temporary tls 451 4.7.5 \"mta-sts enforce: mx.sts.test certificate expired\"",
				r.Outcome, r.Reason, r.Code, r.EnhancedCode, r.Text, r.RemoteHost)
		}
	}

	svc := start()
	job := e.enqueue(t, jobSpec{domain: "sts.test", rcpts: []string{"a@sts.test"}})
	deferred(e.result(t, job, 10*time.Second).Recipients[0])
	job = e.enqueue(t, jobSpec{domain: "ok.test", rcpts: []string{"a@ok.test"}})
	// The result the scheduler receives carries the TLS of the delivery.
	if r := e.result(t, job, 10*time.Second).Recipients[0]; r.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED ||
		r.Tls.GetPolicy() != "mta-sts enforce" || r.Tls.GetVersion() != "1.3" || r.Tls.GetVerifiedBy() != "webpki" || r.Tls.GetCipher() == "" {
		t.Fatalf("ok.test: %v %s, TLS %v", r.Outcome, r.Text, r.Tls)
	}
	stop(svc)
	if n := hits.Load(); n != 2 {
		t.Fatalf("%d policy fetches, want 2", n)
	}
	if msgs := srv.Messages(); len(msgs) != 1 || !msgs[0].TLS || msgs[0].To[0] != "a@ok.test" {
		t.Fatalf("server got %d messages, want the one of ok.test over TLS", len(msgs))
	}
	var attempt map[string]string
	for _, s := range e.spans.GetSpans() {
		if s.Name == "deliverer.attempt" && attr(s.Attributes, "sluice.destination_domain") == "ok.test" {
			attempt = map[string]string{}
			for _, k := range []string{"sluice.tls.policy", "sluice.tls", "sluice.tls.verified", "sluice.tls.verified_by", "sluice.tls.version"} {
				attempt[k] = attr(s.Attributes, k)
			}
		}
	}
	if attempt["sluice.tls.policy"] != "mta-sts enforce" || attempt["sluice.tls"] != "true" || attempt["sluice.tls.verified"] != "true" ||
		attempt["sluice.tls.verified_by"] != "webpki" || attempt["sluice.tls.version"] != "1.3" {
		t.Fatalf("attempt span TLS attributes %v", attempt)
	}

	// Restart with the policy server gone: the cached policy still holds.
	https.Close()
	svc = start()
	defer stop(svc)
	job = e.enqueue(t, jobSpec{domain: "sts.test", rcpts: []string{"b@sts.test"}})
	deferred(e.result(t, job, 10*time.Second).Recipients[0])
	if n := hits.Load(); n != 2 {
		t.Fatalf("%d policy fetches after the restart, want still 2", n)
	}
	if n := srv.Count(); n != 1 {
		t.Fatalf("%d messages at the server, want 1: nothing for sts.test", n)
	}
}
