package service

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

func TestLoadFile(t *testing.T) {
	t.Setenv("SLUICE_BOUNCER_POSTMASTER", "abuse@example.net")
	cfg := Default()
	cfg.Bouncer.Hostname = "os-hostname"
	if err := config.Load("testdata/sluice.yaml", &cfg); err != nil {
		t.Fatal(err)
	}
	b := cfg.Bouncer
	if b.Hostname != "mx.example.net" || b.Postmaster != "abuse@example.net" || b.NotifyDelayByDefault ||
		b.MetricsListen != "127.0.0.1:9999" || b.LogLevel != "debug" ||
		b.TLSReports != (TLSReports{Enabled: true, Organization: "Example Net", Contact: "postmaster@example.net", Interval: 30 * time.Minute}) {
		t.Errorf("bouncer section = %+v", b)
	}
	if cfg.NATS.URL != "nats://127.0.0.1:4333" || cfg.NATS.RequestTimeout != 3*time.Second || cfg.Queue.InlineBodyLimit != 65536 {
		t.Errorf("shared sections: %+v %+v", cfg.NATS, cfg.Queue)
	}
}

func TestDefaultsNeedOnlyAHostname(t *testing.T) {
	cfg := Default()
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "bouncer.hostname:") {
		t.Fatalf("defaults without a host name: %v", err)
	}
	cfg.Bouncer.Hostname = "localhost"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Bouncer.NotifyDelayByDefault || cfg.Bouncer.MetricsListen != "127.0.0.1:9104" {
		t.Errorf("defaults = %+v", cfg.Bouncer)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Config)
		field  string
	}{
		{func(c *Config) { c.Bouncer.Hostname = "mx example" }, "bouncer.hostname:"},
		{func(c *Config) { c.Bouncer.Hostname = "mx..example" }, "bouncer.hostname:"},
		{func(c *Config) { c.Bouncer.Postmaster = "postmaster" }, "bouncer.postmaster:"},
		{func(c *Config) { c.Bouncer.Postmaster = "a b@example.com" }, "bouncer.postmaster:"},
		{func(c *Config) { c.Bouncer.MetricsListen = "9104" }, "bouncer.metrics_listen:"},
		{func(c *Config) { c.Bouncer.LogLevel = "loud" }, "bouncer.log_level:"},
		{func(c *Config) { c.NATS.URL = "" }, "nats.url:"},
		{func(c *Config) { c.Bouncer.TLSReports = TLSReports{Enabled: true, Contact: "a@b.test"} }, "bouncer.tls_reports.organization:"},
		{func(c *Config) { c.Bouncer.TLSReports = TLSReports{Enabled: true, Organization: "Org"} }, "bouncer.tls_reports.contact:"},
		{func(c *Config) {
			c.Bouncer.TLSReports = TLSReports{Enabled: true, Organization: "Org", Contact: "a@b.test", Submitter: "not a domain"}
		}, "bouncer.tls_reports.submitter:"},
		{func(c *Config) {
			c.Bouncer.TLSReports = TLSReports{Enabled: true, Organization: "Org", Contact: "a@b.test", DNSServer: "127.0.0.1"}
		}, "bouncer.tls_reports.dns_server:"},
		{func(c *Config) {
			c.Bouncer.TLSReports = TLSReports{Enabled: true, Organization: "Org", Contact: "a@b.test", Interval: time.Millisecond}
		}, "bouncer.tls_reports.interval:"},
		{func(c *Config) { c.Queue.InlineBodyLimit = 10 }, "queue.inline_body_limit:"},
	} {
		cfg := Default()
		cfg.Bouncer.Hostname = "mx.example.net"
		tc.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
			t.Errorf("want an error naming %s, got %v", tc.field, err)
		}
	}
}

func TestTLSReportsSubmitter(t *testing.T) {
	for _, tc := range []struct{ submitter, hostname, want string }{
		{"", "mta.sender.test", "sender.test"},
		{"", "mta.test", "mta.test"},
		{"", "localhost", "localhost"},
		{"reports.example", "mta.sender.test", "reports.example"},
	} {
		if got := (TLSReports{Submitter: tc.submitter}).SubmitterDomain(tc.hostname); got != tc.want {
			t.Errorf("submitter %q, hostname %q: %q, want %q", tc.submitter, tc.hostname, got, tc.want)
		}
	}
}
