package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-mta/sluice/deliverer/tlstest"
)

// policyServer serves body at /.well-known/mta-sts.txt over HTTPS with cert.
func policyServer(t *testing.T, cert tls.Certificate, handler http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		handler(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &hits
}

func serve(body, ctype string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ctype)
		w.Write([]byte(body))
	}
}

func fetcher(srv *httptest.Server, roots *x509.CertPool) *Fetcher {
	return NewFetcher(FetchConfig{RootCAs: roots, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}})
}

const policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"

func TestFetch(t *testing.T) {
	ca := tlstest.NewCA(t, "Test CA")
	srv, hits := policyServer(t, ca.Valid(t, "mta-sts.example.test"), serve(policy, "text/plain; charset=utf-8"))
	f := fetcher(srv, ca.Pool())
	defer f.Close()
	p, err := f.Fetch(context.Background(), "Example.Test.")
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Enforce || p.MX[0] != "mx.example.test" || p.MaxAge != 86400 || hits.Load() != 1 {
		t.Fatalf("policy %+v after %d requests", p, hits.Load())
	}
}

func TestFetchRefuses(t *testing.T) {
	ca := tlstest.NewCA(t, "Test CA")
	other := tlstest.NewCA(t, "Other CA")
	for _, tc := range []struct {
		name    string
		cert    tls.Certificate
		handler http.HandlerFunc
		want    string
	}{
		{"wrong name", ca.Valid(t, "www.example.test"), serve(policy, "text/plain"), "certificate is valid for www.example.test, not mta-sts.example.test"},
		{"expired", ca.Expired(t, "mta-sts.example.test"), serve(policy, "text/plain"), "certificate has expired"},
		{"unknown CA", other.Valid(t, "mta-sts.example.test"), serve(policy, "text/plain"), "certificate signed by unknown authority"},
		{"self-signed", tlstest.SelfSigned(t, "mta-sts.example.test"), serve(policy, "text/plain"), "certificate signed by unknown authority"},
		{"not found", ca.Valid(t, "mta-sts.example.test"), http.NotFound, "HTTP status 404 Not Found"},
		{"redirect", ca.Valid(t, "mta-sts.example.test"), func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://elsewhere.test/policy", http.StatusFound)
		}, "HTTP status 302 Found"},
		{"html", ca.Valid(t, "mta-sts.example.test"), serve(policy, "text/html"), "content type \"text/html\""},
		{"bad policy", ca.Valid(t, "mta-sts.example.test"), serve("version: STSv1\nmode: maybe\n", "text/plain"), "mode \"maybe\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := policyServer(t, tc.cert, tc.handler)
			f := fetcher(srv, ca.Pool())
			defer f.Close()
			_, err := f.Fetch(context.Background(), "example.test")
			var fe *FetchError
			if !errors.As(err, &fe) || fe.URL != "https://mta-sts.example.test/.well-known/mta-sts.txt" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Fetch = %v, want a FetchError containing %q", err, tc.want)
			}
		})
	}
}
