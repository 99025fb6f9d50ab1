// Package authres evaluates the authentication of mail received as the
// inbound MX: SPF (RFC 7208) of the client and envelope sender, DKIM
// signatures (RFC 6376) of the message, and the DMARC policy (RFC 7489) of
// the author's domain, and records the results in an
// Authentication-Results header field (RFC 8601) for the mailbox host.
//
// The checks use blitiri.com.ar/go/spf and emersion/go-msgauth's dkim and
// dmarc packages with the resolver they are given, so that a configured DNS
// server (ingress.dns_server) and tests' in-process servers are used, not
// whatever the process would otherwise ask.
package authres

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/mail"
	"net/netip"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/publicsuffix"
)

// Resolver is what the checks look up; *net.Resolver implements it (the
// interface is spf.DNSResolver's).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// NewResolver returns a resolver that sends every query to server
// (host:port, over UDP with TCP fallback), or the system's resolver when
// server is empty.
func NewResolver(server string) *net.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
}

// Input is what a received message is checked on.
type Input struct {
	// Client is the address of the SMTP client.
	Client netip.Addr
	// Helo is the name the client gave in EHLO or HELO.
	Helo string
	// MailFrom is the envelope sender, "" for the null sender.
	MailFrom string
	// Message is the message as the client sent it, header and body.
	Message []byte
}

// Values of the results (RFC 8601 §2.7).
const (
	Pass      = "pass"
	Fail      = "fail"
	SoftFail  = "softfail"
	Neutral   = "neutral"
	None      = "none"
	TempError = "temperror"
	PermError = "permerror"
)

// Result is the outcome of the checks.
type Result struct {
	// Header is the complete Authentication-Results field, folded, ending
	// in CRLF, to prepend to the message.
	Header []byte
	// SPF is the SPF result for the envelope sender (or the HELO name for
	// the null sender), and SPFDomain the domain it is about.
	SPF       string
	SPFDomain string
	// DKIM has one entry per signature checked, in header order.
	DKIM []DKIM
	// DMARC is the DMARC evaluation.
	DMARC DMARC
}

// DKIM is the result of one signature.
type DKIM struct {
	Result   string
	Domain   string // d=
	Selector string // s=
	B        string // the first 8 characters of b= (RFC 6008)
}

// DMARC is the DMARC verdict.
type DMARC struct {
	// Result is pass, fail, none (no policy or no usable From domain),
	// temperror or permerror.
	Result string
	// Domain is the RFC 5322.From domain the policy is about.
	Domain string
	// Policy is the policy that applies to this message (p=, or sp= for a
	// subdomain of the organizational domain), after pct= sampling; empty
	// when there is no policy.
	Policy dmarc.Policy
	// Reject is set when the message failed and the policy asks to
	// reject it.
	Reject bool
}

// maxSignatures bounds the DKIM signatures verified per message, so that a
// message cannot make the server do unbounded work and DNS queries.
const maxSignatures = 5

// Check runs SPF, DKIM and DMARC on in, asking r, and returns the results
// and the Authentication-Results field for authServID (our host name).
// ctx bounds every DNS query; failures to get answers become temperror
// results, never an error: a message is always accepted or refused on its
// results.
func Check(ctx context.Context, r Resolver, authServID string, in Input) Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	var res Result
	res.SPF, res.SPFDomain = checkSPF(ctx, r, in)
	res.DKIM = checkDKIM(ctx, r, in.Message)
	res.DMARC = checkDMARC(ctx, r, in.Message, res)
	res.Header = format(authServID, in, res)
	return res
}

// checkSPF evaluates SPF for the MAIL FROM identity, or for the HELO
// identity when the sender is null (RFC 7208 §2.4).
func checkSPF(ctx context.Context, r Resolver, in Input) (string, string) {
	sender, domain := in.MailFrom, domainOf(in.MailFrom)
	if sender == "" {
		sender, domain = "postmaster@"+in.Helo, in.Helo
	}
	if !in.Client.IsValid() || domain == "" {
		return None, domain
	}
	ip := net.IP(in.Client.Unmap().AsSlice())
	result, _ := spf.CheckHostWithSender(ip, in.Helo, sender, spf.WithResolver(r), spf.WithContext(ctx))
	switch result {
	case spf.Pass, spf.Fail, spf.SoftFail, spf.Neutral, spf.None, spf.TempError, spf.PermError:
		return string(result), domain
	}
	return None, domain
}

