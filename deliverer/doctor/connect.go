package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/status"
	"github.com/sluice-mta/sluice/proto/admin"
)

// Limits of the connect check: a domain with ten MX hosts is tested on its
// first few, which are the ones deliveries use.
const (
	maxHosts        = 5
	maxAddrsPerHost = 3
)

// Connect checks the path to domain's mail servers from this host, the way
// a delivery would take it (static routes first, then MX, then the implicit
// MX of RFC 5321 §5.1): for each of the first MX hosts, its addresses in
// order until one greets, each with timed steps connect, banner, ehlo and
// starttls. Hosts are probed concurrently, so a dead primary does not eat
// the budget of the backups.
func (d *Doctor) Connect(ctx context.Context, req admin.DoctorRequest) admin.ConnectReport {
	start := time.Now()
	ctx, cancel, step := budget(ctx, req)
	defer cancel()
	domain := normDomain(req.Domain)
	rep := admin.ConnectReport{Deliverer: d.identity(), Domain: domain, Port: d.cfg.SMTPPort, Probes: []admin.MXProbe{}}
	var findings []admin.Finding
	finish := func() admin.ConnectReport {
		rep.Findings = nonNil(findings)
		rep.Budget = admin.BudgetInfo{ElapsedMS: ms(time.Since(start)), Exhausted: ctx.Err() != nil}
		return rep
	}

	route, lookups, err := d.route(ctx, d.resolver(), domain)
	if err != nil {
		rep.MXError = routeError(err)
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
			Problem: fmt.Sprintf("cannot find the mail servers of %s: %s", domain, rep.MXError)})
		rep.Verdict = verdict(findings, "")
		return finish()
	}
	rep.Static, rep.Implicit = route.Static, route.Implicit
	if route.Implicit {
		findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: domain,
			Problem: fmt.Sprintf("%s has no MX record; mail goes to its A/AAAA address (RFC 5321 §5.1)", domain)})
	}
	rep.Probes = d.probeHosts(ctx, route, lookups, step)

	reached := 0
	allTimeouts := len(rep.Probes) > 0
	for _, p := range rep.Probes {
		if p.Reached {
			reached++
		}
		if !connectTimedOut(p) {
			allTimeouts = false
		}
	}
	for _, p := range rep.Probes {
		if p.Reached {
			findings = append(findings, tlsFindings(p)...)
		}
	}
	switch {
	case reached > 0:
		for _, p := range rep.Probes {
			if !p.Reached {
				findings = append(findings, admin.Finding{Severity: admin.SeverityWarning, Subject: p.Host,
					Problem: fmt.Sprintf("MX %s does not work: %s", probeName(p), failedStep(p))})
			}
		}
		rep.Verdict = verdict(findings, fmt.Sprintf("%d of %d MX address(es) of %s answered on port %d", reached, len(rep.Probes), domain, d.cfg.SMTPPort))
		return finish()
	case allTimeouts && len(d.cfg.ProbeDomains) == 0:
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
			Problem: fmt.Sprintf("every MX of %s timed out on port %d; outbound port %d may be blocked", domain, d.cfg.SMTPPort, d.cfg.SMTPPort),
			Fix:     "set deliverer.doctor_probe_domains (e.g. gmail.com, outlook.com) so the check can tell a blocked port from a dead destination"})
	case allTimeouts:
		rep.Port25 = d.port25(ctx, step)
		if rep.Port25.Blocked {
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: fmt.Sprintf("port %d", d.cfg.SMTPPort),
				Problem: fmt.Sprintf("outbound port %d is blocked from this host: connections to every MX of %s and of %s time out",
					d.cfg.SMTPPort, domain, strings.Join(d.cfg.ProbeDomains, ", ")),
				Fix: fmt.Sprintf("ask the provider or firewall admin to allow outbound TCP port %d (most clouds block it by default), or relay through a smarthost with deliverer.routes", d.cfg.SMTPPort)})
		} else {
			findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
				Problem: fmt.Sprintf("every MX of %s timed out on port %d while other domains' servers answer: they are down, or they drop this IP", domain, d.cfg.SMTPPort)})
		}
	default:
		findings = append(findings, admin.Finding{Severity: admin.SeverityError, Subject: domain,
			Problem: fmt.Sprintf("no MX of %s could be used: %s", domain, firstFailure(rep.Probes))})
	}
	rep.Verdict = verdict(findings, "")
	return finish()
}

