package doctor

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/admin"
)

// Auth checks what receivers will conclude about mail from domain sent by
// this deliverer: SPF for each egress IP, each DKIM key of ours against the
// published one (and a real signature verified through DNS), and the DMARC
// policy that ties them to the From domain.
func (d *Doctor) Auth(ctx context.Context, req admin.DoctorRequest) admin.AuthReport {
	ctx, cancel, _ := budget(ctx, req)
	defer cancel()
	domain := normDomain(req.Domain)
	rep := admin.AuthReport{Deliverer: d.identity(), Domain: domain, DKIM: []admin.DKIMCheck{}}
	findings := d.egressFindings()
	var fs []admin.Finding
	res := d.resolver()
	rep.SPF, fs = d.spfCheck(ctx, res, domain)
	findings = append(findings, fs...)
	rep.DKIM, fs = d.dkimCheck(ctx, res, domain)
	findings = append(findings, fs...)
	rep.DMARC, fs = d.dmarcCheck(ctx, res, domain)
	findings = append(findings, fs...)
	rep.Findings = nonNil(findings)
	rep.Verdict = verdict(findings, fmt.Sprintf("SPF passes for every egress IP, DKIM keys match and verify, DMARC p=%s", rep.DMARC.Policy))
	return rep
}

// spfCheck evaluates the SPF record of domain (RFC 7208) for each egress
// IP, as a receiver would for a MAIL FROM in domain.
func (d *Doctor) spfCheck(ctx context.Context, res *mx.Resolver, domain string) (admin.SPFCheck, []admin.Finding) {
	c := admin.SPFCheck{Results: []admin.SPFResult{}}
	var records []string
	txts, err := lookupTXT(ctx, res, domain)
	if err != nil && !notFound(err) {
		c.Error = errText(err)
	}
	for _, t := range txts {
		if l := strings.ToLower(t); l == "v=spf1" || strings.HasPrefix(l, "v=spf1 ") {
			records = append(records, t)
		}
	}
	c.Record = strings.Join(records, " | ")
	var findings []admin.Finding
	ips := d.cfg.EgressIPs
	for _, ip := range ips {
		res, err := spf.CheckHostWithSender(net.IP(ip.AsSlice()), d.cfg.Hostname, "postmaster@"+domain,
			spf.WithResolver(netResolver{res}), spf.WithContext(ctx))
		r := admin.SPFResult{IP: ip.String(), Result: string(res)}
		r.Mechanism = matchedMechanism(err, ip, records)
		r.Explanation = spfExplanation(res, err, ip, domain, r.Mechanism)
		c.Results = append(c.Results, r)
		switch res {
		case spf.Pass:
		case spf.None:
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
				Problem: fmt.Sprintf("%s has no SPF record: receivers cannot tell that %s may send its mail", domain, ip),
				Fix:     fmt.Sprintf("%s. IN TXT \"v=spf1 %s ~all\"", domain, spfTerms(ips))})
		case spf.Neutral:
			findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: domain,
				Problem: fmt.Sprintf("SPF of %s is neutral about %s: it neither authorises nor forbids it", domain, ip),
				Fix:     fmt.Sprintf("%s. IN TXT \"%s\"", domain, spfWith(records, []netip.Addr{ip}))})
		case spf.Fail, spf.SoftFail:
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
				Problem: fmt.Sprintf("SPF of %s gives %s for egress IP %s (%s): receivers reject or junk its mail", domain, res, ip, r.Mechanism),
				Fix:     fmt.Sprintf("%s. IN TXT \"%s\"", domain, spfWith(records, []netip.Addr{ip}))})
		case spf.PermError:
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
				Problem: fmt.Sprintf("the SPF record of %s is broken (permerror: %s): receivers treat it as a failure", domain, spfErr(err)),
				Fix:     "publish exactly one valid record, e.g. " + fmt.Sprintf("%s. IN TXT \"v=spf1 %s ~all\"", domain, spfTerms(ips))})
		case spf.TempError:
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
				Problem: fmt.Sprintf("SPF of %s could not be evaluated (temperror: %s)", domain, spfErr(err))})
		}
	}
	return c, dedupe(findings)
}

