// Package telemetry sets up a service's OpenTelemetry tracing and metrics,
// its structured logger, and the propagation of trace context through NATS
// message headers. Providers are created once in main and injected into
// components; nothing here is global except what OpenTelemetry itself keeps
// (the propagator).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Env is what the standard OTEL_* variables say about trace export. main
// reads it with EnvFrom(os.LookupEnv); tests build it directly.
type Env struct {
	// Endpoint is OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT;
	// empty means traces are recorded (ids for logs) but not exported.
	Endpoint string
	// Protocol is grpc or http/protobuf (OTEL_EXPORTER_OTLP_PROTOCOL).
	Protocol string
	// Exporter is OTEL_TRACES_EXPORTER: otlp (default) or none.
	Exporter string
}

// EnvFrom reads Env with lookup.
func EnvFrom(lookup func(string) (string, bool)) Env {
	get := func(k string) string { v, _ := lookup(k); return strings.TrimSpace(v) }
	e := Env{
		Endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
		Protocol: get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
		Exporter: get("OTEL_TRACES_EXPORTER"),
	}
	if e.Endpoint == "" {
		e.Endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if e.Protocol == "" {
		e.Protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	return e
}

// Telemetry holds one service's providers and logger.
type Telemetry struct {
	// Tracer is the service's tracer. Without a trace exporter (and
	// without OTEL_TRACES_SAMPLER) its spans carry ids but record nothing;
	// TP.Tracer gives a recording one, for a span processor registered on
	// TP.
	Tracer   trace.Tracer
	Meter    metric.Meter
	Logger   *slog.Logger
	TP       *sdktrace.TracerProvider
	MP       *sdkmetric.MeterProvider
	Registry *prometheus.Registry
	shutdown []func(context.Context) error
}

// Setup creates the providers for service (its OpenTelemetry service.name
// unless OTEL_SERVICE_NAME overrides it; the SDK reads OTEL_RESOURCE_ATTRIBUTES,
// OTEL_SERVICE_NAME and OTEL_TRACES_SAMPLER itself) and its JSON logger,
// writing to logOut (standard error when nil).
func Setup(ctx context.Context, service string, env Env, logOut io.Writer, logLevel string) (*Telemetry, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attributeServiceName(service)...,
	))
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	// Environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) wins.
	if envRes, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, envRes); err == nil {
			res = merged
		}
	}

	t := &Telemetry{}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	exporting := env.Endpoint != "" && env.Exporter != "none"
	if exporting {
		exp, err := newTraceExporter(ctx, env)
		if err != nil {
			return nil, err
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)))
	}
	t.TP = sdktrace.NewTracerProvider(tpOpts...)
	t.shutdown = append(t.shutdown, t.TP.Shutdown)

	t.Registry = prometheus.NewRegistry()
	t.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pe, err := promexporter.New(promexporter.WithRegisterer(t.Registry), promexporter.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("telemetry prometheus exporter: %w", err)
	}
	t.MP = sdkmetric.NewMeterProvider(sdkmetric.WithReader(pe), sdkmetric.WithResource(res))
	t.shutdown = append(t.shutdown, t.MP.Shutdown)

	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	scope := "github.com/sluice-mta/sluice/" + service
	t.Tracer = t.TP.Tracer(scope)
	if _, sampler := os.LookupEnv("OTEL_TRACES_SAMPLER"); !exporting && !sampler {
		// Nothing exports, so nothing would read a recorded span.
		t.Tracer = idTracer{}
	}
	t.Meter = t.MP.Meter(scope)
	if logOut == nil {
		logOut = os.Stderr
	}
	t.Logger = NewLogger(logOut, service, logLevel)
	return t, nil
}

func newTraceExporter(ctx context.Context, env Env) (*otlptrace.Exporter, error) {
	switch env.Protocol {
	case "", "grpc":
		return otlptracegrpc.New(ctx)
	case "http/protobuf", "http":
		return otlptracehttp.New(ctx)
	}
	return nil, fmt.Errorf("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %q: want grpc or http/protobuf", env.Protocol)
}

// Shutdown flushes and stops the providers; it is safe to call twice.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	t.shutdown = nil
	return errors.Join(errs...)
}

// Serve starts the HTTP endpoint with /metrics, /healthz (liveness) and
// /readyz (readiness, which ready decides) on addr and returns the server so
// main can shut it down.
func (t *Telemetry) Serve(addr string, ready func() error) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener %s: %w", addr, err)
	}
	return t.ServeListener(ln, ready), nil
}

// ServeListener is Serve on an existing listener.
func (t *Telemetry) ServeListener(ln net.Listener, ready func() error) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{}))
	// Profiles on the same (by default loopback-only) address, so where a
	// service spends its CPU can be read in production: go tool pprof
	// http://127.0.0.1:9103/debug/pprof/profile?seconds=10
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// Liveness: the process serves. A service waiting for NATS is alive;
	// restarting it would not bring NATS back.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	// Readiness: ready says whether the service does its work (connected,
	// provisioned, consuming or listening), and why not.
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

// headerCarrier adapts nats.Header to the TextMapCarrier interface. NATS
// header keys are case-sensitive, so we write and read the lowercase W3C
// names exactly ("traceparent", "tracestate").
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string {
	if v := nats.Header(c)[key]; len(v) > 0 {
		return v[0]
	}
	return nats.Header(c).Get(key)
}
func (c headerCarrier) Set(key, value string) { nats.Header(c)[key] = []string{value} }
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes ctx's trace context into h.
func Inject(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, headerCarrier(h))
}

// Extract returns ctx continued from the trace context in h.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, headerCarrier(h))
}
