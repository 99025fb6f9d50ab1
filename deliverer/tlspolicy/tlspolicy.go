// Package tlspolicy decides, before the deliverer connects, what TLS a
// destination requires, and checks the server's certificate against it
// during STARTTLS. The modes follow Postfix's smtp_tls_policy_maps (none,
// may, encrypt, verify, dane) plus mta-sts; see Mode. Each attempt asks
// Decide once for the recipient domain, then Decision.Host for each MX
// host it is about to try, and gets a Requirement: whether to use
// STARTTLS, whether TLS is required, how to verify the certificate, or that
// the host must not be used at all (an MX host outside an enforced MTA-STS
// policy, a TLSA lookup that failed under DNSSEC).
//
// DANE (RFC 7672) needs DNSSEC: TLSA records count only when the
// validating resolver (Config.DNSSECServer) sets the AD bit on both the
// domain's MX answer and the TLSA answer, every CNAME on the way included.
// The questions go through the deliverer's DNS client, package mx. Where DANE applies it takes
// precedence over MTA-STS (RFC 8461 §2). MTA-STS policies (RFC 8461) are
// fetched over HTTPS with certificate validation and cached by max_age in
// the key-value bucket wire.BucketMTASTS, shared by every deliverer.
//
// Failures say which policy failed and why, in the words a postmaster
// reads in `sluice queue show`: "mta-sts enforce: mx.example.com
// certificate expired", "dane: TLSA mismatch for mx.example.com (...)".
package tlspolicy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/deliverer/dane"
	"github.com/sluice-mta/sluice/deliverer/mtasts"
)

// Options are what the configuration file does not say.
type Options struct {
	// DNSServer is the deliverer's resolver, used when the configuration
	// names no dnssec_server.
	DNSServer string
	// DNSTimeout bounds each query.
	DNSTimeout time.Duration
	// RootCAs replaces the system roots and the CA file, for verify,
	// MTA-STS and the policy fetch; tests pass their own CA.
	RootCAs *x509.CertPool
	// HTTPSDial opens the connection of a policy fetch; nil dials
	// mta-sts.<domain>:443. Tests point it at a server on loopback.
	HTTPSDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Engine makes decisions. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	res     *resolver
	fetcher *mtasts.Fetcher
	roots   *x509.CertPool
	now     func() time.Time
	kv      atomic.Pointer[jetstream.KeyValue]

	mu      sync.Mutex
	memo    map[string]*stsState
	flights map[string]*flight
}