// matchedMechanism names what matched. The spf package tells the kind of
// mechanism through its ErrMatched* errors, not the term; for ip4/ip6 and
// all, the term of the top-level record is found here, and for the others
// it is named when the record has exactly one term of that kind.
func matchedMechanism(err error, ip netip.Addr, records []string) string {
	kind := ""
	switch {
	case errors.Is(err, spf.ErrMatchedAll):
		kind = "all"
	case errors.Is(err, spf.ErrMatchedIP):
		kind = "ip"
	case errors.Is(err, spf.ErrMatchedA):
		kind = "a"
	case errors.Is(err, spf.ErrMatchedMX):
		kind = "mx"
	case errors.Is(err, spf.ErrMatchedPTR):
		kind = "ptr"
	case errors.Is(err, spf.ErrMatchedExists):
		kind = "exists"
	default:
		return ""
	}
	if len(records) != 1 {
		return kind
	}
	var candidates []string
	for _, term := range strings.Fields(records[0])[1:] {
		name := strings.ToLower(strings.TrimLeft(term, "+-~?"))
		switch kind {
		case "ip":
			if p, ok := ipTerm(name); ok && p.Contains(ip) {
				return term
			}
		case "all":
			if name == "all" {
				return term
			}
		default:
			if name == kind || strings.HasPrefix(name, kind+":") || strings.HasPrefix(name, kind+"/") {
				candidates = append(candidates, term)
			}
		}
	}
	if len(candidates) == 1 {
		return candidates[0]
	}
	if kind == "ip" {
		return "ip4/ip6 (in an included record)"
	}
	return kind
}

// ipTerm parses the prefix of an ip4: or ip6: term.
func ipTerm(t string) (netip.Prefix, bool) {
	var v string
	switch {
	case strings.HasPrefix(t, "ip4:"), strings.HasPrefix(t, "ip6:"):
		v = t[4:]
	default:
		return netip.Prefix{}, false
	}
	if !strings.Contains(v, "/") {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	p, err := netip.ParsePrefix(v)
	return p, err == nil
}

func spfErr(err error) string {
	if err == nil {
		return "no detail"
	}
	return err.Error()
}

func spfExplanation(res spf.Result, err error, ip netip.Addr, domain, mech string) string {
	switch res {
	case spf.Pass:
		return fmt.Sprintf("%s is authorised by %q", ip, mech)
	case spf.Fail:
		return fmt.Sprintf("%q forbids %s: receivers may reject the mail", mech, ip)
	case spf.SoftFail:
		return fmt.Sprintf("%q says %s is probably not allowed: receivers accept but mark the mail", mech, ip)
	case spf.Neutral:
		if mech == "" {
			return fmt.Sprintf("no term of the record matched %s", ip)
		}
		return fmt.Sprintf("%q makes no statement about %s", mech, ip)
	case spf.None:
		return fmt.Sprintf("%s publishes no SPF record", domain)
	case spf.PermError:
		return "the record is invalid: " + spfErr(err)
	default:
		return "the evaluation failed: " + spfErr(err)
	}
}

// spfTerms are the ip4:/ip6: terms of the egress IPs.
func spfTerms(ips []netip.Addr) string {
	terms := make([]string, len(ips))
	for i, a := range ips {
		if a.Is4() {
			terms[i] = "ip4:" + a.String()
		} else {
			terms[i] = "ip6:" + a.String()
		}
	}
	return strings.Join(terms, " ")
}

// spfWith returns the record with the egress IPs inserted before its all
// or redirect term, or a new record when there is none (or several).
func spfWith(records []string, ips []netip.Addr) string {
	if len(records) != 1 {
		return "v=spf1 " + spfTerms(ips) + " ~all"
	}
	terms := strings.Fields(records[0])
	for i, t := range terms {
		name := strings.ToLower(strings.TrimLeft(t, "+-~?"))
		if name == "all" || strings.HasPrefix(name, "redirect=") {
			out := append(append(append([]string{}, terms[:i]...), spfTerms(ips)), terms[i:]...)
			return strings.Join(out, " ")
		}
	}
	return strings.Join(append(terms, spfTerms(ips)), " ")
}

// dkimCheck compares each of our keys for domain with the published one
// and verifies a signature made with it through DNS.
func (d *Doctor) dkimCheck(ctx context.Context, res *mx.Resolver, domain string) ([]admin.DKIMCheck, []admin.Finding) {
	keys := d.cfg.Signer.KeysFor(domain)
	if len(keys) == 0 {
		return []admin.DKIMCheck{}, []admin.Finding{{Severity: admin.SeverityError, Subject: domain,
			Problem: fmt.Sprintf("no DKIM key is configured for %s: its mail leaves unsigned, so DMARC rests on SPF alone and breaks on forwarding", domain),
			Fix:     fmt.Sprintf("generate a key (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s.pem), add {domain: %s, selector: s1, key_file: ...} to deliverer.dkim, and run this check again for the record to publish", domain, domain)}}
	}
	var out []admin.DKIMCheck
	var findings []admin.Finding
	for _, k := range keys {
		c := admin.DKIMCheck{Selector: k.Selector, Algorithm: k.Algorithm(), RecordName: k.RecordName()}
		fix := fmt.Sprintf("%s. IN TXT \"%s\"", k.RecordName(), k.Record())
		txts, err := lookupTXT(ctx, res, k.RecordName())
		switch {
		case notFound(err) || err == nil && len(txts) == 0:
			c.Status, c.Detail = admin.DKIMMissing, "no TXT record"
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: k.RecordName(),
				Problem: fmt.Sprintf("the DKIM key of selector %s is not published: receivers cannot verify our signatures", k.Selector), Fix: fix})
		case err != nil:
			c.Status, c.Detail = admin.DKIMError, errText(err)
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: k.RecordName(),
				Problem: "cannot look up the DKIM key: " + errText(err)})
		case len(txts) > 1:
			c.Status, c.Detail = admin.DKIMInvalid, fmt.Sprintf("%d TXT records (RFC 6376 §3.6.2.2 leaves that undefined; verifiers fail)", len(txts))
			c.Published = strings.Join(txts, " | ")
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: k.RecordName(),
				Problem: "several TXT records at " + k.RecordName(), Fix: "keep only " + fix})
		default:
			c.Published = txts[0]
			c.Status, c.Detail = compareKey(k, txts[0])
			if c.Status != admin.DKIMMatch {
				findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: k.RecordName(),
					Problem: fmt.Sprintf("the published DKIM key of selector %s is not ours (%s): our signatures fail", k.Selector, c.Detail), Fix: fix})
			}
		}
		if k.Domain != domain {
			findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: domain,
				Problem: fmt.Sprintf("mail from %s is signed with d=%s, which DMARC accepts only with relaxed alignment (adkim=r)", domain, k.Domain)})
		}
		c.SignatureValid, c.SignatureError = d.verifyOwn(ctx, res, k, domain)
		if !c.SignatureValid && c.Status == admin.DKIMMatch {
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: k.RecordName(),
				Problem: "a signature made with selector " + k.Selector + " does not verify: " + c.SignatureError})
		}
		out = append(out, c)
	}
	return out, findings
}

