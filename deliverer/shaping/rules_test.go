package shaping

import (
	"strings"
	"testing"
	"time"
)

func TestRulesSiteOverrides(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Sites = map[string]Policy{
		"google.test":                 {MaxConnections: 50, SlowDownPatterns: []string{`quota`}},
		"gmail-smtp-in.l.google.test": {MaxMessagesPerConnection: 10},
		"outlook.test":                {MaxConnections: 3},
	}
	cfg.Domains = map[string]Policy{"Tiny.TEST": {MaxConnections: 2, SuspendFor: -1}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := NewRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The longest match wins: the host itself over its parent domain.
	g := r.Site("gmail.test", "alt1.gmail-smtp-in.l.google.test,gmail-smtp-in.l.google.test")
	if g.Policy.MaxMessagesPerConnection != 10 || g.Policy.MaxConnections != 20 {
		t.Errorf("gmail site policy %+v", g.Policy)
	}
	gg := r.Site("g.test", "aspmx.l.google.test")
	if gg.Policy.MaxConnections != 50 {
		t.Errorf("parent domain match: %+v", gg.Policy)
	}
	o := r.Site("hotmail.test", "hotmail-com.olc.protection.outlook.test")
	if o.Policy.MaxConnections != 3 || o.Policy.InitialConnections != 3 || o.Name != "hotmail-com.olc.protection.outlook.test" {
		t.Errorf("outlook site %+v: initial must not exceed max", o)
	}
	d := r.Site("tiny.test", "mx.shared.test")
	if d.Name != "domain:tiny.test" || d.Policy.MaxConnections != 2 || d.Policy.SuspendFor != -1 {
		t.Errorf("domain override %+v", d)
	}
	if other := r.Site("x.test", "mx.shared.test"); other.Key == d.Key || other.Policy.MaxConnections != 20 {
		t.Errorf("a domain configured apart must not share its MX site's key: %+v", other)
	}
	// Patterns: the defaults, plus the site's own.
	plain := r.Site("x.test", "mx.shared.test")
	for _, c := range []struct {
		site  Site
		code  int
		enh   string
		text  string
		match bool
	}{
		{plain, 421, "4.7.0", "Try again later, closing connection.", true},
		{plain, 421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", true},
		{plain, 451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", true},
		{plain, 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume", true},
		{plain, 421, "4.3.2", "Too many connections from your IP", true},
		{plain, 450, "4.2.0", "Throttled: slow down", true},
		{plain, 550, "5.7.1", "rate limited, go away", false}, // permanent: not a pace
		{plain, 450, "4.1.1", "mailbox busy", false},
		{plain, 452, "4.2.2", "quota exceeded", false},
		{gg, 452, "4.2.2", "quota exceeded", true},
		{g, 452, "4.2.2", "quota exceeded", false}, // the longest match alone applies
	} {
		if got := c.site.SlowDown(c.code, c.enh, c.text); got != c.match {
			t.Errorf("%s: SlowDown(%d %s %s) = %v", c.site.Name, c.code, c.enh, c.text, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Default.MaxConnections = 0 }, "default.max_connections"},
		{func(c *Config) { c.Default.InitialConnections = 30 }, "default.initial_connections"},
		{func(c *Config) { c.Sites = map[string]Policy{"a b": {}} }, "sites"},
		{func(c *Config) { c.Domains = map[string]Policy{"x.test": {MaxConnections: -1}} }, "domains.x.test.max_connections"},
		{func(c *Config) { c.SlowDownPatterns = []string{"("} }, "slow_down_patterns[0]"},
		{func(c *Config) { c.LeaseTTL = time.Second }, "lease_ttl"},
		{func(c *Config) { c.Sites = map[string]Policy{"x.test": {SlowDownPatterns: []string{"["}}} }, "sites.x.test.slow_down_patterns[0]"},
	} {
		cfg := DefaultConfig()
		c.mod(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "deliverer.shaping."+c.want) {
			t.Errorf("want an error naming %s, got %v", c.want, err)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// TestSetConfig: a reload replaces the policies in force and keeps the
// lease TTL the held slots were made with.
func TestSetConfig(t *testing.T) {
	s, err := New(nil, nil, DefaultConfig(), "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Rules().Site("a.test", "mx.a.test").Policy.MaxConnections; got != 20 {
		t.Fatalf("max %d", got)
	}
	cfg := DefaultConfig()
	cfg.Sites = map[string]Policy{"a.test": {MaxConnections: 7}}
	cfg.LeaseTTL = time.Minute
	cfg.BusyDelay = time.Second
	if err := s.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if got := s.Rules().Site("a.test", "mx.a.test").Policy.MaxConnections; got != 7 {
		t.Errorf("after reload: max %d, want 7", got)
	}
	if c := s.Config(); c.LeaseTTL != DefaultConfig().LeaseTTL || c.BusyDelay != time.Second {
		t.Errorf("after reload: lease_ttl %s (want it kept), busy_delay %s", c.LeaseTTL, c.BusyDelay)
	}
	bad := DefaultConfig()
	bad.Default.MaxConnections = 0
	if err := s.SetConfig(bad); err == nil || s.Rules().Site("a.test", "mx.a.test").Policy.MaxConnections != 7 {
		t.Errorf("a bad reload: %v; the rules in force must stay", err)
	}
}