// route resolves domain as a delivery would (static routes, MX, implicit
// MX) with the check's resolver, and looks up the addresses of the first
// maxHosts hosts. lookups[i] is the outcome of host i's address lookup.
func (d *Doctor) route(ctx context.Context, res *mx.Resolver, domain string) (r mx.Route, lookups []admin.MXHost, err error) {
	if domain == "" {
		return mx.Route{}, nil, errors.New("no domain")
	}
	r, err = res.Route(ctx, domain)
	if err != nil {
		return r, nil, err
	}
	if len(r.Hosts) > maxHosts {
		r.Hosts = r.Hosts[:maxHosts]
	}
	lookups = make([]admin.MXHost, len(r.Hosts))
	for i := range r.Hosts {
		h := &r.Hosts[i]
		lookups[i] = admin.MXHost{Name: h.Name, Preference: h.Preference, Lookup: admin.LookupOK}
		if len(h.Addrs) == 0 {
			as, err := res.LookupHost(ctx, h.Name)
			h.Addrs = as
			lookups[i].Lookup = lookupStatus(err, len(as) > 0)
			if err != nil {
				lookups[i].Error = errText(err)
			}
		}
		lookups[i].Addrs = addrStrings(h.Addrs)
	}
	return r, lookups, nil
}

func routeError(err error) string {
	var se *status.Error
	if errors.As(err, &se) {
		return se.Text
	}
	return err.Error()
}

// probeHosts probes every host concurrently; results keep the host order.
func (d *Doctor) probeHosts(ctx context.Context, route mx.Route, lookups []admin.MXHost, step time.Duration) []admin.MXProbe {
	per := make([][]admin.MXProbe, len(route.Hosts))
	var wg sync.WaitGroup
	for i, h := range route.Hosts {
		wg.Go(func() {
			if len(h.Addrs) == 0 {
				// Why there is no address matters: a name that does not
				// exist is fixed in the zone, a timeout or SERVFAIL by
				// whoever runs its name servers.
				st := admin.Step{Name: "dns", Status: admin.StepFailed, Detail: "the MX host " + hostProblem(lookups[i])}
				if lookups[i].Lookup == admin.LookupTimeout {
					st.Status = admin.StepTimeout
				}
				per[i] = []admin.MXProbe{{Host: h.Name, Preference: h.Preference, Steps: []admin.Step{st}}}
				return
			}
			addrs := h.Addrs
			if len(addrs) > maxAddrsPerHost {
				addrs = addrs[:maxAddrsPerHost]
			}
			for _, a := range addrs {
				p := d.probe(ctx, h, netip.AddrPortFrom(a, uint16(h.Port)), step)
				per[i] = append(per[i], p)
				if p.Reached || ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	var out []admin.MXProbe
	for _, ps := range per {
		out = append(out, ps...)
	}
	if out == nil {
		out = []admin.MXProbe{}
	}
	return out
}

// probe talks to one address: connect, banner, EHLO, STARTTLS, EHLO, QUIT.
func (d *Doctor) probe(ctx context.Context, h mx.Host, addr netip.AddrPort, step time.Duration) admin.MXProbe {
	return d.probeTLS(ctx, h, addr, step, nil)
}

// probeTLS is probe, handing the TLS connection state, when there is one,
// to onTLS (the tls check judges it by the destination's policy).
func (d *Doctor) probeTLS(ctx context.Context, h mx.Host, addr netip.AddrPort, step time.Duration, onTLS func(tls.ConnectionState)) admin.MXProbe {
	p := admin.MXProbe{Host: h.Name, Preference: h.Preference, Addr: addr.String()}
	skip := func(names ...string) admin.MXProbe {
		for _, n := range names {
			p.Steps = append(p.Steps, admin.Step{Name: n, Status: admin.StepSkipped})
		}
		return p
	}
	t := time.Now()
	conn, err := (&net.Dialer{Timeout: step}).DialContext(ctx, "tcp", addr.String())
	if err != nil {
		p.Steps = append(p.Steps, failure("connect", t, err))
		return skip("banner", "ehlo", "starttls")
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	p.ConnectMS = ms(time.Since(t))
	p.Steps = append(p.Steps, admin.Step{Name: "connect", Status: admin.StepOK, DurationMS: p.ConnectMS})

	tc := textproto.NewConn(conn)
	t = time.Now()
	conn.SetDeadline(t.Add(step))
	code, msg, err := tc.ReadResponse(220)
	if err != nil {
		p.Steps = append(p.Steps, replyFailure("banner", t, code, msg, err))
		return skip("ehlo", "starttls")
	}
	p.Banner = firstLine(msg)
	p.Reached = true
	p.Steps = append(p.Steps, admin.Step{Name: "banner", Status: admin.StepOK, DurationMS: ms(time.Since(t)), Detail: "220 " + p.Banner})

	caps, st := ehlo(tc, conn, d.cfg.Hostname, step)
	p.Steps = append(p.Steps, st)
	if st.Status != admin.StepOK {
		return skip("starttls")
	}
	p.EHLO = caps
	if !offers(caps, "STARTTLS") {
		p.Steps = append(p.Steps, admin.Step{Name: "starttls", Status: admin.StepSkipped, Detail: "not offered"})
		quit(tc, conn)
		return p
	}
	t = time.Now()
	conn.SetDeadline(t.Add(step))
	if err := tc.PrintfLine("STARTTLS"); err != nil {
		p.Steps = append(p.Steps, failure("starttls", t, err))
		return p
	}
	if code, msg, err := tc.ReadResponse(220); err != nil {
		p.Steps = append(p.Steps, replyFailure("starttls", t, code, msg, err))
		return p
	}
	tlsConn := tls.Client(conn, &tls.Config{ServerName: h.Name,
		// The handshake must succeed whatever the certificate, as in a
		// delivery (opportunistic TLS, RFC 7435); verification is reported
		// separately below.
		InsecureSkipVerify: true, //nolint:gosec // see above
	})
	hctx, cancel := context.WithTimeout(ctx, step)
	err = tlsConn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		p.Steps = append(p.Steps, failure("starttls", t, err))
		return p
	}
	defer tlsConn.Close()
	cs := tlsConn.ConnectionState()
	if onTLS != nil {
		onTLS(cs)
	}
	p.TLS = tlsInfo(cs, h.Name, d.now())
	p.Steps = append(p.Steps, admin.Step{Name: "starttls", Status: admin.StepOK, DurationMS: ms(time.Since(t)),
		Detail: "TLS " + p.TLS.Version + " " + p.TLS.Cipher})
	ttc := textproto.NewConn(tlsConn)
	if caps, st := ehlo(ttc, tlsConn, d.cfg.Hostname, step); st.Status == admin.StepOK {
		p.TLS.PostTLSEHLO = caps
	}
	quit(ttc, tlsConn)
	return p
}

// ehlo sends EHLO and returns the capability lines.
func ehlo(tc *textproto.Conn, conn net.Conn, hostname string, step time.Duration) ([]string, admin.Step) {
	t := time.Now()
	conn.SetDeadline(t.Add(step))
	if err := tc.PrintfLine("EHLO %s", hostname); err != nil {
		return nil, failure("ehlo", t, err)
	}
	code, msg, err := tc.ReadResponse(250)
	if err != nil {
		return nil, replyFailure("ehlo", t, code, msg, err)
	}
	lines := strings.Split(msg, "\n")
	caps := []string{}
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			caps = append(caps, l)
		}
	}
	return caps, admin.Step{Name: "ehlo", Status: admin.StepOK, DurationMS: ms(time.Since(t)), Detail: fmt.Sprintf("%d capabilities", len(caps))}
}

func quit(tc *textproto.Conn, conn net.Conn) {
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	_ = tc.PrintfLine("QUIT")
	_, _, _ = tc.ReadResponse(221)
}

func offers(caps []string, ext string) bool {
	for _, c := range caps {
		k, _, _ := strings.Cut(c, " ")
		if strings.EqualFold(k, ext) {
			return true
		}
	}
	return false
}

// failure makes a step of a network error: a timeout, or a failure named
// by its cause.
func failure(name string, t time.Time, err error) admin.Step {
	s := admin.Step{Name: name, Status: admin.StepFailed, DurationMS: ms(time.Since(t))}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		s.Status = admin.StepTimeout
		s.Detail = fmt.Sprintf("no answer after %s", time.Since(t).Round(time.Millisecond))
	case errors.Is(err, syscall.ECONNREFUSED):
		s.Detail = "connection refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed):
		s.Detail = "connection reset or closed by the server"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		s.Detail = "no route to the host"
	default:
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			s.Detail = oe.Err.Error()
		} else {
			s.Detail = err.Error()
		}
	}
	return s
}

