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
//
// The ingress has up to three listeners. Listen is the port-25 service
// (relay for TrustedNetworks and inbound MX for MX.AcceptedDomains, told
// apart per recipient, as Postfix's smtpd does); Submission.Listen (587,
// STARTTLS) and Submission.ListenTLS (465, implicit TLS) serve
// authenticated users only. An empty address disables a listener.
type Settings struct {
	// Listen is the host:port of the relay and MX listener; "" disables it.
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

	// TLS is the server certificate. With it the relay/MX listener offers
	// STARTTLS; the submission listeners require it.
	TLS TLSFiles `yaml:"tls"`
	// Submission configures authenticated submission (RFC 6409, RFC 8314).
	Submission Submission `yaml:"submission"`
	// MX configures the domains the ingress is the inbound MX for.
	MX MX `yaml:"mx"`
	// ReloadInterval is how often the credentials and recipients files are
	// checked for changes (modification time and size) and re-read; 0 turns
	// polling off, leaving SIGHUP as the only way to reload them.
	ReloadInterval time.Duration `yaml:"reload_interval" env:"SLUICE_INGRESS_RELOAD_INTERVAL"`

	// Defences against abusive clients (package guard) and inbound
	// authentication (package authres). With the guard, ReadTimeout is the
	// time each complete line may take, however slowly it trickles in
	// (Postfix's smtpd_per_record_deadline), not only each read.

	// DataTimeout is the time a client has for a message's content, from
	// the 354 reply (or the first BDAT) to its end.
	DataTimeout time.Duration `yaml:"data_timeout" env:"SLUICE_INGRESS_DATA_TIMEOUT"`
	// MaxHeaderBytes is the largest header section a message may have;
	// a larger one is refused with 552 5.3.4.
	MaxHeaderBytes int64 `yaml:"max_header_bytes" env:"SLUICE_INGRESS_MAX_HEADER_BYTES"`
	// MaxConnections is the number of connections open at once on each
	// listener; 0 means no limit. Over it, 421 4.7.0.
	MaxConnections int `yaml:"max_connections" env:"SLUICE_INGRESS_MAX_CONNECTIONS"`
	// MaxConnectionsPerClient is the number of connections open at once
	// from one IP address on each listener; 0 means no limit. Trusted
	// networks are exempt, as Postfix exempts $mynetworks.
	MaxConnectionsPerClient int `yaml:"max_connections_per_client" env:"SLUICE_INGRESS_MAX_CONNECTIONS_PER_CLIENT"`
	// MaxErrors is the number of 5xx replies after which a session is
	// closed with 421 4.7.0 (Postfix's smtpd_hard_error_limit); 0 means no
	// limit.
	MaxErrors int `yaml:"max_errors" env:"SLUICE_INGRESS_MAX_ERRORS"`
	// MaxCommandsWithoutMail is the number of commands other than MAIL,
	// RCPT, DATA, BDAT and QUIT (NOOP, RSET, VRFY, EHLO, ...) a session may
	// send before a MAIL is accepted, counted again after each; then 421
	// 4.7.0 (Postfix's smtpd_junk_command_limit). 0 means no limit.
	MaxCommandsWithoutMail int `yaml:"max_commands_without_mail" env:"SLUICE_INGRESS_MAX_COMMANDS_WITHOUT_MAIL"`
	// DNSServer is the resolver (host:port) for SPF, DKIM and DMARC checks
	// of inbound MX mail; "" uses the system's resolver.
	DNSServer string `yaml:"dns_server" env:"SLUICE_INGRESS_DNS_SERVER"`
	// DMARCReject refuses inbound MX mail at DATA (550 5.7.1) when it fails
	// DMARC and the sender's domain publishes p=reject; otherwise such mail
	// is accepted and the result recorded in Authentication-Results.
	DMARCReject bool `yaml:"dmarc_reject" env:"SLUICE_INGRESS_DMARC_REJECT"`
	// StoreTimeout is how long the ingress tries to store a message at the
	// end of DATA before it answers 451 4.3.0: a write JetStream does not
	// acknowledge (a leader election, a timeout, NATS reconnecting) is sent
	// again with the same message id, which JetStream stores once. The
	// client waits meanwhile (RFC 5321 gives it 10 minutes for this reply).
	StoreTimeout time.Duration `yaml:"store_timeout" env:"SLUICE_INGRESS_STORE_TIMEOUT"`
	// InflowBacklog and InflowDelay slow clients down when delivery falls
	// behind (package inflow, Postfix's in_flow_delay): while more than
	// InflowBacklog messages and ready jobs wait for a scheduler or a
	// deliverer, a MAIL FROM waits until the backlog falls or InflowDelay
	// has passed, and is then answered as usual. 0 in either turns it off.
	InflowBacklog int           `yaml:"inflow_backlog" env:"SLUICE_INGRESS_INFLOW_BACKLOG"`
	InflowDelay   time.Duration `yaml:"inflow_delay" env:"SLUICE_INGRESS_INFLOW_DELAY"`

	config.Telemetry `yaml:",inline"`
}

