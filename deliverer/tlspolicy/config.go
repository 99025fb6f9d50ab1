package tlspolicy

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// Mode is a destination's TLS security level, named as in Postfix's
// smtp_tls_policy_maps.
type Mode string

const (
	// ModeNone sends in clear text, even to a server that offers STARTTLS.
	ModeNone Mode = "none"
	// ModeMay uses STARTTLS when offered, without verifying the
	// certificate, and clear text otherwise (opportunistic TLS, RFC 7435).
	ModeMay Mode = "may"
	// ModeEncrypt requires TLS, without verifying the certificate.
	ModeEncrypt Mode = "encrypt"
	// ModeVerify requires TLS with a certificate valid now for the MX
	// host name, issued by a system root or the configured CA file.
	ModeVerify Mode = "verify"
	// ModeDANE applies the TLSA records of MX hosts whose MX and TLSA
	// answers are DNSSEC-validated (RFC 7672); a host without them gets the
	// domain's MTA-STS policy (DANE first, RFC 8461 §2), else may.
	ModeDANE Mode = "dane"
	// ModeMTASTS applies the domain's MTA-STS policy (RFC 8461) where it
	// publishes one, else may. No TLSA lookups.
	ModeMTASTS Mode = "mta-sts"
)

// Modes lists the modes, for messages.
var Modes = []Mode{ModeNone, ModeMay, ModeEncrypt, ModeVerify, ModeDANE, ModeMTASTS}

// Config is the deliverer.tls_policy section.
type Config struct {
	// Default is the mode of every destination without an override.
	Default Mode `yaml:"default"`
	// Domains overrides the mode per recipient domain: an exact domain,
	// or ".example.com" for every subdomain of example.com. The exact key
	// wins, then the longest parent.
	Domains map[string]Mode `yaml:"domains"`
	// CAFile is a PEM file of extra trust anchors for verify and for the
	// HTTPS fetch of MTA-STS policies, added to the system roots (an
	// internal CA for internal relays).
	CAFile string `yaml:"ca_file"`
	// DNSSECServer is the validating resolver (host:port) asked for TLSA
	// and MTA-STS TXT records; its AD bit is trusted, so it must validate
	// and be reached over a trusted path (loopback, as Postfix advises).
	// Empty means deliverer.dns_server.
	DNSSECServer string `yaml:"dnssec_server"`
	// FetchTimeout bounds the HTTPS fetch of an MTA-STS policy.
	FetchTimeout time.Duration `yaml:"mta_sts_fetch_timeout"`
	// Recheck is how long a deliverer keeps the MTA-STS state of a domain
	// (its TXT id and cached policy) in memory before asking DNS and the
	// shared cache again.
	Recheck time.Duration `yaml:"mta_sts_recheck"`
}

// DefaultConfig is today's behaviour everywhere: may.
func DefaultConfig() Config {
	return Config{Default: ModeMay, FetchTimeout: 20 * time.Second, Recheck: 5 * time.Minute}
}

func (m Mode) valid() bool { return slices.Contains(Modes, m) }

func modeList() string {
	s := make([]string, len(Modes))
	for i, m := range Modes {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// Validate reports the first bad field as "deliverer.tls_policy.<field>:
// ...". It reads the CA file, so that a missing one stops the deliverer
// at start.
func (c Config) Validate() error {
	if !c.Default.valid() {
		return fmt.Errorf("deliverer.tls_policy.default: %q, want one of %s", c.Default, modeList())
	}
	for d, m := range c.Domains {
		name := strings.TrimPrefix(d, ".")
		if name == "" || strings.ContainsAny(name, " \t@/:") || strings.Contains(name, "..") {
			return fmt.Errorf("deliverer.tls_policy.domains: %q is not a domain or .parent-domain", d)
		}
		if !m.valid() {
			return fmt.Errorf("deliverer.tls_policy.domains.%s: %q, want one of %s", d, m, modeList())
		}
	}
	if c.DNSSECServer != "" {
		if _, _, err := net.SplitHostPort(c.DNSSECServer); err != nil {
			return fmt.Errorf("deliverer.tls_policy.dnssec_server: %q: %v", c.DNSSECServer, err)
		}
	}
	if c.FetchTimeout <= 0 {
		return fmt.Errorf("deliverer.tls_policy.mta_sts_fetch_timeout: %s, must be positive", c.FetchTimeout)
	}
	if c.Recheck < 0 {
		return fmt.Errorf("deliverer.tls_policy.mta_sts_recheck: %s, must not be negative", c.Recheck)
	}
	if c.CAFile != "" {
		if _, err := loadCAs(c.CAFile); err != nil {
			return fmt.Errorf("deliverer.tls_policy.ca_file: %v", err)
		}
	}
	return nil
}

// ModeFor is the configured mode of a recipient domain.
func (c Config) ModeFor(domain string) Mode {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if m, ok := c.lookup(domain); ok {
		return m
	}
	for d := domain; ; {
		_, parent, ok := strings.Cut(d, ".")
		if !ok {
			break
		}
		if m, ok := c.lookup("." + parent); ok {
			return m
		}
		d = parent
	}
	return c.Default
}

func (c Config) lookup(key string) (Mode, bool) {
	for k, m := range c.Domains {
		if strings.EqualFold(strings.TrimSuffix(k, "."), key) {
			return m, true
		}
	}
	return "", false
}

// loadCAs reads the certificates of a PEM file.
func loadCAs(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New(path + ": no PEM certificate")
	}
	return out, nil
}

// roots is the system pool plus the CA file's certificates.
func roots(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		cas, err := loadCAs(caFile)
		if err != nil {
			return nil, err
		}
		for _, c := range cas {
			pool.AddCert(c)
		}
	}
	return pool, nil
}
