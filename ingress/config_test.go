package ingress

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
	d := DefaultSettings()
	if d.MaxMessageBytes != 50<<20 || d.MaxRecipients != 1000 || len(d.TrustedNetworks) != 2 {
		t.Errorf("defaults %+v", d)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // prefix of the error
	}{
		{"bad listen", func(c *Config) { c.Ingress.Listen = "2525" }, "ingress.listen:"},
		{"empty hostname", func(c *Config) { c.Ingress.Hostname = " " }, "ingress.hostname:"},
		{"hostname with space", func(c *Config) { c.Ingress.Hostname = "mx example" }, "ingress.hostname:"},
		{"bad cidr", func(c *Config) { c.Ingress.TrustedNetworks = []string{"127.0.0.0/8", "10.0.0.300/8"} }, "ingress.trusted_networks[1]:"},
		{"host bits", func(c *Config) { c.Ingress.TrustedNetworks = []string{"10.1.2.3/8"} }, "ingress.trusted_networks[0]:"},
		{"zero size", func(c *Config) { c.Ingress.MaxMessageBytes = 0 }, "ingress.max_message_bytes:"},
		{"huge size", func(c *Config) { c.Ingress.MaxMessageBytes = 5 << 30 }, "ingress.max_message_bytes:"},
		{"zero recipients", func(c *Config) { c.Ingress.MaxRecipients = 0 }, "ingress.max_recipients:"},
		{"zero read timeout", func(c *Config) { c.Ingress.ReadTimeout = 0 }, "ingress.read_timeout:"},
		{"negative write timeout", func(c *Config) { c.Ingress.WriteTimeout = -time.Second }, "ingress.write_timeout:"},
		{"short lines", func(c *Config) { c.Ingress.MaxLineLength = 512 }, "ingress.max_line_length:"},
		{"negative grace", func(c *Config) { c.Ingress.ShutdownGrace = -1 }, "ingress.shutdown_grace:"},
		{"bad metrics listen", func(c *Config) { c.Ingress.MetricsListen = "nope" }, "ingress.metrics_listen:"},
		{"bad log level", func(c *Config) { c.Ingress.LogLevel = "loud" }, "ingress.log_level:"},
		{"nats", func(c *Config) { c.NATS.RequestTimeout = 0 }, "nats.request_timeout:"},
		{"queue", func(c *Config) { c.Queue.Replicas = 2 }, "queue.replicas:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error starting %q", err, tt.want)
			}
		})
	}
}

func TestLoadFileAndEnvironment(t *testing.T) {
	path := filepath.Join("testdata", "sluice.yaml")
	c := Default()
	if err := config.Load(path, &c); err != nil {
		t.Fatal(err)
	}
	want := Settings{
		Listen: "0.0.0.0:25", Hostname: "mx.example.net",
		TrustedNetworks: []string{"10.0.0.0/8", "2001:db8::/32"},
		MaxMessageBytes: 10 << 20, MaxRecipients: 50,
		ReadTimeout: time.Minute, WriteTimeout: 2 * time.Minute, MaxLineLength: 1000, ShutdownGrace: 5 * time.Second,
		Telemetry: config.Telemetry{MetricsListen: "127.0.0.1:9101", LogLevel: "debug"},
	}
	if got := c.Ingress; !equalSettings(got, want) {
		t.Errorf("loaded %+v\nwant   %+v", got, want)
	}
	if c.NATS.RequestTimeout != 3*time.Second || c.Queue.InlineBodyLimit != 65536 {
		t.Errorf("shared sections not read: %+v %+v", c.NATS, c.Queue)
	}

	c = Default()
	env := map[string]string{"SLUICE_INGRESS_TRUSTED_NETWORKS": "192.0.2.0/24, 198.51.100.0/24", "SLUICE_INGRESS_MAX_RECIPIENTS": "7"}
	if err := config.ApplyEnv(&c, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.Ingress.MaxRecipients != 7 || strings.Join(c.Ingress.TrustedNetworks, " ") != "192.0.2.0/24 198.51.100.0/24" {
		t.Errorf("environment not applied: %+v", c.Ingress)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("ingress:\n  trusted_networks: [\"not-a-cidr\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c = Default()
	if err := config.Load(bad, &c); err == nil || !strings.Contains(err.Error(), "ingress.trusted_networks[0]") {
		t.Errorf("Load(bad) = %v, want the field named", err)
	}
}

func equalSettings(a, b Settings) bool {
	return a.Listen == b.Listen && a.Hostname == b.Hostname && strings.Join(a.TrustedNetworks, ",") == strings.Join(b.TrustedNetworks, ",") &&
		a.MaxMessageBytes == b.MaxMessageBytes && a.MaxRecipients == b.MaxRecipients && a.ReadTimeout == b.ReadTimeout &&
		a.WriteTimeout == b.WriteTimeout && a.MaxLineLength == b.MaxLineLength && a.ShutdownGrace == b.ShutdownGrace && a.Telemetry == b.Telemetry
}