// New returns an Engine. Without a store (UseStore) MTA-STS policies are
// cached in memory only.
func New(cfg Config, o Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	server := cfg.DNSSECServer
	if server == "" {
		server = o.DNSServer
	}
	if server == "" {
		return nil, errors.New("tlspolicy: no DNS server")
	}
	pool := o.RootCAs
	if pool == nil {
		var err error
		if pool, err = roots(cfg.CAFile); err != nil {
			return nil, fmt.Errorf("deliverer.tls_policy.ca_file: %v", err)
		}
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	res, err := newResolver(server, o.DNSTimeout)
	if err != nil {
		return nil, err
	}
	return &Engine{
		cfg:     cfg,
		res:     res,
		fetcher: mtasts.NewFetcher(mtasts.FetchConfig{RootCAs: pool, Timeout: cfg.FetchTimeout, Dial: o.HTTPSDial}),
		roots:   pool,
		now:     now,
		memo:    map[string]*stsState{},
		flights: map[string]*flight{},
	}, nil
}

// UseStore makes kv (wire.BucketMTASTS) the shared cache of MTA-STS
// policies.
func (e *Engine) UseStore(kv jetstream.KeyValue) { e.kv.Store(&kv) }

// Close closes idle connections to policy servers.
func (e *Engine) Close() { e.fetcher.Close() }

// Decision is the TLS policy of one destination for one attempt.
type Decision struct {
	Domain string
	// Mode is the configured mode.
	Mode   Mode
	e      *Engine
	static bool
	// mxSecure and mxErr are the DNSSEC status of the domain's MX answer
	// (mode dane only).
	mxSecure bool
	mxErr    error
	mxOnce   sync.Once // asks for mxSecure outside mode dane, for REQUIRETLS
	stsOnce  sync.Once
	stsState *stsState
}

// Decide returns the policy of a recipient domain; static is true for a
// configured route, which has no MX records for DANE or MTA-STS to apply
// to (its mode still applies, and dane looks up the route host's TLSA).
func (e *Engine) Decide(ctx context.Context, domain string, static bool) *Decision {
	d := &Decision{Domain: strings.ToLower(strings.TrimSuffix(domain, ".")), Mode: e.cfg.ModeFor(domain), e: e, static: static}
	if d.Mode == ModeDANE && !static {
		d.mxSecure, d.mxErr = e.res.mxSecure(ctx, d.Domain)
	}
	return d
}

// STS returns the domain's MTA-STS policy in force (nil: none) and a note
// on where it came from or why there is none. It looks the policy up on
// first use.
func (d *Decision) STS(ctx context.Context) (*mtasts.Policy, string) {
	d.stsOnce.Do(func() { d.stsState = d.e.sts(ctx, d.Domain) })
	return d.stsState.policy(), d.stsState.note
}

// Requirement is what one MX host must offer.
type Requirement struct {
	// Policy is the policy that applies: none, may, encrypt, verify,
	// dane or mta-sts. These are the policy label values of the metrics.
	Policy string
	// STSMode is the MTA-STS mode, enforce or testing, for Policy mta-sts.
	STSMode mtasts.Mode
	// Host is the MX host name the certificate must be valid for.
	Host string
	// StartTLS: use STARTTLS when the server offers it.
	StartTLS bool
	// Required: without TLS, or with a certificate that fails the check,
	// the host must not receive the mail.
	Required bool
	// Refused, when set, says why the host must not be used at all.
	Refused string
	// Reported, when set, is a failure found before connecting that a
	// testing policy records without acting on it.
	Reported string
	// Note explains the choice, for the span: a TLSA answer ignored, a
	// policy not found.
	Note string
	// Domain is the policy domain (the recipient domain), for TLS
	// reports; empty without a Decision.
	Domain string
	// PolicyString is the policy as a TLS report shows it (RFC 8460
	// §4.4): the MTA-STS policy's lines, or the usable TLSA records.
	PolicyString []string
	// MXPatterns are the MTA-STS policy's mx patterns.
	MXPatterns []string
	// RequireTLS marks the requirement of a message sent with REQUIRETLS
	// (RFC 8689), made by Decision.RequireTLS: TLS required and the
	// certificate verified, whatever Policy alone would accept.
	RequireTLS bool
	// NotSecure marks a REQUIRETLS refusal for want of a validated MX
	// answer or an MTA-STS policy: a property of the domain, not a fault
	// that passes, so the message is returned (5.7.30, with Refused as
	// the text) rather than kept.
	NotSecure bool
	// check verifies the certificate; nil means it is not verified.
	check func(tls.ConnectionState) (string, error)
	key   string
}

// Name is the policy as the failure texts name it: "verify", "dane",
// "mta-sts enforce".
func (r *Requirement) Name() string {
	if r.STSMode != "" {
		return r.Policy + " " + string(r.STSMode)
	}
	return r.Policy
}

// Verifies reports whether the certificate is checked.
func (r *Requirement) Verifies() bool { return r.check != nil }

// Enforced reports whether a failed check stops delivery (false for an
// MTA-STS testing policy, which only reports).
func (r *Requirement) Enforced() bool { return r.Required }

// Key identifies the check: a session verified for one key serves a later
// attempt with the same key.
func (r *Requirement) Key() string { return r.key }

// Failure is a certificate or TLS failure under a policy.
type Failure struct {
	// Text is the precise message: "<policy>: <host> <cause>".
	Text string
	// Cause is the text without the policy: "<host> <cause>", or the
	// DANE mismatch ("TLSA mismatch for <host> (...)").
	Cause string
	// Err is the verification error, if any.
	Err error
}

func (f *Failure) Error() string { return f.Text }
func (f *Failure) Unwrap() error { return f.Err }

// Check verifies the TLS connection's certificate and returns how it was
// verified ("webpki", "dane-ee", "dane-ta"); a Requirement without
// verification returns "" and nil. The error is a *Failure.
func (r *Requirement) Check(cs tls.ConnectionState) (string, error) {
	if r.check == nil {
		return "", nil
	}
	return r.check(cs)
}

// Host returns the requirement for MX host (the name the MX record gives)
// at port.
func (d *Decision) Host(ctx context.Context, host string, port int) *Requirement {
	r := d.host(ctx, host, port)
	r.Domain = d.Domain
	return r
}

func (d *Decision) host(ctx context.Context, host string, port int) *Requirement {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	switch d.Mode {
	case ModeNone:
		return &Requirement{Policy: "none", Host: host}
	case ModeEncrypt:
		return &Requirement{Policy: "encrypt", Host: host, StartTLS: true, Required: true}
	case ModeVerify:
		r := &Requirement{Policy: "verify", Host: host, StartTLS: true, Required: true}
		r.check, r.key = d.e.webPKI(r), "webpki "+host
		return r
	case ModeDANE:
		if r, note := d.dane(ctx, host, port); r != nil {
			return r
		} else if !d.static {
			r := d.sts(ctx, host)
			r.Note = join(note, r.Note)
			return r
		} else {
			return &Requirement{Policy: "may", Host: host, StartTLS: true, Note: note}
		}
	case ModeMTASTS:
		if !d.static {
			return d.sts(ctx, host)
		}
	}
	return &Requirement{Policy: "may", Host: host, StartTLS: true}
}

func join(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// dane returns the DANE requirement of host, or nil and why DANE does not
// apply to it (RFC 7672 §2.2).
func (d *Decision) dane(ctx context.Context, host string, port int) (*Requirement, string) {
	r := &Requirement{Policy: "dane", Host: host, StartTLS: true, Required: true}
	if !d.static {
		if d.mxErr != nil {
			// A validating resolver answers SERVFAIL for a bogus answer:
			// exactly what an attacker stripping DANE would cause.
			r.Refused = fmt.Sprintf("dane: %v on the validating resolver", d.mxErr)
			return r, ""
		}
		if !d.mxSecure {
			return nil, fmt.Sprintf("dane: MX records of %s are not DNSSEC-validated, DANE does not apply", d.Domain)
		}
	}
	t, err := d.e.res.tlsa(ctx, host, port)
	if err != nil {
		// RFC 7672 §2.2: a TLSA lookup that fails other than by a
		// (secure or insecure) denial makes the host unusable.
		r.Refused = "dane: " + err.Error()
		return r, ""
	}
	name := t.where()
	switch {
	case len(t.records) == 0 && t.bad == 0:
		return nil, fmt.Sprintf("dane: no TLSA records at %s", name)
	case !t.secure:
		return nil, fmt.Sprintf("dane: TLSA records at %s are not DNSSEC-validated (no AD bit), ignored", name)
	}
	usable := dane.Usable(t.records)
	if len(usable) == 0 {
		// RFC 7672 §2.2: TLSA records but none usable: TLS is still
		// mandatory, without authentication.
		r.Note = fmt.Sprintf("dane: no usable TLSA record at %s, TLS without authentication", name)
		return r, ""
	}
	var keys []string
	for _, u := range usable {
		keys = append(keys, u.String())
	}
	r.key = "dane " + host + " " + strings.Join(keys, ",")
	r.PolicyString = keys
	r.check = func(cs tls.ConnectionState) (string, error) {
		m, err := dane.Verify(usable, cs.PeerCertificates, host, d.e.now())
		if err != nil && t.expanded != "" {
			// Records found under the MX host's expanded name: a
			// certificate for that name passes DANE-TA too.
			if m2, err2 := dane.Verify(usable, cs.PeerCertificates, t.expanded, d.e.now()); err2 == nil {
				m, err = m2, nil
			}
		}
		if err != nil {
			return "", &Failure{Text: "dane: " + err.Error(), Cause: err.Error(), Err: err}
		}
		if m.Record.Usage == dane.UsageDANETA {
			return "dane-ta", nil
		}
		return "dane-ee", nil
	}
	return r, ""
}

// sts returns the MTA-STS requirement of host, or may when the domain has
// no policy in force.
func (d *Decision) sts(ctx context.Context, host string) *Requirement {
	p, note := d.STS(ctx)
	if p == nil {
		return &Requirement{Policy: "may", Host: host, StartTLS: true, Note: "mta-sts: " + note}
	}
	r := &Requirement{Policy: "mta-sts", STSMode: p.Mode, Host: host, StartTLS: true, Note: "mta-sts: " + note}
	r.PolicyString = append([]string{"version: STSv1", "mode: " + string(p.Mode)}, prefixed("mx: ", p.MX)...)
	r.PolicyString = append(r.PolicyString, fmt.Sprintf("max_age: %d", p.MaxAge))
	r.MXPatterns = p.MX
	r.check, r.key = d.e.webPKI(r), "webpki "+host
	if p.Mode == mtasts.Enforce {
		r.Required = true
	}
	if !p.Matches(host) {
		why := fmt.Sprintf("mta-sts %s: MX host %s does not match the policy of %s (mx: %s)", p.Mode, host, d.Domain, strings.Join(p.MX, ", "))
		if p.Mode == mtasts.Enforce {
			r.Refused = why
		} else {
			r.Reported = why
		}
	}
	return r
}

// webPKI verifies the certificate chain to the roots, valid now for the
// requirement's host (RFC 8461 §4.2; Postfix's verify).
func (e *Engine) webPKI(r *Requirement) func(tls.ConnectionState) (string, error) {
	return webPKI(r, e.roots, e.now)
}

// webPKI verifies against roots (nil: the system roots) at now().
func webPKI(r *Requirement, roots *x509.CertPool, now func() time.Time) func(tls.ConnectionState) (string, error) {
	return func(cs tls.ConnectionState) (string, error) {
		if len(cs.PeerCertificates) == 0 {
			cause := r.Host + " sent no certificate"
			return "", &Failure{Text: r.Name() + ": " + cause, Cause: cause}
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		t := now()
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: r.Host, Roots: roots, Intermediates: inter, CurrentTime: t})
		if err != nil {
			cause := r.Host + " " + certCause(err, leaf, t)
			return "", &Failure{Text: r.Name() + ": " + cause, Cause: cause, Err: err}
		}
		return "webpki", nil
	}
}

// RequireTLS returns the requirement of r's host for a message sent with
// REQUIRETLS (RFC 8689 §4.2.1): STARTTLS required, and the certificate
// verified by the policy's own check (DANE, or webpki under verify and
// MTA-STS, a testing policy's included) or else by webpki against the MX
// host name, whatever r alone would accept (none, may, encrypt, TLSA
// records none of which is usable). A host r refuses stays refused.
//
// The MX host name itself must be trustworthy, or a forged MX record
// would lead to an attacker's server with a valid certificate for its own
// name: the domain's MX answer must be DNSSEC-validated (the AD bit of
// the validating resolver), or the host must match the domain's MTA-STS
// policy (§4.2.1 step 1). Otherwise the host is refused, for good
// (NotSecure), naming why. A configured route (static) is trusted as
// configured.
func (d *Decision) RequireTLS(ctx context.Context, r *Requirement) *Requirement {
	u := requireTLS(r, d.e.roots, d.e.now)
	if u.Refused != "" || d.static {
		return u
	}
	if u.Policy == "mta-sts" && u.Reported == "" {
		return u // the host matches the policy's mx patterns
	}
	if u.Policy == "dane" {
		return u // DANE applies only under a validated MX answer
	}
	d.mxOnce.Do(func() {
		if d.Mode != ModeDANE {
			d.mxSecure, d.mxErr = d.e.res.mxSecure(ctx, d.Domain)
		}
	})
	if d.mxErr == nil && !d.mxSecure && u.Policy != "mta-sts" {
		// Whatever the mode, the domain's MTA-STS policy can vouch for
		// the host.
		if p, _ := d.STS(ctx); p != nil && p.Matches(u.Host) {
			return u
		}
	}
	switch {
	case d.mxErr != nil:
		u.Refused = fmt.Sprintf("REQUIRETLS: the MX records of %s could not be validated: %v", d.Domain, d.mxErr)
	case !d.mxSecure:
		u.Refused = fmt.Sprintf("REQUIRETLS support required: the MX records of %s are not DNSSEC-validated and no MTA-STS policy lists %s",
			d.Domain, u.Host)
		u.NotSecure = true
	}
	return u
}

// RequireTLS is Decision.RequireTLS without a policy engine: webpki
// against the system roots.
func RequireTLS(r *Requirement) *Requirement { return requireTLS(r, nil, time.Now) }

func requireTLS(r *Requirement, roots *x509.CertPool, now func() time.Time) *Requirement {
	u := *r
	u.RequireTLS, u.StartTLS, u.Required = true, true, true
	if u.check == nil {
		u.check, u.key = webPKI(&u, roots, now), "webpki "+u.Host
	}
	return &u
}

// certCause says in a few words why a certificate did not verify.
func certCause(err error, leaf *x509.Certificate, now time.Time) string {
	var inv x509.CertificateInvalidError
	var host x509.HostnameError
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		c := inv.Cert
		what := "certificate"
		if c != nil && c != leaf {
			what = "certificate of its issuer " + c.Subject.CommonName
		}
		if c != nil && now.Before(c.NotBefore) {
			return what + " not yet valid"
		}
		return what + " expired"
	case errors.As(err, &host):
		names := leaf.DNSNames
		if len(names) == 0 {
			names = []string{leaf.Subject.CommonName}
		}
		return "certificate name mismatch (the certificate is for " + strings.Join(names, ", ") + ")"
	case errors.As(err, &unknown):
		if bytes.Equal(leaf.RawIssuer, leaf.RawSubject) && leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil {
			return "self-signed certificate"
		}
		return "certificate signed by an unknown authority (" + leaf.Issuer.String() + ")"
	}
	return strings.TrimPrefix(err.Error(), "x509: ")
}
