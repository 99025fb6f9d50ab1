package worker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/services/config"
)

// Config is the deliverer's configuration: its own section and the shared
// parts of the one Sluice configuration file.
type Config struct {
	NATS      config.NATS  `yaml:"nats"`
	Queue     config.Queue `yaml:"queue"`
	Deliverer Settings     `yaml:"deliverer"`
}

// Settings is the `deliverer` section.
type Settings struct {
	// Hostname is the name we give in EHLO. main defaults it to the
	// machine's host name; it should have forward-confirmed reverse DNS.
	Hostname string `yaml:"hostname" env:"SLUICE_DELIVERER_HOSTNAME"`
	// Instance names this process in results and logs; main defaults it to
	// "<hostname>-<pid>". It must be unique in the fleet: the deliverer
	// that gets a job handed out again asks the one named in the job's
	// latest attempt whether it still runs it (live.go).
	Instance string `yaml:"instance" env:"SLUICE_DELIVERER_INSTANCE"`
	// DNSServer is the resolver as host:port; empty means the first
	// nameserver of /etc/resolv.conf, which main reads.
	DNSServer string `yaml:"dns_server" env:"SLUICE_DELIVERER_DNS_SERVER"`
	// DNSTimeout bounds each DNS query.
	DNSTimeout time.Duration `yaml:"dns_timeout" env:"SLUICE_DELIVERER_DNS_TIMEOUT"`
	// SMTPPort is the port of MX hosts (25; tests use another).
	SMTPPort int `yaml:"smtp_port" env:"SLUICE_DELIVERER_SMTP_PORT"`
	// Routes maps a domain to "host:port" and overrides its MX records,
	// like a Postfix transport map: exact, case-insensitive domain match.
	Routes map[string]string `yaml:"routes"`
	// Concurrency is how many deliveries this process runs at once.
	Concurrency int `yaml:"concurrency" env:"SLUICE_DELIVERER_CONCURRENCY"`
	// Weights share fetches between the priority classes (see Service).
	Weights Weights `yaml:"weights"`
	// AckWait is how long JetStream waits for an acknowledgement before it
	// hands a job to another deliverer; running deliveries send progress
	// every third of it. A dead deliverer's jobs wait this long for
	// another. A job handed out again while its delivery still runs
	// (progress lost during a stream leader election) is not attempted a
	// second time: the deliverer running it is asked first (live.go).
	AckWait time.Duration `yaml:"ack_wait" env:"SLUICE_DELIVERER_ACK_WAIT"`
	// MaxStrikes is how many times the delivery of one attempt of a job may
	// be started and never finished (the deliverer crashed, was killed, or
	// could not store the outcome) before the job fails for good with the
	// reason, and bounces (see poison.go).
	MaxStrikes int `yaml:"max_strikes" env:"SLUICE_DELIVERER_MAX_STRIKES"`
	// ConnectTimeout bounds each TCP connection to a remote server.
	ConnectTimeout time.Duration `yaml:"connect_timeout" env:"SLUICE_DELIVERER_CONNECT_TIMEOUT"`
	// CommandTimeout bounds the greeting and every command's reply (RFC
	// 5321 §4.5.3.2).
	CommandTimeout time.Duration `yaml:"command_timeout" env:"SLUICE_DELIVERER_COMMAND_TIMEOUT"`
	// DataTimeout bounds the wait for the reply to the end of the message.
	DataTimeout time.Duration `yaml:"data_timeout" env:"SLUICE_DELIVERER_DATA_TIMEOUT"`
	// ConnectionCacheTime keeps a session open this long after a delivery
	// for the next job to the same domain (Postfix's
	// smtp_connection_cache_time_limit); 0 closes every session after use.
	ConnectionCacheTime time.Duration `yaml:"connection_cache_time" env:"SLUICE_DELIVERER_CONNECTION_CACHE_TIME"`
	// ConnectionReuseLimit is the most transactions one session carries
	// (Postfix's smtp_connection_reuse_count_limit).
	ConnectionReuseLimit int `yaml:"connection_reuse_limit" env:"SLUICE_DELIVERER_CONNECTION_REUSE_LIMIT"`
	// Shaping limits what the whole fleet of deliverers does to each
	// receiving site: connections, slow start, suspensions (see package
	// shaping and the README's "Traffic shaping").
	Shaping shaping.Config `yaml:"shaping"`
	// TLSPolicy is the TLS security level of each destination: none, may
	// (the default), encrypt, verify, dane or mta-sts, with per-domain
	// overrides (see package tlspolicy and the README's "Outbound TLS").
	TLSPolicy tlspolicy.Config `yaml:"tls_policy"`
	// ShutdownTimeout is how long a stopping deliverer lets running
	// deliveries finish before it interrupts them and hands their jobs back.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" env:"SLUICE_DELIVERER_SHUTDOWN_TIMEOUT"`

	// EgressIPs are the addresses this deliverer's mail leaves from, as
	// receivers see them (after NAT). The doctor checks their reverse DNS,
	// DNSBL listings and SPF authorisation. Empty means main guesses the
	// primary outbound address of the host, and the doctor says it guessed.
	EgressIPs []string `yaml:"egress_ips"`
	// SourceAddress is the local address this deliverer's connections
	// leave from (it must be one of the host's); empty lets the kernel
	// pick. A host with several sending addresses runs a deliverer per
	// address; with shaping.per_source each one's limits per site are its
	// own.
	SourceAddress string `yaml:"source_address" env:"SLUICE_DELIVERER_SOURCE_ADDRESS"`
	// SendingDomains are the domains we send mail for; `sluice doctor dns`
	// checks that they have MX and address records (receivers check that
	// bounces to the envelope sender could be delivered).
	SendingDomains []string `yaml:"sending_domains"`
	// DNSBLZones are the blocklists each egress IP is checked against.
	DNSBLZones []string `yaml:"dnsbl_zones"`
	// DNSBLInterval is how often the deliverer checks its egress IPs
	// against DNSBLZones on its own, to keep the
	// sluice_deliverer_dnsbl_listed gauge current for alerts (1h is a good
	// value in production). The default, 0, checks only when asked (`sluice
	// doctor dnsbl`): a development or test deployment should not query
	// public blocklists behind the operator's back.
	DNSBLInterval time.Duration `yaml:"dnsbl_interval" env:"SLUICE_DELIVERER_DNSBL_INTERVAL"`
	// DKIM lists the signing keys: outgoing mail is signed by the keys of
	// its From domain (or the closest parent domain with keys), else of its
	// envelope sender's domain (see package dkim).
	DKIM []dkim.KeyConfig `yaml:"dkim"`
	// DoctorProbeDomains are well-known domains whose MX hosts `sluice
	// doctor connect` tries when a destination cannot be reached at all: if
	// none of theirs answers either, outbound port 25 is blocked.
	DoctorProbeDomains []string `yaml:"doctor_probe_domains"`

	config.Telemetry `yaml:",inline"`
}