// TLSFiles names a PEM certificate chain and its private key.
type TLSFiles struct {
	CertFile string `yaml:"cert_file" env:"SLUICE_INGRESS_TLS_CERT_FILE"`
	KeyFile  string `yaml:"key_file" env:"SLUICE_INGRESS_TLS_KEY_FILE"`
}

// Enabled reports whether a certificate is configured.
func (t TLSFiles) Enabled() bool { return t.CertFile != "" }

// Submission is the message submission service.
type Submission struct {
	// Listen is the STARTTLS submission listener (port 587); "" disables it.
	Listen string `yaml:"listen" env:"SLUICE_INGRESS_SUBMISSION_LISTEN"`
	// ListenTLS is the implicit-TLS submission listener (port 465, RFC 8314
	// "submissions"); "" disables it.
	ListenTLS string `yaml:"listen_tls" env:"SLUICE_INGRESS_SUBMISSION_LISTEN_TLS"`
	// CredentialsFile holds the users, one "name:bcrypt-hash[:domains]" per
	// line (see package auth).
	CredentialsFile string `yaml:"credentials_file" env:"SLUICE_INGRESS_SUBMISSION_CREDENTIALS_FILE"`
}

// Enabled reports whether a submission listener is configured.
func (s Submission) Enabled() bool { return s.Listen != "" || s.ListenTLS != "" }