// replyFailure makes a step of a failed read of a reply: a wrong code, or
// a network error.
func replyFailure(name string, t time.Time, code int, msg string, err error) admin.Step {
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return admin.Step{Name: name, Status: admin.StepFailed, DurationMS: ms(time.Since(t)),
			Detail: fmt.Sprintf("%d %s", pe.Code, firstLine(pe.Msg))}
	}
	if code != 0 {
		return admin.Step{Name: name, Status: admin.StepFailed, DurationMS: ms(time.Since(t)), Detail: fmt.Sprintf("%d %s", code, firstLine(msg))}
	}
	return failure(name, t, err)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

func tlsInfo(cs tls.ConnectionState, host string, now time.Time) *admin.TLSInfo {
	info := &admin.TLSInfo{Version: tlsVersion(cs.Version), Cipher: tls.CipherSuiteName(cs.CipherSuite)}
	if len(cs.PeerCertificates) == 0 {
		info.VerifyError = "the server sent no certificate"
		return info
	}
	leaf := cs.PeerCertificates[0]
	info.Subject = leaf.Subject.String()
	info.Issuer = leaf.Issuer.String()
	info.DNSNames = leaf.DNSNames
	info.NotBefore = leaf.NotBefore.UTC().Format(time.RFC3339)
	info.NotAfter = leaf.NotAfter.UTC().Format(time.RFC3339)
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Intermediates: inter, CurrentTime: now})
	if err != nil {
		info.VerifyError = err.Error()
	} else {
		info.Verified = true
	}
	return info
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS10:
		return "1.0"
	}
	return fmt.Sprintf("0x%04x", v)
}

