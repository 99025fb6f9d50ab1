package doctor

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
)

// txt quotes a TXT record value for dnstest, splitting it in 255-byte
// strings like a zone file must.
func txt(name, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	return name + ". 60 IN TXT " + strings.Join(parts, " ")
}

func TestAuth(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	keys := []*dkim.Key{
		{Domain: "pass.test", Selector: "rsa1", Signer: rk},
		{Domain: "pass.test", Selector: "ed1", Signer: ek},
		{Domain: "pass.test", Selector: "gone", Signer: ek},
		{Domain: "fail.test", Selector: "s1", Signer: ek},
		{Domain: "soft.test", Selector: "s1", Signer: ek},
	}
	foreign := &dkim.Key{Domain: "fail.test", Selector: "s1", Signer: other}
	dns := dnstest.Start(t)
	dns.MustAdd(t,
		txt("pass.test", "v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all"),
		txt("pass.test", "google-site-verification=abc"),
		txt(keys[0].RecordName(), keys[0].Record()),
		txt(keys[1].RecordName(), keys[1].Record()),
		txt("_dmarc.pass.test", "v=DMARC1; p=reject; adkim=s; rua=mailto:agg@pass.test; ruf=mailto:fail@pass.test"),

		txt("fail.test", "v=spf1 ip4:198.51.100.1 -all"),
		txt(foreign.RecordName(), foreign.Record()),

		txt("soft.test", "v=spf1 mx ~all"),
		"soft.test. 60 IN MX 10 mx.soft.test.",
		"mx.soft.test. 60 IN A 198.51.100.9",
		txt("s1._domainkey.soft.test", "v=DKIM1; k=ed25519; p="),
		txt("_dmarc.soft.test", "v=DMARC1; p=none; pct=50"),

		txt("perm.test", "v=spf1 foo:bar ip4:192.0.2.10 -all"),
		txt("_dmarc.perm.test", "v=DMARC1; p=bogus"),

		txt("twice.test", "v=spf1 -all"),
		txt("twice.test", "v=spf1 +all"),

		txt("sub.pass.test", "v=spf1 a:mail.good.test -all"),
		"mail.good.test. 60 IN A 192.0.2.10",
	)
	d := newDoctor(t, dns, func(c *Config) { c.Signer = dkim.NewSigner(keys, dkim.Options{}) })

	t.Run("pass", func(t *testing.T) {
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "pass.test"})
		spf := rep.SPF.Results[0]
		if rep.SPF.Record != "v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all" || spf.Result != "pass" || spf.Mechanism != "ip4:192.0.2.0/24" {
			t.Errorf("spf %+v %+v", rep.SPF, spf)
		}
		if len(rep.DKIM) != 3 {
			t.Fatalf("dkim %+v", rep.DKIM)
		}
		for _, c := range rep.DKIM[:2] {
			if c.Status != admin.DKIMMatch || !c.SignatureValid {
				t.Errorf("dkim %s: %+v", c.Selector, c)
			}
		}
		if g := rep.DKIM[2]; g.Status != admin.DKIMMissing || g.SignatureValid || !strings.Contains(g.SignatureError, "no key") {
			t.Errorf("missing key: %+v", g)
		}
		m := rep.DMARC
		if !m.Found || m.Policy != "reject" || m.DKIMAlignment != "strict" || m.SPFAlignment != "relaxed" || m.Percent != 100 ||
			m.AggregateTo[0] != "mailto:agg@pass.test" || m.FailureTo[0] != "mailto:fail@pass.test" || m.At != "_dmarc.pass.test" {
			t.Errorf("dmarc %+v", m)
		}
		if len(rep.Findings) != 1 || !hasFinding(rep.Findings, admin.SeverityError, "selector gone is not published", `gone._domainkey.pass.test. IN TXT "v=DKIM1; k=ed25519; p=`) {
			t.Errorf("findings:\n%s", findingsText(rep.Findings))
		}
	})
	t.Run("fail", func(t *testing.T) {
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "fail.test"})
		spf := rep.SPF.Results[0]
		if spf.Result != "fail" || spf.Mechanism != "-all" || !strings.Contains(spf.Explanation, `"-all" forbids 192.0.2.10`) {
			t.Errorf("spf %+v", spf)
		}
		if rep.DKIM[0].Status != admin.DKIMMismatch || rep.DKIM[0].SignatureValid || rep.DKIM[0].SignatureError == "" {
			t.Errorf("dkim %+v", rep.DKIM[0])
		}
		fs := rep.Findings
		if !hasFinding(fs, admin.SeverityError, "gives fail for egress IP 192.0.2.10", `fail.test. IN TXT "v=spf1 ip4:198.51.100.1 ip4:192.0.2.10 -all"`) ||
			!hasFinding(fs, admin.SeverityError, "published DKIM key of selector s1 is not ours") ||
			!hasFinding(fs, admin.SeverityError, "fail.test has no DMARC record", `_dmarc.fail.test. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@fail.test"`) {
			t.Errorf("findings:\n%s", findingsText(fs))
		}
	})
	t.Run("softfail", func(t *testing.T) {
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "soft.test"})
		if spf := rep.SPF.Results[0]; spf.Result != "softfail" || spf.Mechanism != "~all" {
			t.Errorf("spf %+v", spf)
		}
		if c := rep.DKIM[0]; c.Status != admin.DKIMInvalid || !strings.Contains(c.Detail, "revoked") {
			t.Errorf("dkim %+v", c)
		}
		m := rep.DMARC
		if m.Policy != "none" || m.Percent != 50 || len(m.AggregateTo) != 0 {
			t.Errorf("dmarc %+v", m)
		}
		fs := rep.Findings
		if !hasFinding(fs, admin.SeverityError, "gives softfail", `"v=spf1 mx ip4:192.0.2.10 ~all"`) ||
			!hasFinding(fs, admin.SeverityWarning, "p=none: monitoring only") ||
			!hasFinding(fs, admin.SeverityWarning, "pct=50%") ||
			!hasFinding(fs, admin.SeverityWarning, "no rua= address", "rua=mailto:dmarc-reports@soft.test") {
			t.Errorf("findings:\n%s", findingsText(fs))
		}
	})
	t.Run("permerror", func(t *testing.T) {
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "perm.test"})
		if spf := rep.SPF.Results[0]; spf.Result != "permerror" || !strings.Contains(spf.Explanation, "unknown field") {
			t.Errorf("spf %+v", spf)
		}
		if rep.DMARC.Found || !strings.Contains(rep.DMARC.Error, "invalid") {
			t.Errorf("dmarc %+v", rep.DMARC)
		}
		fs := rep.Findings
		if !hasFinding(fs, admin.SeverityError, "SPF record of perm.test is broken (permerror") ||
			!hasFinding(fs, admin.SeverityError, "no DKIM key is configured for perm.test") ||
			!hasFinding(fs, admin.SeverityError, "the DMARC record is invalid") {
			t.Errorf("findings:\n%s", findingsText(fs))
		}
		rep = d.Auth(bg(), admin.DoctorRequest{Domain: "twice.test"})
		if spf := rep.SPF.Results[0]; spf.Result != "permerror" || rep.SPF.Record != "v=spf1 -all | v=spf1 +all" {
			t.Errorf("two records: %+v %q", spf, rep.SPF.Record)
		}
	})
	t.Run("subdomain", func(t *testing.T) {
		// sub.pass.test: SPF passes by an a: term; DKIM is signed by the
		// parent's keys, which strict alignment refuses; DMARC comes from
		// the organizational domain.
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "sub.pass.test"})
		if spf := rep.SPF.Results[0]; spf.Result != "pass" || spf.Mechanism != "a:mail.good.test" {
			t.Errorf("spf %+v", spf)
		}
		if rep.DMARC.At != "_dmarc.pass.test" || rep.DMARC.Policy != "reject" {
			t.Errorf("dmarc %+v", rep.DMARC)
		}
		if !hasFinding(rep.Findings, admin.SeverityError, "adkim=s requires d=sub.pass.test exactly") ||
			!hasFinding(rep.Findings, admin.SeverityWarning, "signed with d=pass.test") {
			t.Errorf("findings:\n%s", findingsText(rep.Findings))
		}
	})
	t.Run("no egress IP", func(t *testing.T) {
		d := newDoctor(t, dns, func(c *Config) { c.EgressIPs = []netip.Addr{} })
		rep := d.Auth(bg(), admin.DoctorRequest{Domain: "pass.test"})
		if len(rep.SPF.Results) != 0 || !hasFinding(rep.Findings, admin.SeverityError, "no egress IP is configured") {
			t.Errorf("%+v\n%s", rep.SPF, findingsText(rep.Findings))
		}
	})
}
