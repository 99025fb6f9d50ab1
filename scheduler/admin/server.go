// Package admin is the scheduler's queue admin API: a nats micro service
// (wire.SchedulerService, discoverable with $SRV.PING/INFO/STATS) whose
// endpoints under wire.AdminQueuePrefix answer `sluice queue` commands.
//
// Reads (list, stats) come from the in-memory index; show and log read the
// job's events from SLUICE_EVENTS, so they work after a job has finished.
// Changes (hold, release, delete, retry, prioritize) act on the job where
// it is in SLUICE_JOBS — its retry schedule, its class's work queue, or its
// held subject — and record an event; the call returns once the index has
// applied that event, so the operator's next command sees the change.
//
// Every scheduler instance serves the API in one queue group; each has the
// whole index, so any of them can answer.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/metrics"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/events"
	"github.com/sluice-mta/sluice/scheduler/index"
)

// Version is the version of the queue API, reported by $SRV.INFO.
const Version = "1.0.0"

const (
	// workers is how many jobs a bulk change works on at once.
	workers = 16
	// maxPageBytes keeps a list page under NATS's default max_payload.
	maxPageBytes = 900 << 10
	// maxSkipped bounds the skipped jobs listed in an action response.
	maxSkipped = 100
)

// Loader reports whether the index has caught up with the events stream.
type Loader interface {
	Loaded() (done bool, applied, target uint64)
}

// Deps are what the API works with.
type Deps struct {
	JS     jetstream.JetStream
	Index  *index.Index
	Loader Loader
	Events *events.Publisher
	// Held is the bucket of hold and delete marks.
	Held jetstream.KeyValue
	// Complete finishes a deleted job as the scheduler finishes any job:
	// the open-jobs entry, then the message and its body when it was the
	// last one.
	Complete func(ctx context.Context, job *sluicev1.Job) error
	Tracer   trace.Tracer
	Meter    metric.Meter
	Log      *slog.Logger
	Now      func() time.Time
	// Instance names this scheduler in responses and metadata.
	Instance string
}

// Server is a running API.
type Server struct {
	d      Deps
	svc    micro.Service
	jobs   jetstream.Stream
	msgs   jetstream.Stream
	evs    jetstream.Stream
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	snaps  *snapshots
	base   context.Context
	stop   context.CancelFunc
	once   sync.Once
	// requests counts requests; endpoint: list, show, log, stats, hold,
	// release, delete, retry, prioritize; code: 200, 400, 404, 409, 500, 503.
	requests metric.Int64Counter
}

