package worker

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mta/sluice/deliverer/dkim"
)

func TestSettingsValidateIdentity(t *testing.T) {
	dir := t.TempDir()
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	keyFile := filepath.Join(dir, "s1.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a key"), 0o600)

	ok := DefaultSettings()
	ok.Hostname = "mx.example.org"
	ok.EgressIPs = []string{"192.0.2.10", "2001:db8::10"}
	ok.SendingDomains = []string{"example.org"}
	ok.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "s1", KeyFile: keyFile}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid identity: %v", err)
	}
	if sg, err := ok.DKIMSigner(); err != nil || len(sg.Keys("example.org")) != 1 {
		t.Fatalf("signer: %v", err)
	}
	tests := []struct {
		field string
		mod   func(*Settings)
	}{
		{"deliverer.egress_ips[1]", func(s *Settings) { s.EgressIPs = []string{"192.0.2.1", "mail.example.org"} }},
		{"deliverer.egress_ips[1]", func(s *Settings) { s.EgressIPs = []string{"192.0.2.1", "192.0.2.1"} }},
		{"deliverer.sending_domains[0]", func(s *Settings) { s.SendingDomains = []string{"user@example.org"} }},
		{"deliverer.dnsbl_zones[2]", func(s *Settings) { s.DNSBLZones = []string{"a.example", "b.example", "bad zone"} }},
		{"deliverer.doctor_probe_domains[0]", func(s *Settings) { s.DoctorProbeDomains = []string{"-x.example"} }},
		{"deliverer.dnsbl_interval", func(s *Settings) { s.DNSBLInterval = time.Second }},
		{"deliverer.dkim[0].domain", func(s *Settings) { s.DKIM = []dkim.KeyConfig{{Selector: "s1", KeyFile: keyFile}} }},
		{"deliverer.dkim[0].selector", func(s *Settings) {
			s.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "a b", KeyFile: keyFile}}
		}},
		{"deliverer.dkim[0].key_file", func(s *Settings) { s.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "s1"}} }},
		{"deliverer.dkim[0].key_file", func(s *Settings) {
			s.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "s1", KeyFile: filepath.Join(dir, "missing.pem")}}
		}},
		{"deliverer.dkim[1].key_file", func(s *Settings) {
			s.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "s1", KeyFile: keyFile}, {Domain: "example.org", Selector: "s2", KeyFile: garbage}}
		}},
		{"deliverer.dkim[1].selector", func(s *Settings) {
			s.DKIM = []dkim.KeyConfig{{Domain: "example.org", Selector: "s1", KeyFile: keyFile}, {Domain: "EXAMPLE.org", Selector: "S1", KeyFile: keyFile}}
		}},
	}
	for _, tc := range tests {
		s := ok
		tc.mod(&s)
		err := s.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
}

func TestSettingsIdentityFromYAML(t *testing.T) {
	c := Default()
	src := `
deliverer:
  hostname: mx.example.org
  egress_ips: [192.0.2.10]
  sending_domains: [example.org]
  dnsbl_zones: [dnsbl.example]
  dkim:
    - {domain: example.org, selector: s1, key_file: /nonexistent.pem}
  doctor_probe_domains: [probe.example]
`
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatal(err)
	}
	s := c.Deliverer
	if len(s.EgressIPs) != 1 || s.DNSBLZones[0] != "dnsbl.example" || s.DKIM[0].KeyFile != "/nonexistent.pem" ||
		s.DoctorProbeDomains[0] != "probe.example" || s.SendingDomains[0] != "example.org" || s.DNSBLInterval != 0 {
		t.Fatalf("decoded %+v", s)
	}
}
