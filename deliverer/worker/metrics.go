package worker

import (
	"bytes"
	"context"
	"io"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/deliverer/shaping"
)

// instruments are the service's metrics. Label values:
//
//	sluice_deliverer_attempts_total{result, reason}
//	    result: delivered | deferred | failed (see summarize)
//	    reason: none | dns | connect | tls | remote | timeout | throttled |
//	            protocol | null_mx | no_domain | internal | require_tls
//	sluice_deliverer_attempt_duration_seconds{result}   same result values
//	sluice_deliverer_jobs_in_flight                     no labels
//	sluice_deliverer_jobs_terminated_total{reason}      undecodable | invalid
//	sluice_deliverer_result_publish_failures_total      no labels
//	sluice_deliverer_jobs_throttled_total{why}          busy | suspended | parked | rate |
//	                                                    connection_rate
//	    jobs handed back without an attempt because their site had no
//	    free connection slot (busy), was suspended, or had used up its
//	    message rate; parked: moved to a message schedule for a long
//	    suspension. A job handed back by a delayed Nak is also counted by
//	    sluice_deliverer_jobs_redelivered_total when it comes back. Sites
//	    are not a label: their number is unbounded.
//
// Traffic shaping, observed from this deliverer's shaper:
//
//	sluice_deliverer_site_connections{site}   connection slots this deliverer
//	    holds per receiving site: the 10 sites it holds most to, by name,
//	    and site="other" for the rest, so the label stays bounded
//	sluice_deliverer_sites_suspended          sites suspended now
//	sluice_deliverer_site_concurrency_limit{site}
//	    the site's current concurrency (slow start) as this deliverer
//	    sees it, for the sites named in the two counters below (no
//	    "other": a sum of limits means nothing)
//	sluice_deliverer_site_suspensions_total{site, by}
//	    suspensions this deliverer put on a site; by: reply (a reply
//	    that asked us to slow down) | operator (sluice shaping suspend)
//	sluice_deliverer_site_throttled_total{site, why}
//	    jobs of the site handed back without an attempt; why as in
//	    sluice_deliverer_jobs_throttled_total
//
// The site label of these three names the first 10 sites shaping acted
// on since the deliverer started (a wait, a suspension or a change of
// concurrency), and "other" for the rest: a site keeps its label, so a
// counter never moves from one series to another, and there are at most
// 11 series per label value of by or why.
//
// sluice_deliverer_connections_active is declared in smtpclient and
// sluice_deliverer_dns_lookup_duration_seconds in mx.
type instruments struct {
	attempts        metric.Int64Counter
	duration        metric.Float64Histogram
	inFlight        metric.Int64UpDownCounter
	terminated      metric.Int64Counter
	publishFailures metric.Int64Counter
	publishRetries  metric.Int64Counter
	poisoned        metric.Int64Counter
	redelivered     metric.Int64Counter
	throttled       metric.Int64Counter
	// sites names the sites of the site-labelled counters.
	sites           *siteLabels
	siteSuspensions metric.Int64Counter
	siteThrottled   metric.Int64Counter
}