// Start registers the service and its endpoints on js's connection.
func Start(ctx context.Context, d Deps) (*Server, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	s := &Server{d: d, snaps: newSnapshots()}
	var err error
	if s.jobs, err = d.JS.Stream(ctx, wire.StreamJobs); err != nil {
		return nil, fmt.Errorf("admin: stream %s: %w", wire.StreamJobs, err)
	}
	if s.msgs, err = d.JS.Stream(ctx, wire.StreamMessages); err != nil {
		return nil, fmt.Errorf("admin: stream %s: %w", wire.StreamMessages, err)
	}
	if s.evs, err = d.JS.Stream(ctx, wire.StreamEvents); err != nil {
		return nil, fmt.Errorf("admin: stream %s: %w", wire.StreamEvents, err)
	}
	if s.requests, err = d.Meter.Int64Counter("sluice_scheduler_admin_requests_total",
		metric.WithDescription("Queue admin API requests, by endpoint and result code.")); err != nil {
		return nil, err
	}
	if _, err := d.Meter.Int64ObservableGauge("sluice_scheduler_index_jobs",
		metric.WithDescription("Live jobs in this scheduler's queue index."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(d.Index.Len()))
			return nil
		})); err != nil {
		return nil, err
	}
	// Queue depth by class and state, from the index. Label values: class
	// = high, normal, bulk; state = ready (waiting for a deliverer), active
	// (being attempted), deferred (waiting for a retry schedule), held.
	if _, err := d.Meter.Int64ObservableGauge("sluice_scheduler_queue_depth",
		metric.WithDescription("Jobs in the queue by priority class and state."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			depth := d.Index.Depth()
			for _, class := range wire.Classes {
				for st := index.Ready; st <= index.Held; st++ {
					o.Observe(int64(depth[class][st]), metric.WithAttributes(
						attribute.String("class", wire.ClassName(class)), attribute.String("state", st.String())))
				}
			}
			return nil
		})); err != nil {
		return nil, err
	}
	s.base, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	svc, err := micro.AddService(d.JS.Conn(), micro.Config{
		Name:        wire.SchedulerService,
		Version:     Version,
		Description: "Sluice scheduler: queue operations (list, show, log, stats, hold, release, delete, retry, prioritize)",
		Metadata:    map[string]string{"instance": d.Instance},
	})
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("admin: add service: %w", err)
	}
	s.svc = svc
	g := svc.AddGroup(wire.AdminQueuePrefix)
	eps := []struct {
		name string
		fn   func(context.Context, micro.Request) (any, error)
	}{
		{wire.AdminList, s.list},
		{wire.AdminShow, s.show},
		{wire.AdminLog, s.log},
		{wire.AdminStats, s.stats},
		{wire.AdminHold, s.action(wire.AdminHold, s.hold)},
		{wire.AdminRelease, s.action(wire.AdminRelease, s.release)},
		{wire.AdminDelete, s.action(wire.AdminDelete, s.delete)},
		{wire.AdminRetry, s.action(wire.AdminRetry, s.retry)},
		{wire.AdminPrioritize, s.action(wire.AdminPrioritize, s.prioritize)},
	}
	for _, ep := range eps {
		if err := g.AddEndpoint(ep.name, s.handler(ep.name, ep.fn)); err != nil {
			s.Close()
			return nil, fmt.Errorf("admin: endpoint %s: %w", ep.name, err)
		}
	}
	return s, nil
}

// Close stops answering and waits for the requests being handled. It is
// safe to call twice.
func (s *Server) Close() {
	s.once.Do(func() {
		if s.svc != nil {
			_ = s.svc.Stop()
		}
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.stop()
		s.wg.Wait()
	})
}

// apiError is an error with the micro error code it is reported with.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// handler runs fn for a request and turns its result into a JSON response
// or a micro error. Each endpoint has its own subscription, so a long bulk
// change delays only the next request to the same endpoint; `stats` and
// `list` keep answering meanwhile. (micro reads a request's outcome after
// the handler returns, so the response is sent before returning.)
func (s *Server) handler(name string, fn func(context.Context, micro.Request) (any, error)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		s.wg.Add(1)
		s.mu.Unlock()
		defer s.wg.Done()
		ctx, span := s.d.Tracer.Start(s.base, "scheduler.admin."+name, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		code := 200
		resp, err := s.safe(ctx, fn, req)
		if err != nil {
			code = 500
			var ae *apiError
			if errors.As(err, &ae) {
				code = ae.code
			}
			if code == 500 {
				s.d.Log.ErrorContext(ctx, "admin request failed", "endpoint", name, "err", err)
			}
			span.SetAttributes(attribute.Int("sluice.admin.code", code))
			_ = req.Error(strconv.Itoa(code), err.Error(), nil)
		} else if err := req.RespondJSON(resp); err != nil {
			s.d.Log.WarnContext(ctx, "admin response", "endpoint", name, "err", err)
		}
		s.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("endpoint", name), attribute.Int("code", code)))
	})
}

// safe runs fn, turning a panic into a 500.
func (s *Server) safe(ctx context.Context, fn func(context.Context, micro.Request) (any, error), req micro.Request) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.d.Log.ErrorContext(ctx, "panic in admin request", "panic", fmt.Sprint(p))
			resp, err = nil, errorf(500, "internal error in the scheduler")
		}
	}()
	return fn(ctx, req)
}

