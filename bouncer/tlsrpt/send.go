package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

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
}

// Reporter sends the reports of finished days.
type Reporter struct {
	cfg Config
	kv  jetstream.KeyValue
	js  jetstream.JetStream
	res *net.Resolver
	log *slog.Logger
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
	return &Reporter{cfg: cfg, kv: kv, js: js, res: res, log: log}
}

// Sent is what SendDay did for one domain.
type Sent struct {
	Domain  string
	QueueID string
	To      []string
}

// SendDay sends the report of every domain with counts on day
// (YYYY-MM-DD) and a TLS-RPT record, unless another instance claimed it
// first; now dates the messages. It returns the reports this call sent.
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
	rua, err := r.lookup(ctx, domain)
	if err != nil || len(rua) == 0 {
		return nil, err
	}
	// A report is sent once: the claim sent.<day>.<domain> records it.
	// It is written after the publish, so that an instance dying between
	// the two leaves a report sent twice (receivers tell them apart by
	// report-id) rather than none; instances racing publish under the
	// same message id, which the stream deduplicates.
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
	qid := wire.NewQueueID(now)
	body, err := Write(r.cfg.Params, Message{From: r.cfg.From, To: rua, Date: now, MessageID: qid + "@" + r.cfg.Hostname,
		Boundary: "=_sluice-tlsrpt-" + qid}, domain, rep)
	if err != nil {
		return nil, err
	}
	msg := &sluicev1.Message{
		Schema: wire.SchemaVersion, QueueId: qid,
		// The null reverse-path: a report that cannot be delivered is not
		// worth a bounce (RFC 8460 §5.3 leaves failures to the sender).
		MailFrom:         "",
		ReceivedUnixNano: now.UnixNano(), Helo: r.cfg.Hostname, BodyType: "7BIT",
		Body: body, BodySize: int64(len(body)),
	}
	for _, a := range rua {
		msg.Recipients = append(msg.Recipients, &sluicev1.Recipient{Address: a, Notify: uint32(sluicev1.Notify_NOTIFY_NEVER)})
	}
	data, err := proto.Marshal(msg)
	if err != nil {
		return nil, err
	}
	out := nats.NewMsg(wire.MessageSubject(qid))
	out.Data = data
	out.Header.Set(wire.HeaderQueueID, qid)
	pa, err := r.js.PublishMsg(ctx, out, jetstream.WithMsgID("tlsrpt-"+day+"-"+domain), jetstream.WithExpectStream(wire.StreamMessages))
	if err != nil {
		return nil, err // no claim: a later run sends it
	}
	if _, err := r.kv.Create(ctx, claim, []byte(r.cfg.Hostname)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("report enqueued as %s, but not recorded as sent: %w", qid, err)
	}
	if pa.Duplicate {
		return nil, nil // another instance's publish of the same report
	}
	r.log.InfoContext(ctx, "tls report enqueued", "domain", domain, "day", day, "queue_id", qid, "rua", strings.Join(rua, ","))
	return &Sent{Domain: domain, QueueID: qid, To: rua}, nil
}

// lookup returns the mailto addresses of domain's TLS-RPT record; none
// when it has none (§3: exactly one record counts).
func (r *Reporter) lookup(ctx context.Context, domain string) ([]string, error) {
	txts, err := r.res.LookupTXT(ctx, "_smtp._tls."+domain)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, nil
		}
		return nil, err
	}
	var found [][]string
	for _, t := range txts {
		if rua, ok := ParseRecord(t); ok {
			found = append(found, rua)
		}
	}
	if len(found) != 1 {
		return nil, nil
	}
	return found[0], nil
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
