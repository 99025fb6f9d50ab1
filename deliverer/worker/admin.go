package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// ServeShaping adds the traffic shaping endpoints (admin.ShapingPrefix:
// show, suspend, resume) to the deliverer's micro service, in the service's
// queue group: the state is the fleet's, so any one deliverer answers.
func (s *Service) ServeShaping(svc micro.Service) error {
	g := svc.AddGroup(admin.ShapingPrefix)
	for name, h := range map[string]func(context.Context, admin.ShapingRequest) (admin.ShapingResponse, string, error){
		admin.ShapingShow:    s.shapingShow,
		admin.ShapingSuspend: s.shapingSuspend,
		admin.ShapingResume:  s.shapingResume,
	} {
		err := g.AddEndpoint(name, micro.HandlerFunc(func(req micro.Request) {
			var r admin.ShapingRequest
			if data := req.Data(); len(data) > 0 {
				if err := json.Unmarshal(data, &r); err != nil {
					_ = req.Error("400", "request: "+err.Error(), nil)
					return
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, code, err := h(ctx, r)
			if err != nil {
				_ = req.Error(code, err.Error(), nil)
				return
			}
			resp.Instance = s.cfg.Instance
			_ = req.RespondJSON(resp)
		}), micro.WithEndpointMetadata(map[string]string{"description": "sluice shaping " + name}))
		if err != nil {
			return fmt.Errorf("shaping endpoint %s: %w", name, err)
		}
	}
	return nil
}

func (s *Service) shapingShow(ctx context.Context, r admin.ShapingRequest) (admin.ShapingResponse, string, error) {
	snap, err := s.shaper.Snapshot(ctx)
	if err != nil {
		return admin.ShapingResponse{}, "500", err
	}
	var only *shaping.Site
	if r.Site != "" {
		site, code, err := s.resolveSite(ctx, r.Site, snap)
		if err != nil {
			return admin.ShapingResponse{}, code, err
		}
		only = &site
	}
	var out admin.ShapingResponse
	q, err := s.queuedBySite(ctx)
	if err != nil {
		out.QueuedUnknown = err.Error()
	}
	out.QueuedElsewhere = q.elsewhere
	// The bucket holds only rate windows of some sites, which name them
	// by key alone: the sites with jobs name them.
	for name := range q.bySite {
		if st := snap[s.siteNamed(name).Key]; st != nil && st.Site == "" {
			st.Site = name
		}
	}
	shown := map[string]bool{}
	add := func(site shaping.Site, st *shaping.State) {
		row := s.siteRow(site, st)
		base, _, _ := strings.Cut(row.Site, "@") // per source: the site's jobs, whatever sends them
		row.Queued = q.bySite[base]
		shown[base] = true
		out.Sites = append(out.Sites, row)
	}
	for key, st := range snap {
		if only != nil && key != only.Key || st.Site == "" {
			continue
		}
		add(s.siteNamed(st.Site), st)
	}
	if only != nil && len(out.Sites) == 0 {
		add(*only, &shaping.State{Site: only.Name, Key: only.Key})
	}
	// Sites with jobs waiting are shown even when the bucket holds nothing
	// of theirs (no connection now, slow start at its initial value).
	for name, n := range q.bySite {
		if site := s.siteNamed(name); n > 0 && !shown[name] && only == nil {
			add(site, &shaping.State{Site: name, Key: site.Key})
		}
	}
	sort.Slice(out.Sites, func(i, j int) bool {
		a, b := out.Sites[i], out.Sites[j]
		if a.Connections != b.Connections {
			return a.Connections > b.Connections
		}
		if a.Queued != b.Queued {
			return a.Queued > b.Queued
		}
		return a.Site < b.Site
	})
	return out, "", nil
}

// queuedTop bounds the destination domains show resolves to their sites:
// the ones with the most jobs. The jobs of the others are counted in
// ShapingResponse.QueuedElsewhere.
const queuedTop = 200

// queued are the jobs in the queue by site name, and those of domains not
// resolved to one.
type queued struct {
	bySite    map[string]int
	elsewhere int
}

// queuedBySite counts the jobs in the queue per site: a scheduler counts
// them per destination domain (the queue stats endpoint, `sluice queue
// stats`), and each domain is resolved to its site as a job's is (MX
// lookup, deliverer.routes, deliverer.shaping.domains).
func (s *Service) queuedBySite(ctx context.Context) (queued, error) {
	q := queued{bySite: map[string]int{}}
	data, err := json.Marshal(admin.QueueStatsRequest{Top: queuedTop})
	if err != nil {
		return q, err
	}
	// Both steps are bounded so that show answers within the CLI's
	// default 5 s even when the scheduler or DNS is slow: what is not
	// resolved in time is counted as elsewhere.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msg, err := s.js.Conn().RequestWithContext(rctx, wire.AdminQueueSubject(wire.AdminStats), data)
	if err != nil {
		return q, fmt.Errorf("no scheduler answered for the queued jobs: %v", err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return q, fmt.Errorf("the scheduler could not count the queued jobs: %s", msg.Header.Get(micro.ErrorHeader))
	}
	var stats admin.QueueStatsResponse
	if err := json.Unmarshal(msg.Data, &stats); err != nil {
		return q, fmt.Errorf("unreadable queue stats: %v", err)
	}
	// Resolved a few at a time, mostly from the resolver's cache (records
	// kept for their TTL): these are the domains the deliverers send to.
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	resolved := 0
	for _, row := range stats.Domains {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			route, err := s.courier.Route(dctx, row.Domain)
			if err != nil {
				return
			}
			site := s.shaper.Rules().Site(row.Domain, route.Site)
			mu.Lock()
			q.bySite[site.Name] += row.Total
			resolved += row.Total
			mu.Unlock()
		})
	}
	wg.Wait()
	q.elsewhere = stats.Jobs - resolved
	return q, nil
}

func (s *Service) shapingSuspend(ctx context.Context, r admin.ShapingRequest) (admin.ShapingResponse, string, error) {
	d := time.Hour
	if r.For != "" {
		var err error
		if d, err = time.ParseDuration(r.For); err != nil || d <= 0 || d > 7*24*time.Hour {
			return admin.ShapingResponse{}, "400", fmt.Errorf("for: %q, want a duration from 1s to 168h", r.For)
		}
	}
	site, code, err := s.resolveSite(ctx, r.Site, nil)
	if err != nil {
		return admin.ShapingResponse{}, code, err
	}
	why := "suspended by an operator"
	if r.Actor != "" {
		why += " (" + r.Actor + ")"
	}
	if r.Reason != "" {
		why += ": " + r.Reason
	}
	if err := s.shaper.Suspend(ctx, site, time.Now().Add(d), why); err != nil {
		return admin.ShapingResponse{}, "500", err
	}
	s.log.Info("site suspended by an operator", "site", site.Name, "for", d, "actor", r.Actor, "reason", r.Reason)
	s.m.siteSuspensions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("site", s.m.sites.label(site)), attribute.String("by", "operator")))
	return s.shapingShow(ctx, admin.ShapingRequest{Site: site.Name})
}