func decode(req micro.Request, v any) error {
	if len(req.Data()) == 0 {
		return nil
	}
	if err := json.Unmarshal(req.Data(), v); err != nil {
		return errorf(400, "bad request: %v", err)
	}
	return nil
}

// ready refuses index-backed requests until the index has caught up.
func (s *Server) ready() error {
	done, applied, target := s.d.Loader.Loaded()
	if !done {
		return errorf(503, "the queue index of scheduler %s is still loading (%d of %d events); try again shortly", s.d.Instance, applied, target)
	}
	return nil
}

func (s *Server) list(ctx context.Context, req micro.Request) (any, error) {
	var r api.QueueListRequest
	if err := decode(req, &r); err != nil {
		return nil, err
	}
	if err := s.ready(); err != nil {
		return nil, err
	}
	m, err := index.Compile(r.Filter, s.d.Now())
	if err != nil {
		return nil, errorf(400, "%v", err)
	}
	limit := r.Limit
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	snap, offset, err := s.snaps.resume(r.Cursor)
	if err != nil {
		return nil, errorf(400, "%v", err)
	}
	if snap == nil {
		refs := s.d.Index.Select(m)
		snap = s.snaps.put(refs)
		if c, ok := parseCursor(r.Cursor); ok {
			// Another instance (or an expired snapshot) began this
			// listing: continue after the last row it returned.
			offset = c.after(refs)
		}
	}
	resp := &api.QueueListResponse{Total: len(snap.refs)}
	end := min(offset+limit, len(snap.refs))
	for {
		resp.Rows = s.d.Index.Rows(snap.refs[offset:end])
		b, _ := json.Marshal(resp)
		if len(b) < maxPageBytes || end-offset <= 1 {
			break
		}
		end = offset + (end-offset)/2
	}
	if end < len(snap.refs) {
		resp.Next = snap.cursor(end)
	} else {
		s.snaps.done(snap)
	}
	return resp, nil
}

func (s *Server) stats(ctx context.Context, req micro.Request) (any, error) {
	var r api.QueueStatsRequest
	if err := decode(req, &r); err != nil {
		return nil, err
	}
	if err := s.ready(); err != nil {
		return nil, err
	}
	now := s.d.Now()
	m, err := index.Compile(r.Filter, now)
	if err != nil {
		return nil, errorf(400, "%v", err)
	}
	start := time.Now()
	shape := s.d.Index.Stats(m, now, r.Top)
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	heap := uint64(0)
	if live[0].Value.Kind() == metrics.KindUint64 {
		heap = live[0].Value.Uint64()
	}
	resp := &api.QueueStatsResponse{
		Buckets: index.QshapeBuckets, Total: shape.Total, Domains: shape.Domains, Jobs: shape.Jobs,
		ByState: shape.ByState, ByClass: shape.ByClass, ByReason: shape.ByReason,
		Delay: s.d.Index.Delays(now), IndexJobs: s.d.Index.Len(), HeapBytes: heap, IndexBytes: s.d.Index.StorageBytes(), Instance: s.d.Instance,
	}
	resp.Delay.Elapsed = time.Since(start).String()
	return resp, nil
}

func (s *Server) show(ctx context.Context, req micro.Request) (any, error) {
	var r api.QueueIDRequest
	if err := decode(req, &r); err != nil {
		return nil, err
	}
	evs, err := s.history(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	return &api.QueueShowResponse{Jobs: fold(evs)}, nil
}

func (s *Server) log(ctx context.Context, req micro.Request) (any, error) {
	var r api.QueueIDRequest
	if err := decode(req, &r); err != nil {
		return nil, err
	}
	evs, err := s.history(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	return &api.QueueLogResponse{Events: evs}, nil
}
