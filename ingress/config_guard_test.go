package ingress

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

func TestGuardSettingsValidate(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(*Settings)
		want   string // prefix of the error
	}{
		{"zero data timeout", func(s *Settings) { s.DataTimeout = 0 }, "ingress.data_timeout:"},
		{"store timeout beyond the client's patience", func(s *Settings) { s.StoreTimeout = 11 * time.Minute }, "ingress.store_timeout:"},
		{"negative store timeout", func(s *Settings) { s.StoreTimeout = -time.Second }, "ingress.store_timeout:"},
		{"zero header limit", func(s *Settings) { s.MaxHeaderBytes = 0 }, "ingress.max_header_bytes:"},
		{"negative connections", func(s *Settings) { s.MaxConnections = -1 }, "ingress.max_connections:"},
		{"negative per client", func(s *Settings) { s.MaxConnectionsPerClient = -1 }, "ingress.max_connections_per_client:"},
		{"per client over total", func(s *Settings) { s.MaxConnections, s.MaxConnectionsPerClient = 10, 11 }, "ingress.max_connections_per_client:"},
		{"negative errors", func(s *Settings) { s.MaxErrors = -1 }, "ingress.max_errors:"},
		{"negative commands", func(s *Settings) { s.MaxCommandsWithoutMail = -2 }, "ingress.max_commands_without_mail:"},
		{"negative inflow backlog", func(s *Settings) { s.InflowBacklog = -1 }, "ingress.inflow_backlog:"},
		{"inflow delay over a minute", func(s *Settings) { s.InflowDelay = 2 * time.Minute }, "ingress.inflow_delay:"},
		{"negative inflow delay", func(s *Settings) { s.InflowDelay = -time.Second }, "ingress.inflow_delay:"},
		{"dns server without port", func(s *Settings) { s.DNSServer = "192.0.2.53" }, "ingress.dns_server:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := DefaultSettings()
			tt.mutate(&s)
			if err := s.Validate(); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error starting %q", err, tt.want)
			}
		})
	}
	s := DefaultSettings()
	s.MaxConnections, s.MaxConnectionsPerClient, s.MaxErrors, s.MaxCommandsWithoutMail = 0, 0, 0, 0
	s.InflowBacklog, s.InflowDelay = 0, 0
	s.DNSServer = "[::1]:53"
	if err := s.Validate(); err != nil {
		t.Errorf("zero limits (none) and an IPv6 resolver: %v", err)
	}
}

func TestGuardSettingsFromEnvironment(t *testing.T) {
	c := Default()
	env := map[string]string{
		"SLUICE_INGRESS_DATA_TIMEOUT":               "90s",
		"SLUICE_INGRESS_MAX_CONNECTIONS_PER_CLIENT": "5",
		"SLUICE_INGRESS_DNS_SERVER":                 "127.0.0.1:5353",
		"SLUICE_INGRESS_DMARC_REJECT":               "true",
	}
	if err := config.ApplyEnv(&c, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	g := c.Ingress
	if g.DataTimeout != 90*time.Second || g.MaxConnectionsPerClient != 5 || g.DNSServer != "127.0.0.1:5353" || !g.DMARCReject {
		t.Errorf("environment not applied: %+v", g)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}
