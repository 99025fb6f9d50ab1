// Package ingress holds the configuration of Sluice's SMTP ingress: the
// service's view of the one system-wide YAML file (the shared nats and queue
// sections plus its own ingress section), its defaults and its validation.
// The work itself is done by the packages below it: smtpd speaks SMTP, relay
// decides who may send where, received writes the trace header, address
// checks envelope addresses, and store makes an accepted transaction durable
// in JetStream.
package ingress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

// Config is everything sluice-ingress reads from the configuration file.
type Config struct {
	NATS    config.NATS  `yaml:"nats"`
	Queue   config.Queue `yaml:"queue"`
	Ingress Settings     `yaml:"ingress"`
}

// Settings is the ingress section.
type Settings struct {
	// Listen is the SMTP listener's host:port.
	Listen string `yaml:"listen" env:"SLUICE_INGRESS_LISTEN"`
	// Hostname is the name the server greets with and writes into the
	// Received header's "by" clause (RFC 5321 §4.4).
	Hostname string `yaml:"hostname" env:"SLUICE_INGRESS_HOSTNAME"`
	// TrustedNetworks are the CIDRs whose clients may relay to any domain.
	TrustedNetworks []string `yaml:"trusted_networks" env:"SLUICE_INGRESS_TRUSTED_NETWORKS"`
	// MaxMessageBytes is the largest message accepted (the SIZE extension's
	// limit, RFC 1870), counted as the client sent it.
	MaxMessageBytes int64 `yaml:"max_message_bytes" env:"SLUICE_INGRESS_MAX_MESSAGE_BYTES"`
	// MaxRecipients is the largest number of RCPT TO per transaction.
	MaxRecipients int `yaml:"max_recipients" env:"SLUICE_INGRESS_MAX_RECIPIENTS"`
	// ReadTimeout and WriteTimeout bound every read of a command or data
	// and every write of a reply, so a slow or silent client cannot hold a
	// session forever. RFC 5321 §4.5.3.2 suggests minutes; we default to 5.
	ReadTimeout  time.Duration `yaml:"read_timeout" env:"SLUICE_INGRESS_READ_TIMEOUT"`
	WriteTimeout time.Duration `yaml:"write_timeout" env:"SLUICE_INGRESS_WRITE_TIMEOUT"`
	// MaxLineLength is the longest command or text line, CRLF included.
	// RFC 5321 §4.5.3.1.6 sets 1000 octets; the default of 2000 tolerates
	// clients that overshoot, as go-smtp does.
	MaxLineLength int `yaml:"max_line_length" env:"SLUICE_INGRESS_MAX_LINE_LENGTH"`
	// ShutdownGrace is how long a stopping server lets transactions in
	// progress finish before it closes their connections.
	ShutdownGrace time.Duration `yaml:"shutdown_grace" env:"SLUICE_INGRESS_SHUTDOWN_GRACE"`

	config.Telemetry `yaml:",inline"`
}

// Default returns the configuration used when the file says nothing.
func Default() Config {
	return Config{NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), Ingress: DefaultSettings()}
}

// DefaultSettings returns the ingress section's defaults. The host name
// defaults to the machine's name.
func DefaultSettings() Settings {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return Settings{
		Listen:          "127.0.0.1:2525",
		Hostname:        host,
		TrustedNetworks: []string{"127.0.0.0/8", "::1/128"},
		MaxMessageBytes: 50 << 20,
		MaxRecipients:   1000,
		ReadTimeout:     5 * time.Minute,
		WriteTimeout:    5 * time.Minute,
		MaxLineLength:   2000,
		ShutdownGrace:   5 * time.Second,
		Telemetry:       config.Telemetry{MetricsListen: "127.0.0.1:9101", LogLevel: "info"},
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
	return c.Ingress.Validate()
}

// Validate reports the first invalid field of the ingress section by its
// YAML path.
func (s Settings) Validate() error {
	if _, _, err := net.SplitHostPort(s.Listen); err != nil {
		return fmt.Errorf("ingress.listen: %q: %v", s.Listen, err)
	}
	if strings.TrimSpace(s.Hostname) == "" || strings.ContainsAny(s.Hostname, " \t\r\n()[];") {
		return fmt.Errorf("ingress.hostname: %q is not a host name", s.Hostname)
	}
	if _, err := s.Trusted(); err != nil {
		return err
	}
	if s.MaxMessageBytes <= 0 {
		return errors.New("ingress.max_message_bytes: must be positive")
	}
	// go-smtp parses SIZE= as a 32-bit number, so a larger limit could
	// never be announced correctly.
	if s.MaxMessageBytes > 1<<32-1 {
		return fmt.Errorf("ingress.max_message_bytes: %d, want at most 4294967295", s.MaxMessageBytes)
	}
	if s.MaxRecipients <= 0 {
		return errors.New("ingress.max_recipients: must be positive")
	}
	if s.ReadTimeout <= 0 {
		return errors.New("ingress.read_timeout: must be positive")
	}
	if s.WriteTimeout <= 0 {
		return errors.New("ingress.write_timeout: must be positive")
	}
	// RFC 5321 §4.5.3.1.4 and §4.5.3.1.6: 512 octets for a command line and
	// 1000 for a text line are minimums every server must accept.
	if s.MaxLineLength < 1000 {
		return fmt.Errorf("ingress.max_line_length: %d, want at least 1000 (RFC 5321 §4.5.3.1.6)", s.MaxLineLength)
	}
	if s.ShutdownGrace < 0 {
		return errors.New("ingress.shutdown_grace: must not be negative")
	}
	if err := s.Telemetry.Validate(); err != nil {
		return fmt.Errorf("ingress.%w", err)
	}
	return nil
}

// Trusted parses TrustedNetworks.
func (s Settings) Trusted() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(s.TrustedNetworks))
	for i, n := range s.TrustedNetworks {
		p, err := netip.ParsePrefix(strings.TrimSpace(n))
		if err != nil {
			return nil, fmt.Errorf("ingress.trusted_networks[%d]: %q is not a CIDR prefix: %v", i, n, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("ingress.trusted_networks[%d]: %q has host bits set; did you mean %s?", i, n, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}
