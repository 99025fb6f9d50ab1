package courier

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/smtpclient"
	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// tlsWorld is a destination example.test whose one MX host
// mx.example.test is a go-smtp server on loopback, an in-process DNS
// server, a test CA, and an HTTPS server for MTA-STS policies.
type tlsWorld struct {
	dns    *dnstest.Server
	ca     *tlstest.CA
	policy atomic.Pointer[string]
	hits   atomic.Int64
	https  *httptest.Server
}

func newTLSWorld(t *testing.T) *tlsWorld {
	t.Helper()
	w := &tlsWorld{dns: dnstest.Start(t), ca: tlstest.NewCA(t, "Sluice Test CA")}
	w.dns.MustAdd(t, "example.test. 60 IN MX 10 mx.example.test.", "mx.example.test. 60 IN A 127.0.0.1")
	w.https = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.hits.Add(1)
		p := w.policy.Load()
		if r.Host != "mta-sts.example.test" || r.URL.Path != "/.well-known/mta-sts.txt" || p == nil {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", "text/plain")
		rw.Write([]byte(*p))
	}))
	w.https.TLS = &tls.Config{Certificates: []tls.Certificate{w.ca.Valid(t, "mta-sts.example.test")}}
	w.https.StartTLS()
	t.Cleanup(w.https.Close)
	return w
}

// publishSTS publishes an MTA-STS policy with id.
func (w *tlsWorld) publishSTS(t *testing.T, id, mode, mxPattern string) {
	t.Helper()
	w.dns.MustAdd(t, fmt.Sprintf(`_mta-sts.example.test. 60 IN TXT "v=STSv1; id=%s;"`, id))
	p := fmt.Sprintf("version: STSv1\r\nmode: %s\r\nmx: %s\r\nmax_age: 86400\r\n", mode, mxPattern)
	w.policy.Store(&p)
}

