package shaping

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Config is the `deliverer.shaping` section. Every deliverer of a fleet
// should have the same one: the limits are shared, the policy is not.
type Config struct {
	// File names a shaping file: a YAML document with the keys of this
	// section (default, sites, domains, slow_down_patterns, ...), such as
	// the provider defaults shipped in deploy/shaping/providers.yaml. The
	// section is laid over it: what the section sets wins, a site or domain
	// both name takes the section's fields over the file's (its slow-down
	// patterns added to the file's), and what neither sets keeps its
	// default. A relative path is relative to the configuration file's
	// directory. SIGHUP reads it again with the section.
	File string `yaml:"file"`
	// Disabled turns shaping off: no connection slots, rates, slow start
	// or suspensions; each deliverer opens what its concurrency allows.
	// For a relay to one internal host that needs none, and as the
	// baseline of the benchmark that measures what shaping costs.
	Disabled bool `yaml:"disabled"`
	// PerSource gives each source address (deliverer.source_address) a
	// budget of its own at each site, as receivers throttle per sending
	// address: the limits, rates, slow start and suspensions of site S for
	// the deliverers sending from A are those of the site "S@A".
	PerSource bool `yaml:"per_source"`
	// Default applies to every site without an override.
	Default Policy `yaml:"default"`
	// Sites override the default for the sites whose MX hosts match: the
	// key is a host name or a parent domain of one ("google.com" matches
	// the site "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com").
	// When several keys match, the longest wins.
	Sites map[string]Policy `yaml:"sites"`
	// Domains give a destination domain limits of its own: its mail is
	// shaped as a site named "domain:<domain>" with this policy over the
	// default, apart from the other domains of its MX hosts.
	Domains map[string]Policy `yaml:"domains"`
	// SlowDownPatterns are regular expressions matched against temporary
	// replies, as "<code> <enhanced code> <text>" ("421 4.7.0 Try again
	// later"): a reply that matches one means the site asks us to slow down.
	// Empty means DefaultSlowDownPatterns; sites add their own (Policy).
	SlowDownPatterns []string `yaml:"slow_down_patterns"`
	// LeaseTTL is how long a connection slot outlives a deliverer that
	// stopped renewing it (it renews every third of it): how long the slots
	// of a killed deliverer stay taken.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// BusyDelay is how long a job whose site has no free slot waits before
	// it is offered again (with up to as much again of random jitter).
	BusyDelay time.Duration `yaml:"busy_delay"`
	// MaxWait caps one wait of a job of a suspended site; it is offered
	// again then, and waits again if the site is still suspended.
	MaxWait time.Duration `yaml:"max_wait"`
}

// Policy are the limits of one site. A zero field takes the value of the
// policy it overrides.
type Policy struct {
	// MaxConnections is the most connections the whole fleet holds open to
	// the site at once, idle cached sessions included (Postfix's
	// default_destination_concurrency_limit).
	MaxConnections int `yaml:"max_connections"`
	// InitialConnections is where slow start begins: the limit rises by
	// one with each delivery up to MaxConnections, falls by one on a
	// connection failure and halves on a reply asking us to slow down
	// (Postfix's initial_destination_concurrency).
	InitialConnections int `yaml:"initial_connections"`
	// MaxMessagesPerConnection is the most transactions one session
	// carries; 0 everywhere means deliverer.connection_reuse_limit.
	MaxMessagesPerConnection int `yaml:"max_messages_per_connection"`
	// SuspendFor is how long the whole fleet stops connecting to the site
	// after a reply matching a slow-down pattern. A negative value only
	// halves the concurrency, without a suspension.
	SuspendFor time.Duration `yaml:"suspend_for"`
	// SlowDownPatterns are added to the configuration's for this site.
	SlowDownPatterns []string `yaml:"slow_down_patterns"`
	// MaxMessageRate limits the messages the whole fleet sends to the site:
	// "600/1m", "10/1s", "5000/1h"; empty is no limit.
	MaxMessageRate string `yaml:"max_message_rate"`
	// MaxConnectionRate limits the new connections the whole fleet opens
	// to the site, written like MaxMessageRate ("30/1m"); empty is no
	// limit. Reused sessions do not count.
	MaxConnectionRate string `yaml:"max_connection_rate"`
}

// DefaultSlowDownPatterns are the replies of large mailbox providers that
// mean "you are sending too fast", from their public documentation, and
// the generic wordings of other servers. They are matched against
// temporary replies only, case-insensitively.
var DefaultSlowDownPatterns = []string{
	// Gmail: "421 4.7.28 ... unusual rate of unsolicited mail", "421 4.7.0
	// Try again later, closing connection" (Google's SMTP error reference).
	`^4\d\d 4\.7\.28\b`,
	`^421 4\.7\.0 .*try again later`,
	// Microsoft 365 / Outlook.com: "451 4.7.650 The mail server [x] has been
	// temporarily rate limited due to IP reputation", "4.7.500 Server busy".
	`^4\d\d 4\.7\.(500|650)\b`,
	// Yahoo / AOL: "421 4.7.0 [TSS04] Messages from x temporarily deferred
	// due to unexpected volume or user complaints", [TS01], [TS02].
	`\[TSS?0[1-4]\]`,
	// Generic wordings of throttling MTAs (Postfix, Exim, Exchange, ...).
	`too many (connections|concurrent|sessions|simultaneous)`,
	`throttl`,
	`rate.?limit`,
}

