package tlsrpt

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// Config is the reporter's part of the configuration.
type Config struct {
	Params
	// Hostname names this MTA: the Message-ID's domain.
	Hostname string
	// From is the report's From address; "" is tls-reports@<submitter>.
	From string
	// DNSServer answers the _smtp._tls TXT lookups (host:port); "" uses
	// the system's resolver.
	DNSServer string
	// HTTPClient POSTs the reports to https rua URLs; nil is a client
	// that verifies certificates against the system roots, with no proxy.
	// Whichever client, the reporter gives it HTTPTimeout when it has no
	// timeout and makes it refuse redirects that are not https or that
	// would turn the POST into a GET (tests pass a client trusting their
	// test CA).
	HTTPClient *http.Client
}

// HTTPTimeout bounds one POST of a report, redirects and answer included.
const HTTPTimeout = 30 * time.Second

const (
	// maxAnswer is how much of an https rua's answer is read.
	maxAnswer = 64 << 10
	// maxRedirects is how many (https, 307/308) redirects a POST follows.
	maxRedirects = 5
	// maxHTTPS is how many https rua URLs of a record get the report: a
	// record naming more would have each slow one hold up the run for
	// HTTPTimeout.
	maxHTTPS = 5
)

// Reporter sends the reports of finished days.
type Reporter struct {
	cfg  Config
	kv   jetstream.KeyValue
	js   jetstream.JetStream
	res  *net.Resolver
	http *http.Client
	ua   string
	log  *slog.Logger
}

// NewReporter returns a reporter reading counts and claims from kv
// (wire.BucketTLSRPT) and enqueueing reports with js.
func NewReporter(cfg Config, kv jetstream.KeyValue, js jetstream.JetStream, log *slog.Logger) *Reporter {
	res := net.DefaultResolver
	if cfg.DNSServer != "" {
		server := cfg.DNSServer
		res = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	if cfg.From == "" {
		cfg.From = "tls-reports@" + cfg.Submitter
	}
	ua := "Sluice-TLSRPT/1 (RFC 8460 reporter"
	if cfg.Hostname != "" {
		ua += "; " + cfg.Hostname
	}
	ua += ")"
	return &Reporter{cfg: cfg, kv: kv, js: js, res: res, http: httpClient(cfg.HTTPClient), ua: ua, log: log}
}

// httpClient returns a copy of c (nil: a client verifying certificates
// against the system roots) with the reporter's timeout and redirect rules.
func httpClient(c *http.Client) *http.Client {
	var cl http.Client
	if c != nil {
		cl = *c
	} else {
		d := &net.Dialer{Timeout: HTTPTimeout}
		cl.Transport = &http.Transport{
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
			DialContext:           d.DialContext,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   HTTPTimeout,
			ResponseHeaderTimeout: HTTPTimeout,
			MaxIdleConnsPerHost:   1,
			IdleConnTimeout:       30 * time.Second,
			// As for MTA-STS policies: a proxy from the environment would
			// see which domains we mail.
			Proxy: nil,
		}
	}
	if cl.Timeout <= 0 {
		cl.Timeout = HTTPTimeout
	}
	next := cl.CheckRedirect
	cl.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to %s refused: not https", req.URL.Redacted())
		}
		if req.Method != http.MethodPost {
			// 301, 302 and 303 turn the POST into a GET without the report.
			return fmt.Errorf("redirect to %s refused: it would drop the report (%s instead of POST)", req.URL.Redacted(), req.Method)
		}
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &cl
}

// Sent is what SendDay did for one domain's report.
type Sent struct {
	Domain string
	// QueueID and To are the report mail this call enqueued to the
	// record's mailto addresses; empty when the record has none, when the
	// enqueue failed, or when the stream already held the same report
	// (another instance's publish, or an earlier run's).
	QueueID string
	To      []string
	// HTTPS are the record's https URLs that accepted the POST (2xx).
	HTTPS []string
	// Failed are the destinations that did not take the report.
	Failed []Failure
}

// Failure is a destination that did not take a report: an https URL, or
// "mailto:" and the addresses when the report mail could not be enqueued.
type Failure struct {
	Dest string
	Err  error
}

