// Package doctor runs the delivery checks of `sluice doctor` on a deliverer
// host, where the egress IP, the resolver and the firewall that matter are:
//
//   - DNS: the EHLO name resolves to the egress IPs, each egress IP has a
//     PTR record that resolves back to it (forward-confirmed reverse DNS,
//     which receivers such as Gmail require), and the mail DNS of the
//     sending domains or of any domains asked about: MX, null MX (RFC
//     7505), implicit MX (RFC 5321 §5.1) and the addresses of every MX
//     host, with the reason when one has none. Each finding names the
//     record that fixes it.
//   - DNSBL: each egress IP against each configured blocklist zone (RFC
//     5782: reversed octets or IPv6 nibbles under the zone, A for the
//     listing, TXT for its reason), with a gauge per zone for alerts.
//   - Connect: MX resolution, then per MX host the TCP connect time, the
//     banner, the EHLO capabilities and the STARTTLS handshake (version,
//     cipher, certificate), each step with its own timeout. When every
//     connection times out, the MX hosts of well-known domains are tried,
//     and if none answers either, outbound port 25 is reported as blocked.
//   - Auth: the domain's SPF record evaluated for each egress IP
//     (blitiri.com.ar/go/spf), the DKIM public key of each configured
//     selector compared with our signing key and a fresh signature verified
//     against it through DNS (go-msgauth), and the DMARC record parsed.
//
// Every DNS query goes to the deliverer's configured DNS server through the
// deliverer's own resolver (package mx), with nothing cached between checks. The reports are the proto/admin types the admin API returns;
// Serve registers the checks as nats micro endpoints.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/proto/admin"
)

// Config is what the checks need to know about this deliverer.
type Config struct {
	// Instance names the deliverer in reports.
	Instance string
	// Hostname is the EHLO name.
	Hostname string
	// EgressIPs are the addresses mail leaves from.
	EgressIPs []netip.Addr
	// EgressGuessed marks EgressIPs as found by DetectEgress, not
	// configured.
	EgressGuessed bool
	// SendingDomains are the domains the dns check looks at when a request
	// names none.
	SendingDomains []string
	// DNSBLZones are the blocklists.
	DNSBLZones []string
	// ProbeDomains are the well-known domains of the port 25 check.
	ProbeDomains []string
	// Signer holds our DKIM keys; nil means none.
	Signer *dkim.Signer
	// DNSServer (host:port) and DNSTimeout are the deliverer's resolver.
	DNSServer  string
	DNSTimeout time.Duration
	// SMTPPort is the port of MX hosts (25).
	SMTPPort int
	// Routes are the deliverer's static routes, which the connect check
	// follows like a delivery would.
	Routes map[string]string
	// Meter records sluice_deliverer_dnsbl_listed; nil disables it.
	Meter metric.Meter
	// TLSPolicy is deliverer.tls_policy, and TLSOptions what tests inject
	// (roots, the dial of MTA-STS fetches), for the tls check.
	TLSPolicy  tlspolicy.Config
	TLSOptions tlspolicy.Options
}

// Doctor runs checks. It is safe for concurrent use.
type Doctor struct {
	cfg Config
	// base is a resolver New built to check the configuration; each check
	// uses a new one (see resolver).
	base   *mx.Resolver
	listed metric.Int64Gauge
	checks metric.Int64Counter
	// serviceID is set by Serve once the micro service exists.
	serviceID string
	now       func() time.Time
}

// Default step timeout and check budget, when a request gives none.
const (
	defaultStep   = 10 * time.Second
	defaultBudget = 50 * time.Second
	maxBudget     = 10 * time.Minute
)

