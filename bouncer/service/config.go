package service

import (
	"errors"
	"fmt"
	"strings"

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

	config.Telemetry `yaml:",inline"`
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