func (f Failure) Error() string { return f.Dest + ": " + f.Err.Error() }
func (f Failure) Unwrap() error { return f.Err }

// SendDay sends the report of every domain with counts on day
// (YYYY-MM-DD) and a TLS-RPT record, unless another instance claimed it
// first; now dates the messages. It returns the reports this call sent.
//
// A report goes to all the record's rua URIs: one mail to the mailto
// addresses, then a POST to each https URL. It counts as sent, and is
// claimed as sent.<day>.<domain>, once at least one of them took it (RFC
// 8460 §3: a report is delivered once an endpoint accepts it): the mail
// enqueued, or a POST answered 2xx. The destinations that failed are
// logged with their cause and listed in Sent.Failed, and are not tried
// again for that day. When none took it there is no claim and the domain's
// error is returned: the next run sends the whole report again.
func (r *Reporter) SendDay(ctx context.Context, day string, now time.Time) ([]Sent, error) {
	keys, err := r.kv.ListKeysFiltered(ctx, "day."+day+".>")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	byDomain := map[string][]wire.TLSRPTCounts{}
	for k := range keys.Keys() {
		e, err := r.kv.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		var c wire.TLSRPTCounts
		if err := json.Unmarshal(e.Value(), &c); err != nil {
			r.log.WarnContext(ctx, "tls report: undecodable counts", "key", k, "err", err)
			continue
		}
		byDomain[c.Domain] = append(byDomain[c.Domain], c)
	}
	domains := make([]string, 0, len(byDomain))
	for d := range byDomain {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	var sent []Sent
	var errs []error
	for _, d := range domains {
		s, err := r.sendDomain(ctx, day, d, byDomain[d], now)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d, err))
			continue
		}
		if s != nil {
			sent = append(sent, *s)
		}
	}
	return sent, errors.Join(errs...)
}

func (r *Reporter) sendDomain(ctx context.Context, day, domain string, counts []wire.TLSRPTCounts, now time.Time) (*Sent, error) {
	mailto, https, err := r.lookup(ctx, domain)
	if err != nil || len(mailto)+len(https) == 0 {
		return nil, err
	}
	// A report is sent once: the claim sent.<day>.<domain> records it.
	// It is written after the deliveries, so that an instance dying
	// between the two leaves a report sent twice (receivers tell them
	// apart by report-id) rather than none; instances racing publish the
	// mail under the same message id, which the stream deduplicates (but
	// may both POST it).
	claim := wire.TLSRPTSentKey(day, domain)
	if _, err := r.kv.Get(ctx, claim); err == nil {
		return nil, nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, err
	}
	rep, err := Build(r.cfg.Params, day, domain, counts)
	if err != nil {
		return nil, err
	}
	s := Sent{Domain: domain}
	accepted := 0
	fail := func(dest string, err error, msg string) {
		r.log.WarnContext(ctx, msg, "domain", domain, "day", day, "rua", dest, "err", err)
		s.Failed = append(s.Failed, Failure{Dest: dest, Err: err})
	}
	if len(mailto) > 0 {
		qid, dup, err := r.enqueue(ctx, day, domain, mailto, rep, now)
		switch {
		case err != nil:
			fail("mailto:"+strings.Join(mailto, ","), err, "tls report: mail not enqueued")
		case dup:
			accepted++ // the stream holds this report already
		default:
			accepted++
			s.QueueID, s.To = qid, mailto
			r.log.InfoContext(ctx, "tls report enqueued", "domain", domain, "day", day, "queue_id", qid, "rua", strings.Join(mailto, ","))
		}
	}
	if len(https) > 0 {
		gz, err := Encode(rep)
		if err != nil {
			return nil, err
		}
		for _, u := range https {
			if err := r.post(ctx, u, gz); err != nil {
				fail(u, err, "tls report: https rua did not take it")
				continue
			}
			accepted++
			s.HTTPS = append(s.HTTPS, u)
			r.log.InfoContext(ctx, "tls report posted", "domain", domain, "day", day, "rua", u)
		}
	}
	if accepted == 0 {
		errs := make([]error, len(s.Failed))
		for i, f := range s.Failed {
			errs[i] = f
		}
		return nil, fmt.Errorf("no rua took the report: %w", errors.Join(errs...))
	}
	if _, err := r.kv.Create(ctx, claim, []byte(r.cfg.Hostname)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("report sent (queue id %q, https %v), but not recorded as sent: %w", s.QueueID, s.HTTPS, err)
	}
	if s.QueueID == "" && len(s.HTTPS) == 0 && len(s.Failed) == 0 {
		return nil, nil // only another instance's publish of the same report
	}
	return &s, nil
}