func newInstruments(m metric.Meter) (instruments, error) {
	var i instruments
	var err error
	if i.attempts, err = m.Int64Counter("sluice_deliverer_attempts_total",
		metric.WithDescription("Delivery attempts by result and reason.")); err != nil {
		return i, err
	}
	if i.duration, err = m.Float64Histogram("sluice_deliverer_attempt_duration_seconds",
		metric.WithDescription("Duration of delivery attempts, DNS to the end of the transaction."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)); err != nil {
		return i, err
	}
	if i.inFlight, err = m.Int64UpDownCounter("sluice_deliverer_jobs_in_flight",
		metric.WithDescription("Jobs being worked on by this deliverer.")); err != nil {
		return i, err
	}
	if i.terminated, err = m.Int64Counter("sluice_deliverer_jobs_terminated_total",
		metric.WithDescription("Jobs terminated because they could not be decoded or were invalid.")); err != nil {
		return i, err
	}
	if i.publishFailures, err = m.Int64Counter("sluice_deliverer_result_publish_failures_total",
		metric.WithDescription("Results that could not be stored; their jobs were returned to the queue.")); err != nil {
		return i, err
	}
	if i.poisoned, err = m.Int64Counter("sluice_deliverer_jobs_poisoned_total",
		metric.WithDescription("Jobs failed for good because their delivery was started deliverer.max_strikes times and never finished.")); err != nil {
		return i, err
	}
	if i.publishRetries, err = m.Int64Counter("sluice_deliverer_result_publish_retries_total",
		metric.WithDescription("Tries again to store a result, with the same message id, after JetStream did not confirm one (an election, a node down).")); err != nil {
		return i, err
	}
	if i.redelivered, err = m.Int64Counter("sluice_deliverer_jobs_redelivered_total",
		metric.WithDescription("Jobs that reached the delivery attempt after being handed out before for the same attempt "+
			"(a deliverer died or missed its acknowledgement, or returned the job): each is a possible duplicate delivery. "+
			"A job returned before its attempt (a busy or suspended site) counts once, when it is attempted.")); err != nil {
		return i, err
	}
	if i.throttled, err = m.Int64Counter("sluice_deliverer_jobs_throttled_total",
		metric.WithDescription("Jobs handed back without an attempt because their receiving site was busy or suspended.")); err != nil {
		return i, err
	}
	i.sites = newSiteLabels(topSites)
	if i.siteSuspensions, err = m.Int64Counter("sluice_deliverer_site_suspensions_total",
		metric.WithDescription("Suspensions this deliverer put on a receiving site, by site (the first 10 shaping acted on, the rest as site=\"other\") and by: reply or operator.")); err != nil {
		return i, err
	}
	if i.siteThrottled, err = m.Int64Counter("sluice_deliverer_site_throttled_total",
		metric.WithDescription("Jobs handed back without an attempt, by site (the first 10 shaping acted on, the rest as site=\"other\") and why: busy, suspended, parked, rate or connection_rate.")); err != nil {
		return i, err
	}
	return i, nil
}

// siteLabels bounds the site label of the site-labelled counters: the
// first n sites asked for get their name, the others "other".
type siteLabels struct {
	mu    sync.Mutex
	n     int
	named map[string]shaping.Site // by name
}

func newSiteLabels(n int) *siteLabels {
	return &siteLabels{n: n, named: map[string]shaping.Site{}}
}

// label returns the site's label value, naming it while there is room.
func (l *siteLabels) label(site shaping.Site) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.named[site.Name]; ok || len(l.named) < l.n {
		l.named[site.Name] = site // the latest policy, for the limit
		return site.Name
	}
	return "other"
}

// sites returns the named sites.
func (l *siteLabels) sites() []shaping.Site {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]shaping.Site, 0, len(l.named))
	for _, s := range l.named {
		out = append(out, s)
	}
	return out
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// topSites is how many sites sluice_deliverer_site_connections names.
const topSites = 10

func registerSiteMetrics(m metric.Meter, sh *shaping.Shaper, labels *siteLabels) (metric.Registration, error) {
	conns, err := m.Int64ObservableGauge("sluice_deliverer_site_connections",
		metric.WithDescription("Connection slots this deliverer holds per receiving site: the top 10 sites by name, the rest as site=\"other\"."))
	if err != nil {
		return nil, err
	}
	suspended, err := m.Int64ObservableGauge("sluice_deliverer_sites_suspended",
		metric.WithDescription("Receiving sites suspended now, after a reply that asked us to slow down or by an operator."))
	if err != nil {
		return nil, err
	}
	limit, err := m.Int64ObservableGauge("sluice_deliverer_site_concurrency_limit",
		metric.WithDescription("Current concurrency (slow start) of the receiving sites shaping acted on, the first 10 by name, as this deliverer sees it."))
	if err != nil {
		return nil, err
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		top, other := sh.Top(topSites)
		for _, c := range top {
			o.ObserveInt64(conns, int64(c.N), metric.WithAttributes(attribute.String("site", c.Site)))
		}
		o.ObserveInt64(conns, int64(other), metric.WithAttributes(attribute.String("site", "other")))
		o.ObserveInt64(suspended, int64(sh.SuspendedSites()))
		for _, site := range labels.sites() {
			o.ObserveInt64(limit, int64(sh.Limit(site)), metric.WithAttributes(attribute.String("site", site.Name)))
		}
		return nil
	}, conns, suspended, limit)
}
