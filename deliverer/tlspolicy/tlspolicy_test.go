package tlspolicy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deliverer/mtasts"
	"github.com/sluice-mta/sluice/deliverer/tlstest"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

func TestConfig(t *testing.T) {
	c := DefaultConfig()
	c.Domains = map[string]Mode{"bank.example": ModeVerify, ".corp.example": ModeEncrypt, "x.corp.example": ModeNone, "Upper.Example.": ModeDANE}
	for domain, want := range map[string]Mode{
		"bank.example": ModeVerify, "BANK.example.": ModeVerify, "a.bank.example": ModeMay,
		"corp.example": ModeMay, "a.corp.example": ModeEncrypt, "b.a.corp.example": ModeEncrypt, "x.corp.example": ModeNone,
		"upper.example": ModeDANE, "other.example": ModeMay,
	} {
		if got := c.ModeFor(domain); got != want {
			t.Errorf("ModeFor(%q) = %s, want %s", domain, got, want)
		}
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Default = "secure" }, `deliverer.tls_policy.default: "secure", want one of none, may, encrypt, verify, dane, mta-sts`},
		{func(c *Config) { c.Domains = map[string]Mode{"a.example": "mta_sts"} }, `deliverer.tls_policy.domains.a.example: "mta_sts", want one of`},
		{func(c *Config) { c.Domains = map[string]Mode{"a b": ModeMay} }, `deliverer.tls_policy.domains: "a b" is not a domain`},
		{func(c *Config) { c.DNSSECServer = "127.0.0.1" }, `deliverer.tls_policy.dnssec_server: "127.0.0.1"`},
		{func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, `deliverer.tls_policy.ca_file: open /nonexistent/ca.pem`},
		{func(c *Config) { c.FetchTimeout = 0 }, `deliverer.tls_policy.mta_sts_fetch_timeout: 0s`},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Validate = %v, want %q", err, tc.want)
		}
	}
	c = DefaultConfig()
	c.CAFile = tlstest.NewCA(t, "File CA").WritePEM(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("a PEM CA file: %v", err)
	}
}

// stsWorld is example.test with an _mta-sts record and an HTTPS policy
// server signed by a test CA.
type stsWorld struct {
	dns    *dnstest.Server
	ca     *tlstest.CA
	https  *httptest.Server
	mu     sync.Mutex
	policy string
	hits   atomic.Int64
	now    atomic.Pointer[time.Time]
}

func newSTSWorld(t *testing.T) *stsWorld {
	w := &stsWorld{dns: dnstest.Start(t), ca: tlstest.NewCA(t, "Test CA")}
	now := time.Now()
	w.now.Store(&now)
	w.https = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.hits.Add(1)
		w.mu.Lock()
		p := w.policy
		w.mu.Unlock()
		if p == "" {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", "text/plain")
		rw.Write([]byte(p))
	}))
	w.https.TLS = &tls.Config{Certificates: []tls.Certificate{w.ca.Valid(t, "mta-sts.example.test")}}
	w.https.StartTLS()
	t.Cleanup(w.https.Close)
	return w
}

func (w *stsWorld) serve(mode, mx string, maxAge int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policy = ""
	if mode != "" {
		w.policy = fmt.Sprintf("version: STSv1\nmode: %s\nmx: %s\nmax_age: %d\n", mode, mx, maxAge)
	}
}

func (w *stsWorld) record(t *testing.T, id string) {
	t.Helper()
	w.dns.Remove("_mta-sts.example.test")
	if id != "" {
		w.dns.MustAdd(t, `_mta-sts.example.test. 60 IN TXT "v=STSv1; id=`+id+`"`)
	}
}

func (w *stsWorld) advance(d time.Duration) {
	n := w.now.Load().Add(d)
	w.now.Store(&n)
}

