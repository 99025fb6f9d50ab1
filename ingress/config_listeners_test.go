package ingress

import (
	"strings"
	"testing"
)

func TestValidateListeners(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Settings)
		want   string // prefix of the error, "" for valid
	}{
		{"submission without certificate", func(s *Settings) {
			s.Submission = Submission{Listen: ":587", CredentialsFile: "users"}
		}, "ingress.tls.cert_file:"},
		{"submission without users", func(s *Settings) {
			s.TLS = TLSFiles{CertFile: "c", KeyFile: "k"}
			s.Submission = Submission{ListenTLS: ":465"}
		}, "ingress.submission.credentials_file:"},
		{"bad submission address", func(s *Settings) {
			s.TLS = TLSFiles{CertFile: "c", KeyFile: "k"}
			s.Submission = Submission{Listen: "587", CredentialsFile: "users"}
		}, "ingress.submission.listen:"},
		{"cert without key", func(s *Settings) { s.TLS.CertFile = "c" }, "ingress.tls.cert_file and ingress.tls.key_file:"},
		{"no listener", func(s *Settings) { s.Listen = "" }, "ingress.listen:"},
		{"unqualified accepted domain", func(s *Settings) { s.MX.AcceptedDomains = []string{"example.org", "localhost"} }, "ingress.mx.accepted_domains[1]:"},
		{"literal accepted domain", func(s *Settings) { s.MX.AcceptedDomains = []string{"[192.0.2.1]"} }, "ingress.mx.accepted_domains[0]:"},
		{"recipients without domains", func(s *Settings) { s.MX.RecipientsFile = "r" }, "ingress.mx.recipients_file:"},
		{"bad delimiter", func(s *Settings) { s.MX.RecipientDelimiter = "@" }, "ingress.mx.recipient_delimiter:"},
		{"negative reload", func(s *Settings) { s.ReloadInterval = -1 }, "ingress.reload_interval:"},
		{"submission only", func(s *Settings) {
			s.Listen = ""
			s.TLS = TLSFiles{CertFile: "c", KeyFile: "k"}
			s.Submission = Submission{Listen: ":587", ListenTLS: ":465", CredentialsFile: "users"}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := DefaultSettings()
			tt.mutate(&s)
			err := s.Validate()
			if tt.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error starting %q", err, tt.want)
			}
		})
	}
}