// DefaultConfig returns the defaults of an unconfigured installation:
// Postfix's 20 connections per site with slow start from 5; a site that asks
// us to slow down is halved and suspended for a minute.
func DefaultConfig() Config {
	return Config{
		Default: Policy{
			MaxConnections:     20,
			InitialConnections: 5,
			SuspendFor:         time.Minute,
		},
		LeaseTTL:  6 * time.Second,
		BusyDelay: 500 * time.Millisecond,
		MaxWait:   5 * time.Minute,
	}
}

// Validate reports the first bad field as "deliverer.shaping.<field>: ...".
func (c Config) Validate() error {
	if err := c.Default.validate("default", true); err != nil {
		return err
	}
	for name, p := range c.Sites {
		if strings.TrimSpace(name) == "" || strings.ContainsAny(name, " ,\t@") {
			return fmt.Errorf("deliverer.shaping.sites: %q is not a host name or domain", name)
		}
		if err := p.validate("sites."+name, false); err != nil {
			return err
		}
	}
	for name, p := range c.Domains {
		if strings.TrimSpace(name) == "" || strings.ContainsAny(name, " ,\t@") {
			return fmt.Errorf("deliverer.shaping.domains: %q is not a domain", name)
		}
		if err := p.validate("domains."+name, false); err != nil {
			return err
		}
	}
	for i, p := range c.SlowDownPatterns {
		if _, err := regexp.Compile("(?i)" + p); err != nil {
			return fmt.Errorf("deliverer.shaping.slow_down_patterns[%d]: %v", i, err)
		}
	}
	if c.LeaseTTL < 3*time.Second || c.LeaseTTL > 5*time.Minute {
		// JetStream's per-message TTL counts whole seconds, and a slot is
		// renewed every third of its TTL.
		return fmt.Errorf("deliverer.shaping.lease_ttl: %s, want 3s to 5m", c.LeaseTTL)
	}
	if c.BusyDelay < 10*time.Millisecond || c.BusyDelay > time.Minute {
		return fmt.Errorf("deliverer.shaping.busy_delay: %s, want 10ms to 1m", c.BusyDelay)
	}
	if c.MaxWait < time.Second {
		return fmt.Errorf("deliverer.shaping.max_wait: %s, want at least 1s", c.MaxWait)
	}
	return nil
}

func (p Policy) validate(path string, complete bool) error {
	f := "deliverer.shaping." + path
	if p.MaxConnections < 0 || p.MaxConnections > 1000 || complete && p.MaxConnections == 0 {
		return fmt.Errorf("%s.max_connections: %d, want 1..1000", f, p.MaxConnections)
	}
	if p.InitialConnections < 0 || complete && p.InitialConnections == 0 {
		return fmt.Errorf("%s.initial_connections: %d, want at least 1", f, p.InitialConnections)
	}
	if p.MaxConnections > 0 && p.InitialConnections > p.MaxConnections {
		return fmt.Errorf("%s.initial_connections: %d is more than max_connections %d", f, p.InitialConnections, p.MaxConnections)
	}
	if p.MaxMessagesPerConnection < 0 {
		return fmt.Errorf("%s.max_messages_per_connection: %d, want 0 (connection_reuse_limit) or more", f, p.MaxMessagesPerConnection)
	}
	if _, err := ParseRate(p.MaxMessageRate); err != nil {
		return fmt.Errorf("%s.max_message_rate: %v", f, err)
	}
	if _, err := ParseRate(p.MaxConnectionRate); err != nil {
		return fmt.Errorf("%s.max_connection_rate: %v", f, err)
	}
	if p.SuspendFor > 24*time.Hour {
		return fmt.Errorf("%s.suspend_for: %s, want at most 24h", f, p.SuspendFor)
	}
	for i, s := range p.SlowDownPatterns {
		if _, err := regexp.Compile("(?i)" + s); err != nil {
			return fmt.Errorf("%s.slow_down_patterns[%d]: %v", f, i, err)
		}
	}
	return nil
}

// over returns p with the zero fields of o filled from p: o overriding p.
func (p Policy) over(o Policy) Policy {
	p = p.fill(o)
	// A site limited below the default's start starts at its limit.
	p.InitialConnections = min(p.InitialConnections, p.MaxConnections)
	return p
}

// fill is over for two overrides, both still incomplete: it keeps a zero
// MaxConnections rather than limiting InitialConnections to it.
func (p Policy) fill(o Policy) Policy {
	if o.MaxConnections > 0 {
		p.MaxConnections = o.MaxConnections
	}
	if o.InitialConnections > 0 {
		p.InitialConnections = o.InitialConnections
	}
	if o.MaxMessagesPerConnection > 0 {
		p.MaxMessagesPerConnection = o.MaxMessagesPerConnection
	}
	if o.SuspendFor != 0 {
		p.SuspendFor = o.SuspendFor
	}
	if o.MaxMessageRate != "" {
		p.MaxMessageRate = o.MaxMessageRate
	}
	if o.MaxConnectionRate != "" {
		p.MaxConnectionRate = o.MaxConnectionRate
	}
	p.SlowDownPatterns = append(append([]string(nil), p.SlowDownPatterns...), o.SlowDownPatterns...)
	return p
}