// compareKey parses a published key record (RFC 6376 §3.6.1) and compares
// its key with ours.
func compareKey(k *dkim.Key, record string) (string, string) {
	tags := map[string]string{}
	for _, part := range strings.Split(record, ";") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(strings.ToLower(name))] = strings.Join(strings.Fields(value), "")
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return admin.DKIMInvalid, fmt.Sprintf("v=%s, want DKIM1", v)
	}
	p, ok := tags["p"]
	if !ok {
		return admin.DKIMInvalid, "no p= tag"
	}
	if p == "" {
		return admin.DKIMInvalid, "the key is revoked (empty p=)"
	}
	raw, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return admin.DKIMInvalid, "p= is not base64"
	}
	algo := tags["k"]
	if algo == "" {
		algo = "rsa"
	}
	if algo != k.Algorithm() {
		return admin.DKIMMismatch, fmt.Sprintf("published k=%s, our key is %s", algo, k.Algorithm())
	}
	var pub crypto.PublicKey
	switch algo {
	case "ed25519":
		if len(raw) != ed25519.PublicKeySize {
			return admin.DKIMInvalid, fmt.Sprintf("an Ed25519 key of %d bytes, want %d", len(raw), ed25519.PublicKeySize)
		}
		pub = ed25519.PublicKey(raw)
	default:
		pub, err = x509.ParsePKIXPublicKey(raw)
		if err != nil {
			// RFC 6376 erratum 3017: some publish the bare RSAPublicKey.
			pub, err = x509.ParsePKCS1PublicKey(raw)
		}
		if err != nil {
			return admin.DKIMInvalid, "p= is not an RSA public key"
		}
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := k.Signer.Public().(equaler); ok && e.Equal(pub) {
		return admin.DKIMMatch, "published key equals our signing key"
	}
	return admin.DKIMMismatch, "another key is published"
}

// verifyOwn signs a small message with k and verifies it through DNS as a
// receiver would, so a key that matches on paper but fails in practice
// (wrong selector, broken quoting of a long record) shows.
func (d *Doctor) verifyOwn(ctx context.Context, res *mx.Resolver, k *dkim.Key, domain string) (bool, string) {
	msg := fmt.Sprintf("From: <postmaster@%s>\r\nTo: <postmaster@%s>\r\nSubject: sluice doctor DKIM self-test\r\nDate: %s\r\n"+
		"Message-ID: <doctor.%d@%s>\r\n\r\nThis message is signed and verified by sluice doctor auth; it is never sent.\r\n",
		domain, domain, d.now().UTC().Format(time.RFC1123Z), d.now().UnixNano(), d.cfg.Hostname)
	signed, err := dkim.NewSigner([]*dkim.Key{k}, dkim.Options{}).Sign(strings.NewReader(msg), "")
	if err != nil {
		return false, err.Error()
	}
	defer signed.Close()
	b, err := io.ReadAll(signed)
	if err != nil {
		return false, err.Error()
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(b), &msgdkim.VerifyOptions{LookupTXT: txtFunc(ctx, res)})
	if err != nil {
		return false, err.Error()
	}
	if len(vs) != 1 {
		return false, fmt.Sprintf("%d signatures found, want 1", len(vs))
	}
	if vs[0].Err != nil {
		return false, strings.TrimPrefix(vs[0].Err.Error(), "dkim: ")
	}
	return true, ""
}