func (s *Service) shapingResume(ctx context.Context, r admin.ShapingRequest) (admin.ShapingResponse, string, error) {
	site, code, err := s.resolveSite(ctx, r.Site, nil)
	if err != nil {
		return admin.ShapingResponse{}, code, err
	}
	if err := s.shaper.Resume(ctx, site); err != nil {
		return admin.ShapingResponse{}, "500", err
	}
	s.log.Info("site resumed by an operator", "site", site.Name, "actor", r.Actor)
	return s.shapingShow(ctx, admin.ShapingRequest{Site: site.Name})
}

// resolveSite finds the site an operator names: a site as show prints it
// ("domain:<name>" for a domain shaped apart), else a destination domain,
// resolved through its MX records like a job's.
func (s *Service) resolveSite(ctx context.Context, name string, snap map[string]*shaping.State) (shaping.Site, string, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return shaping.Site{}, "400", fmt.Errorf("site: empty, want a site or a destination domain")
	}
	if d, ok := strings.CutPrefix(name, "domain:"); ok {
		if site := s.shaper.Rules().Site(d, ""); site.Name == name {
			return site, "", nil
		}
		return shaping.Site{}, "404", fmt.Errorf("site %s: %s is not in deliverer.shaping.domains", name, d)
	}
	if snap == nil {
		var err error
		if snap, err = s.shaper.Snapshot(ctx); err != nil {
			return shaping.Site{}, "500", err
		}
	}
	for _, st := range snap {
		if st.Site == name {
			return s.siteNamed(name), "", nil
		}
	}
	if strings.ContainsAny(name, ",:") {
		return s.siteNamed(name), "", nil
	}
	route, err := s.courier.Route(ctx, name)
	if err != nil {
		return shaping.Site{}, "404", fmt.Errorf("%s is neither a site with state nor a domain whose MX can be found: %v", name, err)
	}
	return s.shaper.Rules().Site(name, route.Site), "", nil
}

// siteNamed is the site of a name show printed.
func (s *Service) siteNamed(name string) shaping.Site {
	if d, ok := strings.CutPrefix(name, "domain:"); ok {
		return s.shaper.Rules().Site(d, "")
	}
	return s.shaper.Rules().Site("", name)
}

func (s *Service) siteRow(site shaping.Site, st *shaping.State) admin.ShapingSite {
	row := admin.ShapingSite{
		Site: site.Name, Connections: st.Connections, Holders: st.Holders,
		Limit: st.Limit, MaxConnections: site.Policy.MaxConnections,
		Rate: site.Policy.MaxMessageRate, Sent: site.Rate().Sent(st.Windows, time.Now()),
		SuspendedUntil: st.SuspendedUntil, Reason: st.Reason,
	}
	if row.Limit == 0 {
		row.Limit = site.Policy.InitialConnections
	}
	row.Limit = min(row.Limit, site.Policy.MaxConnections)
	if row.Site == "" {
		row.Site = st.Site
	}
	return row
}