// Weights are the relative shares of the priority classes.
type Weights struct {
	High   int `yaml:"high"`
	Normal int `yaml:"normal"`
	Bulk   int `yaml:"bulk"`
}

// Default returns the defaults. Hostname and Instance depend on the machine
// and are filled in by main.
func Default() Config {
	return Config{NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), Deliverer: DefaultSettings()}
}

// DefaultSettings returns the defaults of the deliverer section.
func DefaultSettings() Settings {
	return Settings{
		DNSTimeout:      5 * time.Second,
		SMTPPort:        25,
		Concurrency:     32,
		Weights:         Weights{High: 8, Normal: 3, Bulk: 1},
		AckWait:         10 * time.Second,
		MaxStrikes:      5,
		ConnectTimeout:  30 * time.Second,
		CommandTimeout:  5 * time.Minute,
		DataTimeout:     10 * time.Minute,
		ShutdownTimeout: 10 * time.Second,
		// Postfix's defaults for connection reuse.
		ConnectionCacheTime:  2 * time.Second,
		ConnectionReuseLimit: 100,
		Shaping:              shaping.DefaultConfig(),
		TLSPolicy:            tlspolicy.DefaultConfig(),
		// Zones that answer queries for free at low volume; Spamhaus refuses
		// queries that come through large public resolvers (the doctor
		// reports that as an error, not as "not listed").
		DNSBLZones:         []string{"zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org"},
		DoctorProbeDomains: []string{"gmail.com", "outlook.com", "yahoo.com"},
		Telemetry:          config.Telemetry{MetricsListen: "127.0.0.1:9103", LogLevel: "info"},
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if err := c.NATS.Validate(); err != nil {
		return err
	}
	if err := c.Queue.Validate(); err != nil {
		return err
	}
	return c.Deliverer.Validate()
}

// Validate reports the first bad field as "deliverer.<field>: ...".
func (s Settings) Validate() error {
	if s.Hostname == "" || strings.ContainsAny(s.Hostname, " \t\r\n") {
		return fmt.Errorf("deliverer.hostname: %q, want a host name for EHLO", s.Hostname)
	}
	if strings.ContainsAny(s.Instance, " \t\r\n") {
		return fmt.Errorf("deliverer.instance: %q must not contain spaces", s.Instance)
	}
	if s.DNSServer != "" {
		if err := hostPort(s.DNSServer); err != nil {
			return fmt.Errorf("deliverer.dns_server: %q: %v", s.DNSServer, err)
		}
	}
	if s.DNSTimeout <= 0 {
		return fmt.Errorf("deliverer.dns_timeout: %s, must be positive", s.DNSTimeout)
	}
	if s.SMTPPort <= 0 || s.SMTPPort > 65535 {
		return fmt.Errorf("deliverer.smtp_port: %d, want 1..65535", s.SMTPPort)
	}
	for d, hp := range s.Routes {
		if strings.TrimSpace(d) == "" || strings.ContainsAny(d, " \t@") {
			return fmt.Errorf("deliverer.routes: %q is not a domain", d)
		}
		if err := hostPort(hp); err != nil {
			return fmt.Errorf("deliverer.routes.%s: %q: %v", d, hp, err)
		}
	}
	if s.Concurrency < 1 || s.Concurrency > 10000 {
		return fmt.Errorf("deliverer.concurrency: %d, want 1..10000", s.Concurrency)
	}
	for _, w := range []struct {
		name string
		v    int
	}{{"high", s.Weights.High}, {"normal", s.Weights.Normal}, {"bulk", s.Weights.Bulk}} {
		// Zero would starve a class forever.
		if w.v < 1 || w.v > 1000 {
			return fmt.Errorf("deliverer.weights.%s: %d, want 1..1000", w.name, w.v)
		}
	}
	if s.SourceAddress != "" {
		if _, err := netip.ParseAddr(s.SourceAddress); err != nil {
			return fmt.Errorf("deliverer.source_address: %q is not an IP address", s.SourceAddress)
		}
	}
	if s.Shaping.PerSource && s.SourceAddress == "" {
		return errors.New("deliverer.shaping.per_source: needs deliverer.source_address")
	}
	if s.MaxStrikes < 2 {
		return fmt.Errorf("deliverer.max_strikes: %d, want at least 2", s.MaxStrikes)
	}
	if s.AckWait < time.Second {
		return fmt.Errorf("deliverer.ack_wait: %s, want at least 1s", s.AckWait)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"connect_timeout", s.ConnectTimeout}, {"command_timeout", s.CommandTimeout}, {"data_timeout", s.DataTimeout}, {"shutdown_timeout", s.ShutdownTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("deliverer.%s: %s, must be positive", d.name, d.v)
		}
	}
	if s.ConnectionCacheTime < 0 || s.ConnectionCacheTime > 5*time.Minute {
		return fmt.Errorf("deliverer.connection_cache_time: %s, want 0 (off) to 5m", s.ConnectionCacheTime)
	}
	if s.ConnectionReuseLimit < 1 {
		return fmt.Errorf("deliverer.connection_reuse_limit: %d, want at least 1", s.ConnectionReuseLimit)
	}
	if err := s.Shaping.Validate(); err != nil {
		return err
	}
	if err := s.TLSPolicy.Validate(); err != nil {
		return err
	}
	if err := s.validateIdentity(); err != nil {
		return err
	}
	if err := s.Telemetry.Validate(); err != nil {
		return fmt.Errorf("deliverer.%w", err)
	}
	return nil
}