// dmarcCheck finds and parses the DMARC record of domain, falling back to
// its organizational domain (RFC 7489 §6.6.3).
func (d *Doctor) dmarcCheck(ctx context.Context, res *mx.Resolver, domain string) (admin.DMARCCheck, []admin.Finding) {
	var c admin.DMARCCheck
	names := []string{"_dmarc." + domain}
	if org, err := publicsuffix.EffectiveTLDPlusOne(domain); err == nil && org != domain {
		names = append(names, "_dmarc."+org)
	}
	var records []string
	for _, n := range names {
		txts, err := lookupTXT(ctx, res, n)
		if err != nil && !notFound(err) {
			c.Error = errText(err)
			return c, []admin.Finding{{Severity: admin.SeverityError, Subject: n, Problem: "cannot look up the DMARC record: " + errText(err)}}
		}
		records = records[:0]
		for _, t := range txts {
			if strings.HasPrefix(t, "v=DMARC1") {
				records = append(records, t)
			}
		}
		if len(records) > 0 {
			c.At = n
			break
		}
	}
	suggest := fmt.Sprintf("_dmarc.%s. IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@%s\" (then move to p=quarantine and p=reject once the reports show only your own mail)", domain, domain)
	switch {
	case len(records) == 0:
		return c, []admin.Finding{{Severity: admin.SeverityError, Subject: "_dmarc." + domain,
			Problem: fmt.Sprintf("%s has no DMARC record: Gmail and Yahoo require one of bulk senders, and nobody reports abuse of the domain to you", domain),
			Fix:     suggest}}
	case len(records) > 1:
		c.Record = strings.Join(records, " | ")
		c.Error = "several DMARC records"
		return c, []admin.Finding{{Severity: admin.SeverityError, Subject: c.At,
			Problem: "several DMARC records: receivers apply none (RFC 7489 §6.6.3)", Fix: "keep exactly one"}}
	}
	c.Record = records[0]
	rec, err := dmarc.Parse(records[0])
	if err != nil {
		c.Error = strings.TrimPrefix(err.Error(), "dmarc: ")
		return c, []admin.Finding{{Severity: admin.SeverityError, Subject: c.At,
			Problem: "the DMARC record is invalid: " + c.Error, Fix: suggest}}
	}
	c.Found = true
	c.Policy = string(rec.Policy)
	c.SubdomainPolicy = string(rec.SubdomainPolicy)
	c.DKIMAlignment = alignment(rec.DKIMAlignment)
	c.SPFAlignment = alignment(rec.SPFAlignment)
	c.Percent = 100
	if rec.Percent != nil {
		c.Percent = *rec.Percent
	}
	c.AggregateTo = rec.ReportURIAggregate
	c.FailureTo = rec.ReportURIFailure

	var findings []admin.Finding
	if rec.Policy == dmarc.PolicyNone {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: c.At,
			Problem: "DMARC policy is p=none: monitoring only, spoofed mail from the domain is still delivered",
			Fix:     "once the aggregate reports show that all your mail passes, publish p=quarantine, then p=reject"})
	}
	if c.Percent < 100 {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: c.At,
			Problem: fmt.Sprintf("the policy applies to only pct=%d%% of failing mail", c.Percent)})
	}
	if len(c.AggregateTo) == 0 {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: c.At,
			Problem: "no rua= address: you receive no aggregate reports, so you cannot see who sends as the domain",
			Fix:     fmt.Sprintf("add rua=mailto:dmarc-reports@%s", domain)})
	}
	if rec.DKIMAlignment == dmarc.AlignmentStrict {
		for _, k := range d.cfg.Signer.KeysFor(domain) {
			if k.Domain != domain {
				findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: c.At,
					Problem: fmt.Sprintf("adkim=s requires d=%s exactly, but our key signs with d=%s", domain, k.Domain),
					Fix:     fmt.Sprintf("add a key for %s to deliverer.dkim, or publish adkim=r", domain)})
				break
			}
		}
	}
	return c, findings
}

func alignment(m dmarc.AlignmentMode) string {
	if m == dmarc.AlignmentStrict {
		return "strict"
	}
	return "relaxed"
}

// dedupe drops repeated findings (one per egress IP can say the same).
func dedupe(fs []admin.Finding) []admin.Finding {
	seen := map[admin.Finding]bool{}
	var out []admin.Finding
	for _, f := range fs {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}