// enqueue publishes the report mail to the mailto addresses on
// SLUICE_MSGS; dup is true when the stream already had it.
func (r *Reporter) enqueue(ctx context.Context, day, domain string, mailto []string, rep Report, now time.Time) (qid string, dup bool, err error) {
	qid = wire.NewQueueID(now)
	body, err := Write(r.cfg.Params, Message{From: r.cfg.From, To: mailto, Date: now, MessageID: qid + "@" + r.cfg.Hostname,
		Boundary: "=_sluice-tlsrpt-" + qid}, domain, rep)
	if err != nil {
		return "", false, err
	}
	msg := &sluicev1.Message{
		Schema: wire.SchemaVersion, QueueId: qid,
		// The null reverse-path: a report that cannot be delivered is not
		// worth a bounce (RFC 8460 §5.3 leaves failures to the sender).
		MailFrom:         "",
		ReceivedUnixNano: now.UnixNano(), Helo: r.cfg.Hostname, BodyType: "7BIT",
		Body: body, BodySize: int64(len(body)),
	}
	for _, a := range mailto {
		msg.Recipients = append(msg.Recipients, &sluicev1.Recipient{Address: a, Notify: uint32(sluicev1.Notify_NOTIFY_NEVER)})
	}
	data, err := proto.Marshal(msg)
	if err != nil {
		return "", false, err
	}
	out := nats.NewMsg(wire.MessageSubject(qid))
	out.Data = data
	out.Header.Set(wire.HeaderQueueID, qid)
	pa, err := r.js.PublishMsg(ctx, out, jetstream.WithMsgID("tlsrpt-"+day+"-"+domain), jetstream.WithExpectStream(wire.StreamMessages))
	if err != nil {
		return "", false, err
	}
	return qid, pa.Duplicate, nil
}

// post sends the gzipped report gz to the https rua u (RFC 8460 §5.4):
// a POST with the media type application/tlsrpt+gzip, which any 2xx answer
// accepts.
func (r *Reporter) post(ctx context.Context, u string, gz []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	req.Header.Set("User-Agent", r.ua)
	resp, err := r.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is logged apart
			if ue.Timeout() {
				err = fmt.Errorf("timeout: %w", err)
			}
		}
		return err
	}
	defer resp.Body.Close()
	// Read (a bounded part of) the answer, so that the connection can be
	// reused and a refusal quoted.
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP status %s: %q", resp.Status, quote(answer))
	}
	return nil
}

// quote returns the start of an answer's body, for the log: one line of
// printable text.
func quote(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, strings.ToValidUTF8(string(b), "?"))
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// lookup returns the mailto addresses and https URLs of domain's TLS-RPT
// record; none when it has none (§3: exactly one record counts).
func (r *Reporter) lookup(ctx context.Context, domain string) (mailto, https []string, err error) {
	txts, err := r.res.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	n := 0
	for _, t := range txts {
		if m, h, ok := ParseRecord(t); ok {
			n++
			mailto, https = m, h
		}
	}
	if n != 1 {
		return nil, nil, nil
	}
	if len(https) > maxHTTPS {
		r.log.WarnContext(ctx, "tls report: record names too many https rua; the first ones get the report",
			"domain", domain, "https", len(https), "max", maxHTTPS)
		https = https[:maxHTTPS]
	}
	return mailto, https, nil
}

// Run sends, until ctx ends, the reports of each day once it is over:
// every interval it tries yesterday (UTC), which the claims make
// idempotent across instances and restarts.
func (r *Reporter) Run(ctx context.Context, now func() time.Time, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n := now()
		if _, err := r.SendDay(ctx, wire.TLSRPTDay(n.Add(-24*time.Hour)), n); err != nil && ctx.Err() == nil {
			r.log.WarnContext(ctx, "tls reports", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
