package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"
)

// Fetcher fetches policy files over HTTPS (RFC 8461 §3.3). It is safe for
// concurrent use.
type Fetcher struct {
	client *http.Client
}

// FetchConfig configures a Fetcher.
type FetchConfig struct {
	// RootCAs verify the policy host's certificate; nil means the system
	// roots. The certificate must be valid for mta-sts.<domain>.
	RootCAs *x509.CertPool
	// Timeout bounds a whole fetch (RFC 8461 §3.3 suggests about a
	// minute; a delivery waits for it, so the default is 20 s).
	Timeout time.Duration
	// Dial opens the TCP connection; nil dials the host's port 443. Tests
	// point mta-sts.<domain>:443 at a server on loopback with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// NewFetcher returns a Fetcher.
func NewFetcher(cfg FetchConfig) *Fetcher {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		DialContext:           cfg.Dial,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       30 * time.Second,
		// A proxy from the environment would see which domains we mail.
		Proxy: nil,
	}
	if tr.DialContext == nil {
		d := &net.Dialer{Timeout: cfg.Timeout}
		tr.DialContext = d.DialContext
	}
	return &Fetcher{client: &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		// RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed".
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// URL is where the policy of domain is published.
func URL(domain string) string {
	return "https://mta-sts." + strings.TrimSuffix(strings.ToLower(domain), ".") + "/.well-known/mta-sts.txt"
}

// FetchError says why a policy could not be fetched.
type FetchError struct {
	URL string
	Err error
}

func (e *FetchError) Error() string { return "fetch " + e.URL + ": " + e.Err.Error() }
func (e *FetchError) Unwrap() error { return e.Err }

// Fetch gets and parses the policy of domain. Anything but a 200 answer
// with a text/plain policy over a verified connection is an error.
func (f *Fetcher) Fetch(ctx context.Context, domain string) (*Policy, error) {
	u := URL(domain)
	fail := func(err error) (*Policy, error) { return nil, &FetchError{URL: u, Err: err} }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // drop net/url's repetition of method and URL
		}
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("HTTP status %s", resp.Status))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		// RFC 8461 §3.2: the media type is text/plain.
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
			return fail(fmt.Errorf("content type %q, want text/plain", ct))
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return fail(err)
	}
	p, err := Parse(body)
	if err != nil {
		return fail(err)
	}
	return p, nil
}

// Close closes idle connections to policy hosts.
func (f *Fetcher) Close() { f.client.CloseIdleConnections() }
