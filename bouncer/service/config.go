package service

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

// Settings is the `bouncer` section of the configuration file.
type Settings struct {
	// Hostname names this MTA in every DSN: the Reporting-MTA field, the
	// MAILER-DAEMON address and the Received field. main defaults it to the
	// operating system's host name.
	Hostname string `yaml:"hostname" env:"SLUICE_BOUNCER_HOSTNAME"`
	// Postmaster, when set, is named in each DSN's explanation as the
	// address to write to for help. It receives no copies.
	Postmaster string `yaml:"postmaster" env:"SLUICE_BOUNCER_POSTMASTER"`
	// NotifyDelayByDefault sends "delayed" DSNs to recipients given without
	// a NOTIFY parameter (RFC 3461 §4.1 leaves this to the MTA; see
	// notify.Policy). Default true.
	NotifyDelayByDefault bool `yaml:"notify_delay_by_default" env:"SLUICE_BOUNCER_NOTIFY_DELAY_BY_DEFAULT"`
	// TLSReports sends the daily TLS aggregate reports of RFC 8460.
	TLSReports TLSReports `yaml:"tls_reports"`

	config.Telemetry `yaml:",inline"`
}

// TLSReports is bouncer.tls_reports: the daily TLS-RPT reports (RFC 8460)
// built from the TLS sessions every deliverer counts, sent to the rua URIs
// of each policy domain's _smtp._tls record: by mail to the mailto
// addresses, by HTTPS POST to the https URLs (see package tlsrpt). Off by
// default: a report names this organisation to the receiving domains.
type TLSReports struct {
	Enabled bool `yaml:"enabled" env:"SLUICE_BOUNCER_TLS_REPORTS_ENABLED"`
	// Organization is the report's organization-name.
	Organization string `yaml:"organization" env:"SLUICE_BOUNCER_TLS_REPORTS_ORGANIZATION"`
	// Contact is the report's contact-info: an address or a URL.
	Contact string `yaml:"contact" env:"SLUICE_BOUNCER_TLS_REPORTS_CONTACT"`
	// Submitter is the domain that submits the reports
	// (TLS-Report-Submitter); "" is the hostname's parent domain.
	Submitter string `yaml:"submitter" env:"SLUICE_BOUNCER_TLS_REPORTS_SUBMITTER"`
	// From is the reports' From address; "" is tls-reports@<submitter>.
	From string `yaml:"from" env:"SLUICE_BOUNCER_TLS_REPORTS_FROM"`
	// DNSServer (host:port) answers the _smtp._tls TXT lookups; "" is the
	// system's resolver.
	DNSServer string `yaml:"dns_server" env:"SLUICE_BOUNCER_TLS_REPORTS_DNS_SERVER"`
	// Interval is how often a finished day is looked at (default 1h; each
	// report is sent once whatever the number of instances).
	Interval time.Duration `yaml:"interval" env:"SLUICE_BOUNCER_TLS_REPORTS_INTERVAL"`
}

// SubmitterDomain is Submitter, or the parent domain of hostname.
func (t TLSReports) SubmitterDomain(hostname string) string {
	if t.Submitter != "" {
		return t.Submitter
	}
	if _, parent, ok := strings.Cut(hostname, "."); ok && strings.Contains(parent, ".") {
		return parent
	}
	return hostname
}

// Validate reports the first bad field, by its YAML path.
func (t TLSReports) Validate() error {
	if !t.Enabled {
		return nil
	}
	if strings.TrimSpace(t.Organization) == "" {
		return errors.New("bouncer.tls_reports.organization: must be set when tls_reports.enabled (the organization-name of each report)")
	}
	if strings.TrimSpace(t.Contact) == "" {
		return errors.New("bouncer.tls_reports.contact: must be set when tls_reports.enabled (an address or URL for the receivers)")
	}
	if strings.ContainsAny(t.Organization+t.Contact, "\r\n") {
		return errors.New("bouncer.tls_reports: organization and contact must be one line each")
	}
	if t.Submitter != "" && !isDomain(t.Submitter) {
		return fmt.Errorf("bouncer.tls_reports.submitter: %q is not a domain name", t.Submitter)
	}
	if t.From != "" {
		local, domain, ok := strings.Cut(t.From, "@")
		if !ok || local == "" || !isDomain(domain) || strings.ContainsAny(local, " \t\r\n<>@") {
			return fmt.Errorf("bouncer.tls_reports.from: %q: want an address like tls-reports@example.com", t.From)
		}
	}
	if t.DNSServer != "" {
		if _, _, err := net.SplitHostPort(t.DNSServer); err != nil {
			return fmt.Errorf("bouncer.tls_reports.dns_server: %q: want host:port", t.DNSServer)
		}
	}
	if t.Interval < 0 || t.Interval > 0 && t.Interval < time.Second {
		return fmt.Errorf("bouncer.tls_reports.interval: %s: want at least 1s", t.Interval)
	}
	return nil
}

// Config is everything sluice-bouncer reads from the shared file.
type Config struct {
	NATS    config.NATS  `yaml:"nats"`
	Queue   config.Queue `yaml:"queue"`
	Bouncer Settings     `yaml:"bouncer"`
}

// Default returns the defaults. Hostname stays empty: main fills in the
// operating system's host name, which library code does not look up.
func Default() Config {
	return Config{
		NATS:  config.DefaultNATS(),
		Queue: config.DefaultQueue(),
		Bouncer: Settings{
			NotifyDelayByDefault: true,
			Telemetry:            config.Telemetry{MetricsListen: "127.0.0.1:9104", LogLevel: "info"},
		},
	}
}

// Validate implements config.Validator.
func (c Config) Validate() error {
	if err := c.NATS.Validate(); err != nil {
		return err
	}
	if err := c.Queue.Validate(); err != nil {
		return err
	}
	return c.Bouncer.Validate()
}

// Validate reports the first bad field of the section by its YAML path.
func (s Settings) Validate() error {
	if s.Hostname == "" {
		return errors.New("bouncer.hostname: must not be empty")
	}
	if !isDomain(s.Hostname) {
		return fmt.Errorf("bouncer.hostname: %q is not a domain name", s.Hostname)
	}
	if s.Postmaster != "" {
		local, domain, ok := strings.Cut(s.Postmaster, "@")
		if !ok || local == "" || !isDomain(domain) || strings.ContainsAny(local, " \t\r\n<>@") {
			return fmt.Errorf("bouncer.postmaster: %q: want an address like postmaster@example.com", s.Postmaster)
		}
	}
	if err := s.TLSReports.Validate(); err != nil {
		return err
	}
	if err := s.Telemetry.Validate(); err != nil {
		return fmt.Errorf("bouncer.%w", err)
	}
	return nil
}

// isDomain accepts a dot-separated host name of letters, digits, hyphens
// and underscores (RFC 1035 §2.3.1, loosened for names seen in practice).
func isDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
