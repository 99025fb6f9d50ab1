package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"

	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/proto/admin"
)

// Server answers the doctor endpoints of one deliverer's micro service.
// Checks take seconds (a connect check can take a minute), and a micro
// endpoint calls its handler on one goroutine, so each request runs on a
// goroutine of its own, owned by the Server: Close cancels them and waits.
type Server struct {
	d      *Doctor
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Serve adds the endpoints dns, dnsbl, connect, auth and tls under
// admin.DoctorPrefix to svc, without a queue group: a request reaches every
// deliverer, and each answers for its own host (see proto/admin).
func Serve(svc micro.Service, d *Doctor, log *slog.Logger) (*Server, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{d: d, log: log, ctx: ctx, cancel: cancel}
	d.serviceID = svc.Info().ID
	g := svc.AddGroup(admin.DoctorPrefix, micro.WithGroupQueueGroupDisabled())
	checks := []struct {
		name       string
		needDomain bool
		run        func(context.Context, admin.DoctorRequest) any
	}{
		{admin.DoctorDNS, false, func(ctx context.Context, r admin.DoctorRequest) any { return d.DNS(ctx, r) }},
		{admin.DoctorDNSBL, false, func(ctx context.Context, r admin.DoctorRequest) any { return d.DNSBL(ctx, r) }},
		{admin.DoctorConnect, true, func(ctx context.Context, r admin.DoctorRequest) any { return d.Connect(ctx, r) }},
		{admin.DoctorAuth, true, func(ctx context.Context, r admin.DoctorRequest) any { return d.Auth(ctx, r) }},
		{admin.DoctorTLS, true, func(ctx context.Context, r admin.DoctorRequest) any { return d.TLS(ctx, r) }},
	}
	for _, c := range checks {
		h := micro.HandlerFunc(func(req micro.Request) { s.handle(req, c.name, c.needDomain, c.run) })
		if err := g.AddEndpoint(c.name, h, micro.WithEndpointMetadata(map[string]string{"description": "sluice doctor " + c.name})); err != nil {
			cancel()
			return nil, fmt.Errorf("doctor: endpoint %s: %w", c.name, err)
		}
	}
	return s, nil
}

// maxDomains bounds the domains of one dns request, so that one request
// cannot keep a deliverer's resolver busy for long.
const maxDomains = 50

func (s *Server) handle(req micro.Request, name string, needDomain bool, run func(context.Context, admin.DoctorRequest) any) {
	// Error replies carry the deliverer's identity as their body, so that
	// a CLI gathering answers from every deliverer knows who refused.
	ident, _ := json.Marshal(struct {
		Deliverer admin.DelivererIdentity `json:"deliverer"`
	}{s.d.identity()})
	var r admin.DoctorRequest
	if data := req.Data(); len(data) > 0 {
		if err := json.Unmarshal(data, &r); err != nil {
			_ = req.Error("400", "request: "+err.Error(), ident)
			return
		}
	}
	if needDomain {
		if normDomain(r.Domain) == "" {
			_ = req.Error("400", fmt.Sprintf("domain: %q is not a domain name", r.Domain), ident)
			return
		}
	}
	if len(r.Domains) > maxDomains {
		_ = req.Error("400", fmt.Sprintf("domains: %d domains, at most %d per request", len(r.Domains), maxDomains), ident)
		return
	}
	for _, dom := range r.Domains {
		if normDomain(dom) == "" {
			_ = req.Error("400", fmt.Sprintf("domains: %q is not a domain name", dom), ident)
			return
		}
	}
	if s.ctx.Err() != nil {
		_ = req.Error("503", "the deliverer is stopping", ident)
		return
	}
	s.wg.Go(func() {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("doctor check panicked", "check", name, "panic", p, "stack", string(debug.Stack()))
				_ = req.Error("500", "the check failed unexpectedly; see the deliverer's log", ident)
			}
		}()
		rep := run(s.ctx, r)
		if err := req.RespondJSON(rep); err != nil {
			s.log.Warn("doctor reply", "check", name, "err", err)
		}
	})
}

// Close cancels running checks and waits for them. Stop the micro service
// first so that no new request arrives.
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}