// MX is the inbound mail exchanger service for our own domains.
type MX struct {
	// AcceptedDomains are accepted from any client. The deliverer's static
	// routes send them on to the internal host (domain -> host:port).
	AcceptedDomains []string `yaml:"accepted_domains" env:"SLUICE_INGRESS_MX_ACCEPTED_DOMAINS"`
	// RecipientsFile lists the existing recipients of AcceptedDomains (see
	// package recipients); others get 550 5.1.1 at RCPT time. Without it
	// every local part is accepted, and an unknown one bounces later.
	RecipientsFile string `yaml:"recipients_file" env:"SLUICE_INGRESS_MX_RECIPIENTS_FILE"`
	// RecipientDelimiter separates a subaddress ("+" makes alice+tag match
	// alice); "" turns subaddressing off.
	RecipientDelimiter string `yaml:"recipient_delimiter" env:"SLUICE_INGRESS_MX_RECIPIENT_DELIMITER"`
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
		ReloadInterval:  10 * time.Second,
		Telemetry:       config.Telemetry{MetricsListen: "127.0.0.1:9101", LogLevel: "info"},

		// Guard limits (see the fields for their Postfix counterparts).
		DataTimeout:             10 * time.Minute,
		StoreTimeout:            30 * time.Second,
		InflowBacklog:           1000,
		InflowDelay:             time.Second,
		MaxHeaderBytes:          256 << 10,
		MaxConnections:          1000,
		MaxConnectionsPerClient: 20,
		MaxErrors:               20,
		MaxCommandsWithoutMail:  20,
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
	for _, l := range []struct{ field, addr string }{
		{"ingress.listen", s.Listen},
		{"ingress.submission.listen", s.Submission.Listen},
		{"ingress.submission.listen_tls", s.Submission.ListenTLS},
	} {
		if l.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return fmt.Errorf("%s: %q: %v", l.field, l.addr, err)
		}
	}
	if s.Listen == "" && !s.Submission.Enabled() {
		return errors.New("ingress.listen: empty, and no submission listener either: nothing to serve")
	}
	if (s.TLS.CertFile == "") != (s.TLS.KeyFile == "") {
		return errors.New("ingress.tls.cert_file and ingress.tls.key_file: give both or neither")
	}
	if s.Submission.Enabled() {
		// RFC 8314 §3 and RFC 4954 §4: passwords only travel encrypted.
		if !s.TLS.Enabled() {
			return errors.New("ingress.tls.cert_file: required by the submission listeners (AUTH only over TLS)")
		}
		if s.Submission.CredentialsFile == "" {
			return errors.New("ingress.submission.credentials_file: required by the submission listeners")
		}
	}
	for i, d := range s.MX.AcceptedDomains {
		d = strings.TrimSuffix(strings.TrimSpace(d), ".")
		if d == "" || strings.ContainsAny(d, " \t@[]") || !strings.Contains(d, ".") {
			return fmt.Errorf("ingress.mx.accepted_domains[%d]: %q is not a fully qualified domain", i, s.MX.AcceptedDomains[i])
		}
	}
	if s.MX.RecipientsFile != "" && len(s.MX.AcceptedDomains) == 0 {
		return errors.New("ingress.mx.recipients_file: set, but ingress.mx.accepted_domains is empty")
	}
	if strings.ContainsAny(s.MX.RecipientDelimiter, "@ \t") || len(s.MX.RecipientDelimiter) > 1 {
		return fmt.Errorf("ingress.mx.recipient_delimiter: %q, want one character other than @", s.MX.RecipientDelimiter)
	}
	if s.ReloadInterval < 0 {
		return errors.New("ingress.reload_interval: must not be negative")
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
	if err := s.validateGuard(); err != nil {
		return err
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

// validateGuard checks the guard and authentication settings.
func (s Settings) validateGuard() error {
	if s.DataTimeout <= 0 {
		return errors.New("ingress.data_timeout: must be positive")
	}
	if s.StoreTimeout < 0 || s.StoreTimeout > 5*time.Minute {
		return fmt.Errorf("ingress.store_timeout: %s, want 0 (one try) to 5m (clients wait at most 10 minutes for the reply to DATA)", s.StoreTimeout)
	}
	if s.MaxHeaderBytes <= 0 {
		return errors.New("ingress.max_header_bytes: must be positive")
	}
	if s.InflowBacklog < 0 {
		return fmt.Errorf("ingress.inflow_backlog: %d, want 0 (off) or more", s.InflowBacklog)
	}
	if s.InflowDelay < 0 || s.InflowDelay > time.Minute {
		return fmt.Errorf("ingress.inflow_delay: %s, want 0 (off) to 1m (the wait is at every MAIL FROM while delivery is behind)", s.InflowDelay)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"ingress.max_connections", s.MaxConnections},
		{"ingress.max_connections_per_client", s.MaxConnectionsPerClient},
		{"ingress.max_errors", s.MaxErrors},
		{"ingress.max_commands_without_mail", s.MaxCommandsWithoutMail},
	} {
		if f.v < 0 {
			return fmt.Errorf("%s: %d, want 0 (no limit) or more", f.name, f.v)
		}
	}
	if s.MaxConnections > 0 && s.MaxConnectionsPerClient > s.MaxConnections {
		return fmt.Errorf("ingress.max_connections_per_client: %d is more than max_connections (%d)", s.MaxConnectionsPerClient, s.MaxConnections)
	}
	if s.DNSServer != "" {
		if _, port, err := net.SplitHostPort(s.DNSServer); err != nil || port == "" {
			return fmt.Errorf("ingress.dns_server: %q, want host:port (for example 127.0.0.1:53)", s.DNSServer)
		}
	}
	return nil
}