func (w *stsWorld) engine(t *testing.T) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Default = ModeMTASTS
	e, err := New(cfg, Options{DNSServer: w.dns.Addr, DNSTimeout: dnstest.Timeout, RootCAs: w.ca.Pool(),
		Now: func() time.Time { return *w.now.Load() },
		HTTPSDial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, w.https.Listener.Addr().String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// sts asks a fresh decision of e (as each attempt does) for the policy.
func sts(e *Engine) (*mtasts.Policy, string) {
	return e.Decide(context.Background(), "example.test", false).STS(context.Background())
}

// TestMTASTSCache: a fetched policy is cached in the key-value bucket and
// survives a restart (a new engine on the same bucket enforces it without
// fetching, even with the policy server gone); a new id in the TXT record
// fetches again; a removed record leaves the cached policy in force until
// max_age; an expired one is fetched again.
func TestMTASTSCache(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	kv, err := streams.MTASTS(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	w := newSTSWorld(t)
	w.record(t, "v1")
	w.serve("enforce", "mx.example.test", 3600)

	e1 := w.engine(t)
	e1.UseStore(kv)
	p, note := sts(e1)
	if p == nil || p.Mode != mtasts.Enforce || p.MX[0] != "mx.example.test" || note != "fetched policy id v1" || w.hits.Load() != 1 {
		t.Fatalf("first lookup: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	ent, err := kv.Get(ctx, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	var cached stsEntry
	if err := json.Unmarshal(ent.Value(), &cached); err != nil || cached.ID != "v1" || cached.Policy.MaxAge != 3600 ||
		!cached.Expires.Equal(cached.Fetched.Add(time.Hour)) {
		t.Fatalf("cached %s: %v", ent.Value(), err)
	}

	// A restart: a new engine, the policy server gone.
	w.serve("", "", 0)
	e2 := w.engine(t)
	e2.UseStore(kv)
	p, note = sts(e2)
	if p == nil || p.Mode != mtasts.Enforce || note != "cached policy id v1" || w.hits.Load() != 1 {
		t.Fatalf("after restart: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	// The same engine asks again only after Recheck... with 0 it asks
	// every time; the record's id changes: fetch again.
	e3 := w.engine(t)
	e3.cfg.Recheck = 0
	e3.UseStore(kv)
	w.record(t, "v2")
	w.serve("testing", "*.example.test", 7200)
	p, note = sts(e3)
	if p == nil || p.Mode != mtasts.Testing || note != "fetched policy id v2" || w.hits.Load() != 2 {
		t.Fatalf("new id: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	// The record disappears: the cached policy still applies (RFC 8461
	// §5.1), without a fetch.
	w.record(t, "")
	p, note = sts(e3)
	if p == nil || p.Mode != mtasts.Testing || !strings.HasPrefix(note, "cached policy id v2 (record: no _mta-sts.example.test record)") || w.hits.Load() != 2 {
		t.Fatalf("record gone: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	// ... until it expires.
	w.advance(2*time.Hour + time.Second)
	p, note = sts(e3)
	if p != nil || note != "no _mta-sts.example.test record" {
		t.Fatalf("expired without record: %+v %q", p, note)
	}
	// With the record back and the policy half-aged, it is fetched
	// again; a failed refresh keeps the cached one.
	w.record(t, "v2")
	w.serve("enforce", "*.example.test", 7200)
	if p, note = sts(e3); p == nil || p.Mode != mtasts.Enforce || note != "fetched policy id v2" || w.hits.Load() != 3 {
		t.Fatalf("record back: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	w.advance(time.Hour + time.Minute)
	w.serve("", "", 0)
	if p, note = sts(e3); p == nil || p.Mode != mtasts.Enforce || !strings.HasPrefix(note, "cached policy id v2 (refresh to id v2 failed: fetch https://mta-sts.example.test/.well-known/mta-sts.txt: HTTP status 404") || w.hits.Load() != 4 {
		t.Fatalf("failed refresh: %+v %q after %d fetches", p, note, w.hits.Load())
	}
	if _, err := js.KeyValue(ctx, wire.BucketMTASTS); err != nil {
		t.Fatal(err)
	}
}

// TestMTASTSNoPolicy: without a record, with a record whose policy cannot
// be fetched, with two records, there is no policy, and the note says why.
func TestMTASTSNoPolicy(t *testing.T) {
	w := newSTSWorld(t)
	e := w.engine(t)
	e.cfg.Recheck = 0
	if p, note := sts(e); p != nil || note != "no _mta-sts.example.test record" {
		t.Fatalf("no record: %+v %q", p, note)
	}
	w.record(t, "v1")
	if p, note := sts(e); p != nil || note != "policy fetch failed: fetch https://mta-sts.example.test/.well-known/mta-sts.txt: HTTP status 404 Not Found" {
		t.Fatalf("404: %+v %q", p, note)
	}
	w.dns.MustAdd(t, `_mta-sts.example.test. 60 IN TXT "v=STSv1; id=v2"`)
	if p, note := sts(e); p != nil || note != "_mta-sts.example.test has several STSv1 records, which counts as none" {
		t.Fatalf("two records: %+v %q", p, note)
	}
	w.record(t, "v1")
	w.serve("none", "mx.example.test", 60)
	if p, note := sts(e); p != nil || note != "fetched policy id v1" {
		t.Fatalf("mode none: %+v %q", p, note)
	}
}