// validateIdentity checks the sending identity: egress addresses, domains,
// blocklists and DKIM keys. Key files are read here, so that a missing or
// malformed key stops the deliverer at start with the field named, rather
// than sending unsigned mail.
func (s Settings) validateIdentity() error {
	seen := map[netip.Addr]bool{}
	for i, ip := range s.EgressIPs {
		a, err := netip.ParseAddr(strings.TrimSpace(ip))
		if err != nil || a.Zone() != "" {
			return fmt.Errorf("deliverer.egress_ips[%d]: %q is not an IP address", i, ip)
		}
		if seen[a.Unmap()] {
			return fmt.Errorf("deliverer.egress_ips[%d]: %s is listed twice", i, ip)
		}
		seen[a.Unmap()] = true
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"sending_domains", s.SendingDomains}, {"dnsbl_zones", s.DNSBLZones}, {"doctor_probe_domains", s.DoctorProbeDomains}} {
		for i, d := range l.v {
			if !isDomain(d) {
				return fmt.Errorf("deliverer.%s[%d]: %q is not a domain name", l.name, i, d)
			}
		}
	}
	if s.DNSBLInterval < 0 || (s.DNSBLInterval > 0 && s.DNSBLInterval < time.Minute) {
		return fmt.Errorf("deliverer.dnsbl_interval: %s, want 0 (off) or at least 1m (blocklists rate-limit)", s.DNSBLInterval)
	}
	type sel struct{ domain, selector string }
	selectors := map[sel]bool{}
	for i, k := range s.DKIM {
		switch {
		case !isDomain(k.Domain):
			return fmt.Errorf("deliverer.dkim[%d].domain: %q is not a domain name", i, k.Domain)
		case !isLabel(k.Selector):
			return fmt.Errorf("deliverer.dkim[%d].selector: %q, want a DNS label like \"s2025\"", i, k.Selector)
		case k.KeyFile == "":
			return fmt.Errorf("deliverer.dkim[%d].key_file: empty, want a PEM private key file", i)
		}
		id := sel{strings.ToLower(k.Domain), strings.ToLower(k.Selector)}
		if selectors[id] {
			return fmt.Errorf("deliverer.dkim[%d].selector: %s._domainkey.%s is configured twice", i, k.Selector, k.Domain)
		}
		selectors[id] = true
		if _, err := dkim.LoadKey(k); err != nil {
			return fmt.Errorf("deliverer.dkim[%d].key_file: %s: %v", i, k.KeyFile, err)
		}
	}
	return nil
}

// DKIMSigner loads the DKIM keys and returns the signer the courier uses.
// Without keys it returns a signer that sends mail unsigned.
func (s Settings) DKIMSigner() (*dkim.Signer, error) {
	sg, err := dkim.Load(s.DKIM, dkim.Options{})
	if err != nil {
		return nil, fmt.Errorf("deliverer.%w", err)
	}
	return sg, nil
}

// isDomain accepts host names: dot-separated labels of letters, digits and
// hyphens (underscores too, for zones like _dmarc), without a final dot.
func isDomain(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

func isLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func hostPort(s string) error {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if h == "" {
		return errors.New("missing host")
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("bad port %q", p)
	}
	return nil
}