// tlsFindings grades a reached server's TLS.
func tlsFindings(p admin.MXProbe) []admin.Finding {
	switch {
	case p.TLS == nil && offers(p.EHLO, "STARTTLS"):
		return []admin.Finding{{Severity: admin.SeverityWarning, Subject: p.Host,
			Problem: fmt.Sprintf("MX %s [%s] offers STARTTLS but the handshake failed: %s", p.Host, p.Addr, failedStep(p))}}
	case p.TLS == nil && len(p.EHLO) > 0 || p.TLS == nil && stepStatus(p, "ehlo") == admin.StepOK:
		return []admin.Finding{{Severity: admin.SeverityWarning, Subject: p.Host,
			Problem: fmt.Sprintf("MX %s [%s] does not offer STARTTLS: mail to it travels in clear text", p.Host, p.Addr)}}
	case p.TLS != nil && !p.TLS.Verified:
		return []admin.Finding{{Severity: admin.SeverityWarning, Subject: p.Host,
			Problem: fmt.Sprintf("the certificate of MX %s does not verify (%s): delivery still uses TLS, but MTA-STS/DANE senders would refuse it", p.Host, p.TLS.VerifyError)}}
	}
	return nil
}

func stepStatus(p admin.MXProbe, name string) string {
	for _, s := range p.Steps {
		if s.Name == name {
			return s.Status
		}
	}
	return ""
}

// connectTimedOut reports whether the probe's TCP connection timed out.
func connectTimedOut(p admin.MXProbe) bool {
	return stepStatus(p, "connect") == admin.StepTimeout
}

// probeName is "host [addr]", or the host alone when it had no address.
func probeName(p admin.MXProbe) string {
	if p.Addr == "" {
		return p.Host
	}
	return fmt.Sprintf("%s [%s]", p.Host, p.Addr)
}

// failedStep describes the first step that did not succeed.
func failedStep(p admin.MXProbe) string {
	for _, s := range p.Steps {
		if s.Status == admin.StepFailed || s.Status == admin.StepTimeout {
			return s.Name + " " + s.Status + ": " + s.Detail
		}
	}
	return "no step failed"
}

func firstFailure(ps []admin.MXProbe) string {
	for _, p := range ps {
		if !p.Reached {
			return probeName(p) + " " + failedStep(p)
		}
	}
	return "no MX host"
}

// port25 tries the first MX address of each probe domain, concurrently,
// with a TCP connection only. The port counts as blocked when none connects
// and every failure was a timeout: a refusal or reset proves that packets
// get through.
func (d *Doctor) port25(ctx context.Context, step time.Duration) *admin.Port25 {
	res := &admin.Port25{Probes: make([]admin.Port25Probe, len(d.cfg.ProbeDomains))}
	timeouts := make([]bool, len(d.cfg.ProbeDomains))
	resolver := d.resolver()
	var wg sync.WaitGroup
	for i, dom := range d.cfg.ProbeDomains {
		wg.Go(func() {
			pr := admin.Port25Probe{Domain: dom}
			defer func() { res.Probes[i] = pr }()
			route, _, err := d.route(ctx, resolver, dom)
			if err != nil {
				pr.Detail = "MX lookup failed: " + routeError(err)
				return
			}
			for _, h := range route.Hosts {
				if len(h.Addrs) == 0 {
					continue
				}
				ap := netip.AddrPortFrom(h.Addrs[0], uint16(h.Port))
				t := time.Now()
				c, err := (&net.Dialer{Timeout: step}).DialContext(ctx, "tcp", ap.String())
				if err == nil {
					c.Close()
					pr.Reached, pr.Detail = true, fmt.Sprintf("connected to %s [%s] in %s", h.Name, ap, time.Since(t).Round(time.Millisecond))
					return
				}
				st := failure("connect", t, err)
				pr.Detail = fmt.Sprintf("%s [%s]: %s", h.Name, ap, st.Detail)
				timeouts[i] = st.Status == admin.StepTimeout
				// One host per domain: a second would double the wait.
				return
			}
			pr.Detail = "no MX host with an address"
		})
	}
	wg.Wait()
	res.Blocked = len(res.Probes) > 0
	for i, p := range res.Probes {
		if p.Reached || !timeouts[i] {
			res.Blocked = false
		}
	}
	return res
}