// server starts mx.example.test presenting cert (nil: no STARTTLS).
func (w *tlsWorld) server(t *testing.T, cert *tls.Certificate) *capture.Server {
	t.Helper()
	o := capture.Options{Domain: "mx.example.test"}
	if cert != nil {
		o.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	srv, err := capture.Listen("127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(p, &n)
	return n
}

// courier returns a courier delivering example.test to srv under cfg,
// recording spans in rec.
func (w *tlsWorld) courier(t *testing.T, srv *capture.Server, cfg tlspolicy.Config, rec *tracetest.SpanRecorder) *Courier {
	t.Helper()
	res, err := mx.New(mx.Config{Server: w.dns.Addr, Timeout: dnstest.Timeout, Port: port(t, srv.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := smtpclient.New(smtpclient.Config{Hostname: "mta.sender.test", ConnectTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := tlspolicy.New(cfg, tlspolicy.Options{DNSServer: w.dns.Addr, DNSTimeout: dnstest.Timeout, RootCAs: w.ca.Pool(),
		HTTPSDial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, network, w.https.Listener.Addr().String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(eng.Close)
	tp := trace.NewTracerProvider(trace.WithSpanProcessor(rec))
	return New(res, d, tp.Tracer("test"), WithTLSPolicy(eng, nil))
}

func tlsaEE(cert tls.Certificate) string {
	h := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	return "3 1 1 " + hex.EncodeToString(h[:])
}

func tlsaTA(ca *x509.Certificate) string {
	h := sha256.Sum256(ca.Raw)
	return "2 0 1 " + hex.EncodeToString(h[:])
}

func tlsJob() *sluicev1.Job {
	return &sluicev1.Job{Domain: "example.test", MailFrom: "alice@sender.test", BodySize: int64(len(message)),
		Recipients: []*sluicev1.Recipient{{Address: "bob@example.test"}}}
}

func policy(mode tlspolicy.Mode) tlspolicy.Config {
	c := tlspolicy.DefaultConfig()
	c.Default = mode
	c.Recheck = 0
	return c
}

// TestTLSPolicies delivers to a real SMTP server under each policy mode,
// presenting a valid, an expired, a wrong-name or a self-signed
// certificate or none, and checks that mail is delivered (in clear text
// or over TLS, verified or not) or deferred with reason tls and the exact
// text.
func TestTLSPolicies(t *testing.T) {
	type certKind int
	const (
		noTLS certKind = iota
		valid
		expired
		wrongName
		selfSigned
		otherSelfSigned
	)
	type dnsSetup func(t *testing.T, w *tlsWorld, cert tls.Certificate, port int)
	tlsa := func(rr func(cert tls.Certificate, ca *tlstest.CA) string, mxSecure, tlsaSecure bool) dnsSetup {
		return func(t *testing.T, w *tlsWorld, cert tls.Certificate, port int) {
			name := fmt.Sprintf("_%d._tcp.mx.example.test.", port)
			w.dns.MustAdd(t, name+" 60 IN TLSA "+rr(cert, w.ca))
			w.dns.Secure("example.test", mxSecure)
			w.dns.Secure(name, tlsaSecure)
		}
	}
	ee := func(c tls.Certificate, _ *tlstest.CA) string { return tlsaEE(c) }
	ta := func(_ tls.Certificate, ca *tlstest.CA) string { return tlsaTA(ca.Cert) }
	sts := func(mode, pattern string) dnsSetup {
		return func(t *testing.T, w *tlsWorld, _ tls.Certificate, _ int) { w.publishSTS(t, "v1", mode, pattern) }
	}
	both := func(a, b dnsSetup) dnsSetup {
		return func(t *testing.T, w *tlsWorld, c tls.Certificate, p int) { a(t, w, c, p); b(t, w, c, p) }
	}
	const (
		delivered = "delivered"
		clear     = "delivered in clear text"
	)
	for _, tc := range []struct {
		name string
		mode tlspolicy.Mode
		cert certKind
		dns  dnsSetup
		// want is delivered, clear, or the deferral's text.
		want     string
		enhanced string
		// verifiedBy is the span's sluice.tls.verified_by when delivered.
		verifiedBy string
	}{
		{"none/offered", tlspolicy.ModeNone, valid, nil, clear, "", ""},
		{"may/no TLS", tlspolicy.ModeMay, noTLS, nil, clear, "", ""},
		{"may/self-signed", tlspolicy.ModeMay, selfSigned, nil, delivered, "", ""},
		{"encrypt/self-signed", tlspolicy.ModeEncrypt, selfSigned, nil, delivered, "", ""},
		{"encrypt/no TLS", tlspolicy.ModeEncrypt, noTLS, nil, "encrypt: mx.example.test does not offer STARTTLS; TLS is required", "4.7.4", ""},
		{"verify/valid", tlspolicy.ModeVerify, valid, nil, delivered, "", "webpki"},
		{"verify/expired", tlspolicy.ModeVerify, expired, nil, "verify: mx.example.test certificate expired", "4.7.5", ""},
		{"verify/wrong name", tlspolicy.ModeVerify, wrongName, nil, "verify: mx.example.test certificate name mismatch (the certificate is for www.example.test)", "4.7.5", ""},
		{"verify/self-signed", tlspolicy.ModeVerify, selfSigned, nil, "verify: mx.example.test self-signed certificate", "4.7.5", ""},
		{"verify/no TLS", tlspolicy.ModeVerify, noTLS, nil, "verify: mx.example.test does not offer STARTTLS; TLS is required", "4.7.4", ""},
		{"mta-sts/no policy", tlspolicy.ModeMTASTS, selfSigned, nil, delivered, "", ""},
		{"mta-sts enforce/valid", tlspolicy.ModeMTASTS, valid, sts("enforce", "mx.example.test"), delivered, "", "webpki"},
		{"mta-sts enforce/wildcard", tlspolicy.ModeMTASTS, valid, sts("enforce", "*.example.test"), delivered, "", "webpki"},
		{"mta-sts enforce/expired", tlspolicy.ModeMTASTS, expired, sts("enforce", "mx.example.test"), "mta-sts enforce: mx.example.test certificate expired", "4.7.5", ""},
		{"mta-sts enforce/self-signed", tlspolicy.ModeMTASTS, selfSigned, sts("enforce", "mx.example.test"), "mta-sts enforce: mx.example.test self-signed certificate", "4.7.5", ""},
		{"mta-sts enforce/no TLS", tlspolicy.ModeMTASTS, noTLS, sts("enforce", "mx.example.test"), "mta-sts enforce: mx.example.test does not offer STARTTLS; TLS is required", "4.7.4", ""},
		{"mta-sts enforce/mx mismatch", tlspolicy.ModeMTASTS, valid, sts("enforce", "mail.example.test"),
			"mta-sts enforce: MX host mx.example.test does not match the policy of example.test (mx: mail.example.test)", "4.7.5", ""},
		{"mta-sts testing/expired", tlspolicy.ModeMTASTS, expired, sts("testing", "mx.example.test"), delivered, "", ""},
		{"mta-sts testing/mx mismatch", tlspolicy.ModeMTASTS, valid, sts("testing", "mail.example.test"), delivered, "", "webpki"},
		{"mta-sts none/self-signed", tlspolicy.ModeMTASTS, selfSigned, sts("none", "mx.example.test"), delivered, "", ""},
		{"dane/EE match", tlspolicy.ModeDANE, selfSigned, tlsa(ee, true, true), delivered, "", "dane-ee"},
		{"dane/EE match expired", tlspolicy.ModeDANE, expired, tlsa(ee, true, true), delivered, "", "dane-ee"},
		{"dane/TA match", tlspolicy.ModeDANE, valid, tlsa(ta, true, true), delivered, "", "dane-ta"},
		{"dane/TA wrong name", tlspolicy.ModeDANE, wrongName, tlsa(ta, true, true),
			"dane: TLSA mismatch for mx.example.test (DANE-TA: certificate is valid for www.example.test, not mx.example.test)", "4.7.5", ""},
		{"dane/EE mismatch", tlspolicy.ModeDANE, otherSelfSigned, tlsa(ee, true, true),
			"dane: TLSA mismatch for mx.example.test (no DANE-EE record matches the server's certificate)", "4.7.5", ""},
		{"dane/no TLS", tlspolicy.ModeDANE, noTLS, tlsa(ee, true, true), "dane: mx.example.test does not offer STARTTLS; TLS is required", "4.7.4", ""},
		// Without the AD bit the TLSA answer is not trusted: may.
		{"dane/TLSA without AD", tlspolicy.ModeDANE, otherSelfSigned, tlsa(ee, true, false), delivered, "", ""},
		{"dane/MX without AD", tlspolicy.ModeDANE, otherSelfSigned, tlsa(ee, false, true), delivered, "", ""},
		// A TLSA lookup that fails under DNSSEC (a validating resolver
		// answers SERVFAIL to a bogus answer) makes the host unusable,
		// and so does a failed MX lookup on the validating resolver.
		{"dane/TLSA SERVFAIL", tlspolicy.ModeDANE, selfSigned, func(t *testing.T, w *tlsWorld, c tls.Certificate, p int) {
			w.dns.Secure("example.test", true)
			w.dns.ServFail(fmt.Sprintf("_%d._tcp.mx.example.test", p), true)
		}, "dane: TLSA lookup of _PORT._tcp.mx.example.test failed: SERVFAIL", "4.7.5", ""},
		// DANE takes precedence over MTA-STS (RFC 8461 §2): a
		// self-signed certificate pinned by TLSA passes although the
		// MTA-STS policy would refuse it...
		{"dane over mta-sts", tlspolicy.ModeDANE, selfSigned, both(tlsa(ee, true, true), sts("enforce", "mx.example.test")), delivered, "", "dane-ee"},
		// ... and where DANE does not apply, MTA-STS does.
		{"mta-sts under dane", tlspolicy.ModeDANE, selfSigned, both(tlsa(ee, true, false), sts("enforce", "mx.example.test")),
			"mta-sts enforce: mx.example.test self-signed certificate", "4.7.5", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newTLSWorld(t)
			var cert tls.Certificate
			switch tc.cert {
			case valid:
				cert = w.ca.Valid(t, "mx.example.test")
			case expired:
				cert = w.ca.Expired(t, "mx.example.test")
			case wrongName:
				cert = w.ca.Valid(t, "www.example.test")
			case selfSigned, otherSelfSigned:
				cert = tlstest.SelfSigned(t, "mx.example.test")
			}
			var srv *capture.Server
			if tc.cert == noTLS {
				srv = w.server(t, nil)
			} else {
				srv = w.server(t, &cert)
			}
			if tc.dns != nil {
				pinned := cert
				if tc.cert == otherSelfSigned || tc.cert == noTLS {
					pinned = tlstest.SelfSigned(t, "mx.example.test")
				}
				tc.dns(t, w, pinned, port(t, srv.Addr))
			}
			rec := tracetest.NewSpanRecorder()
			c := w.courier(t, srv, policy(tc.mode), rec)
			res := c.Deliver(context.Background(), tlsJob(), strings.NewReader(message))[0]
			switch tc.want {
			case delivered, clear:
				if res.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
					t.Fatalf("outcome %v %s %s: %s, want delivered", res.Outcome, res.Reason, res.EnhancedCode, res.Text)
				}
				wantVersion := map[bool]string{true: "1.3", false: ""}[tc.want == delivered]
				if res.Tls == nil || res.Tls.Version != wantVersion || res.Tls.VerifiedBy != tc.verifiedBy ||
					(res.Tls.Cipher != "") != (tc.want == delivered) {
					t.Errorf("result TLS %v, want version %q verified by %q", res.Tls, wantVersion, tc.verifiedBy)
				}
				if strings.Contains(tc.name, "testing/expired") && (res.Tls.Policy != "mta-sts testing" || res.Tls.Reported != "mta-sts testing: mx.example.test certificate expired") {
					t.Errorf("testing policy: result TLS %v", res.Tls)
				}
				msgs := srv.Messages()
				if len(msgs) != 1 || msgs[0].TLS != (tc.want == delivered) {
					t.Fatalf("%d messages at the server, TLS %v; want 1, TLS %v", len(msgs), len(msgs) > 0 && msgs[0].TLS, tc.want == delivered)
				}
			default:
				tc.want = strings.ReplaceAll(tc.want, "PORT", fmt.Sprint(port(t, srv.Addr)))
				if res.Outcome != sluicev1.Outcome_OUTCOME_TEMPORARY || res.Reason != sluicev1.Reason_REASON_TLS ||
					res.Code != 451 || res.EnhancedCode != tc.enhanced || res.Text != tc.want {
					t.Fatalf("got %v %v %d %s %q\nwant temporary tls 451 %s %q", res.Outcome, res.Reason, res.Code, res.EnhancedCode, res.Text, tc.enhanced, tc.want)
				}
				if n := srv.Count(); n != 0 {
					t.Fatalf("%d messages reached the server under a policy that refused it", n)
				}
			}
			// The policy's decision and the TLS the attempt got are on
			// the spans.
			var by string
			var policySpan bool
			for _, s := range rec.Ended() {
				if s.Name() == "tls.policy" {
					policySpan = true
				}
				for _, a := range s.Attributes() {
					if a.Key == "sluice.tls.verified_by" {
						by = a.Value.AsString()
					}
				}
			}
			if !policySpan {
				t.Error("no tls.policy span")
			}
			if tc.want == delivered && by != tc.verifiedBy {
				t.Errorf("verified by %q, want %q", by, tc.verifiedBy)
			}
		})
	}
}

// TestTLSPolicyCachedSession: a session opened in clear text or without
// verification for a domain under may is not reused for a domain of the
// same site under verify; a new, verified connection carries its mail.
func TestTLSPolicyCachedSession(t *testing.T) {
	w := newTLSWorld(t)
	w.dns.MustAdd(t, "strict.test. 60 IN MX 10 mx.example.test.")
	cert := w.ca.Valid(t, "mx.example.test")
	srv := w.server(t, &cert)
	cfg := policy(tlspolicy.ModeNone)
	cfg.Domains = map[string]tlspolicy.Mode{"strict.test": tlspolicy.ModeVerify}
	rec := tracetest.NewSpanRecorder()
	c := w.courier(t, srv, cfg, rec)
	res, err := mx.New(mx.Config{Server: w.dns.Addr, Timeout: dnstest.Timeout, Port: port(t, srv.Addr)})
	if err != nil {
		t.Fatal(err)
	}
	c.router = res
	c.cache = newConnCache(CacheConfig{TTL: 10 * time.Second, MaxUses: 10})
	defer c.Close()
	deliver := func(domain, policy, verifiedBy string) {
		t.Helper()
		j := tlsJob()
		j.Domain, j.Recipients[0].Address = domain, "bob@"+domain
		r := c.Deliver(context.Background(), j, strings.NewReader(message))[0]
		if r.Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("%s: %v %s", domain, r.Outcome, r.Text)
		}
		if r.Tls.GetPolicy() != policy || r.Tls.GetVerifiedBy() != verifiedBy {
			t.Fatalf("%s: TLS %v, want policy %s verified by %q", domain, r.Tls, policy, verifiedBy)
		}
	}
	deliver("example.test", "none", "")        // clear text, session cached
	deliver("example.test", "none", "")        // reuses it
	deliver("strict.test", "verify", "webpki") // a new connection with TLS
	deliver("strict.test", "verify", "webpki") // reuses the verified one
	msgs := srv.Messages()
	if len(msgs) != 4 || msgs[0].TLS || msgs[1].TLS || !msgs[2].TLS || !msgs[3].TLS {
		t.Fatalf("TLS per message: %v", func() (v []bool) {
			for _, m := range msgs {
				v = append(v, m.TLS)
			}
			return
		}())
	}
	// Two connections, one clear and one verified; go-smtp counts the
	// verified one twice, because it starts a new session after STARTTLS.
	if n := srv.Connections(); n != 3 {
		t.Fatalf("%d sessions, want 3 (one clear connection, one verified counted twice)", n)
	}
}