// checkDKIM verifies up to maxSignatures signatures.
func checkDKIM(ctx context.Context, r Resolver, msg []byte) []DKIM {
	sigs := signatures(msg)
	if len(sigs) == 0 {
		return nil
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT:        func(name string) ([]string, error) { return r.LookupTXT(ctx, name) },
		MaxVerifications: maxSignatures,
	})
	if len(verifs) == 0 && err != nil {
		// The header could not be read: the signatures cannot be checked.
		return []DKIM{{Result: PermError}}
	}
	out := make([]DKIM, 0, len(verifs))
	for i, v := range verifs {
		d := DKIM{Domain: v.Domain}
		switch {
		case v.Err == nil:
			d.Result = Pass
		case dkim.IsTempFail(v.Err):
			d.Result = TempError
		case dkim.IsPermFail(v.Err):
			d.Result = PermError
		default:
			d.Result = Fail
		}
		if i < len(sigs) {
			d.Selector, d.B = sigs[i].selector, sigs[i].b
		}
		out = append(out, d)
	}
	return out
}

type signature struct{ selector, b string }

// signatures reads the s= and b= tags of the DKIM-Signature fields, in
// header order (the order in which dkim verifies them).
func signatures(msg []byte) []signature {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return nil
	}
	var out []signature
	for _, v := range m.Header["Dkim-Signature"] {
		var s signature
		for _, tag := range strings.Split(v, ";") {
			k, val, ok := strings.Cut(tag, "=")
			if !ok {
				continue
			}
			val = strings.Join(strings.Fields(val), "")
			switch strings.TrimSpace(k) {
			case "s":
				s.selector = val
			case "b":
				s.b = val[:min(8, len(val))]
			}
		}
		out = append(out, s)
	}
	return out
}

// checkDMARC finds the policy of the From domain and checks alignment
// (RFC 7489 §3.1, §6.6).
func checkDMARC(ctx context.Context, r Resolver, msg []byte, res Result) DMARC {
	from, ok := fromDomain(msg)
	if !ok {
		// RFC 7489 §6.6.1: without exactly one author domain the message
		// cannot be evaluated.
		return DMARC{Result: PermError}
	}
	v := DMARC{Domain: from}
	lookup := &dmarc.LookupOptions{LookupTXT: func(name string) ([]string, error) { return r.LookupTXT(ctx, name) }}
	org := orgDomain(from)
	rec, err := dmarc.LookupWithOptions(from, lookup)
	atOrg := false
	if errors.Is(err, dmarc.ErrNoPolicy) && org != from {
		// §6.6.3: no record at the author domain: ask its organizational
		// domain.
		rec, err = dmarc.LookupWithOptions(org, lookup)
		atOrg = true
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		v.Result = None
		return v
	case dmarc.IsTempFail(err):
		v.Result = TempError
		return v
	case err != nil:
		v.Result = PermError
		return v
	}
	v.Policy = rec.Policy
	if atOrg && rec.SubdomainPolicy != "" {
		v.Policy = rec.SubdomainPolicy
	}
	spfAligned := res.SPF == Pass && aligned(res.SPFDomain, from, rec.SPFAlignment)
	dkimAligned := false
	for _, d := range res.DKIM {
		if d.Result == Pass && aligned(d.Domain, from, rec.DKIMAlignment) {
			dkimAligned = true
		}
	}
	if spfAligned || dkimAligned {
		v.Result = Pass
		return v
	}
	v.Result = Fail
	// §6.6.4: pct= applies the policy to that share of failing messages;
	// the others get the next weaker policy.
	if rec.Percent != nil && *rec.Percent < 100 && rand.IntN(100) >= *rec.Percent {
		switch v.Policy {
		case dmarc.PolicyReject:
			v.Policy = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			v.Policy = dmarc.PolicyNone
		}
	}
	v.Reject = v.Policy == dmarc.PolicyReject
	return v
}

// fromDomain returns the domain of the single author address of the
// message, lower-cased.
func fromDomain(msg []byte) (string, bool) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return "", false
	}
	froms := m.Header["From"]
	if len(froms) != 1 {
		return "", false
	}
	addrs, err := mail.ParseAddressList(froms[0])
	if err != nil || len(addrs) != 1 {
		return "", false
	}
	d := domainOf(addrs[0].Address)
	if d == "" || !validDomain(d) {
		return "", false
	}
	return d, true
}

// aligned compares an authenticated domain with the From domain: equal in
// strict mode, same organizational domain in relaxed mode (RFC 7489
// §3.1.1, §3.1.2).
func aligned(domain, from string, mode dmarc.AlignmentMode) bool {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" {
		return false
	}
	if mode == dmarc.AlignmentStrict {
		return domain == from
	}
	return orgDomain(domain) == orgDomain(from)
}

// orgDomain is the organizational domain (RFC 7489 §3.2): the public
// suffix plus one label.
func orgDomain(d string) string {
	o, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return o
}

func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[i+1:], "."))
}

// validDomain accepts host names (letters, digits, hyphens, dots, and
// U-labels byte-wise): the From domain goes into DNS queries and into our
// header.
func validDomain(d string) bool {
	if len(d) > 253 || strings.HasPrefix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c >= 0x80) {
			return false
		}
	}
	return true
}

// DefaultTimeout bounds the checks of one message when the caller's
// context has no deadline.
const DefaultTimeout = 10 * time.Second