// New returns a Doctor.
func New(cfg Config) (*Doctor, error) {
	if cfg.DNSServer == "" {
		return nil, errors.New("doctor: no DNS server")
	}
	if cfg.Hostname == "" {
		return nil, errors.New("doctor: no hostname")
	}
	if cfg.DNSTimeout <= 0 {
		cfg.DNSTimeout = 5 * time.Second
	}
	if cfg.SMTPPort == 0 {
		cfg.SMTPPort = 25
	}
	if cfg.Signer == nil {
		cfg.Signer = dkim.NewSigner(nil, dkim.Options{})
	}
	m := cfg.Meter
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	d := &Doctor{cfg: cfg, now: time.Now}
	var err error
	if d.base, err = mx.New(d.mxConfig()); err != nil {
		return nil, fmt.Errorf("doctor: %w", err)
	}
	// Label values: zone = a configured DNSBL zone; ip = an egress IP (a
	// handful per deliverer). 1 while listed, 0 while not; unchanged when
	// the last check of the pair failed (see the checks counter).
	d.listed, err = m.Int64Gauge("sluice_deliverer_dnsbl_listed",
		metric.WithDescription("Whether an egress IP is listed in a DNSBL zone (1) or not (0), as of the last check."))
	if err != nil {
		return nil, err
	}
	// Label values: zone as above; result = listed | not_listed | error.
	d.checks, err = m.Int64Counter("sluice_deliverer_dnsbl_checks_total",
		metric.WithDescription("DNSBL lookups of egress IPs by zone and result."))
	if err != nil {
		return nil, err
	}
	return d, nil
}

// identity is the Deliverer part of every report.
func (d *Doctor) identity() admin.DelivererIdentity {
	ips := make([]string, len(d.cfg.EgressIPs))
	for i, a := range d.cfg.EgressIPs {
		ips[i] = a.String()
	}
	return admin.DelivererIdentity{ServiceID: d.serviceID, Instance: d.cfg.Instance, Hostname: d.cfg.Hostname,
		EgressIPs: ips, EgressGuessed: d.cfg.EgressGuessed, DNSServer: d.cfg.DNSServer}
}

// egressFindings warns about a guessed or missing egress address, which
// every check that uses it depends on.
func (d *Doctor) egressFindings() []admin.Finding {
	if len(d.cfg.EgressIPs) == 0 {
		return []admin.Finding{{Severity: admin.SeverityError, Subject: "deliverer.egress_ips",
			Problem: "no egress IP is configured and none could be detected",
			Fix:     "set deliverer.egress_ips to the public addresses this deliverer sends from"}}
	}
	if d.cfg.EgressGuessed {
		return []admin.Finding{{Severity: admin.SeverityWarning, Subject: "deliverer.egress_ips",
			Problem: fmt.Sprintf("egress IP %s is a guess (the host's primary outbound address); behind NAT receivers see another one", d.cfg.EgressIPs[0]),
			Fix:     "set deliverer.egress_ips to the public addresses this deliverer sends from"}}
	}
	return nil
}

// verdict sums findings up: the worst severity, and a summary naming the
// first problem of that severity and how many there are.
func verdict(findings []admin.Finding, okSummary string) admin.Verdict {
	worst := admin.SeverityOK
	for _, f := range findings {
		if f.Severity.Rank() > worst.Rank() {
			worst = f.Severity
		}
	}
	if worst == admin.SeverityOK {
		return admin.Verdict{Severity: admin.SeverityOK, Summary: okSummary}
	}
	n, first := 0, ""
	for _, f := range findings {
		if f.Severity == worst {
			if n == 0 {
				first = f.Problem
			}
			n++
		}
	}
	if n > 1 {
		first = fmt.Sprintf("%s (and %d more)", first, n-1)
	}
	return admin.Verdict{Severity: worst, Summary: first}
}

// budget returns the step timeout and the deadline context of a request.
func budget(ctx context.Context, req admin.DoctorRequest) (context.Context, context.CancelFunc, time.Duration) {
	step := time.Duration(req.StepTimeoutMS) * time.Millisecond
	if step <= 0 {
		step = defaultStep
	}
	b := time.Duration(req.BudgetMS) * time.Millisecond
	if b <= 0 {
		b = defaultBudget
	}
	b = min(b, maxBudget)
	ctx, cancel := context.WithTimeout(ctx, b)
	return ctx, cancel, step
}

// normDomain lower-cases a domain and drops a final dot; "" when it is not
// a plausible domain name.
func normDomain(s string) string {
	d := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if d == "" || len(d) > 253 || !strings.Contains(d, ".") && d != "localhost" {
		return ""
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 {
			return ""
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return ""
			}
		}
	}
	return d
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	return slices.Contains(as, a.Unmap())
}

// addrRecord is the zone-file record that gives name the address a.
func addrRecord(name string, a netip.Addr) string {
	if a.Is4() {
		return fmt.Sprintf("%s. IN A %s", name, a)
	}
	return fmt.Sprintf("%s. IN AAAA %s", name, a)
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

// EgressIPs returns the egress IPs the checks use.
func (d *Doctor) EgressIPs() []string { return addrStrings(d.cfg.EgressIPs) }
