// Package otlptest is an OTLP/HTTP trace receiver for tests: services export
// to it with their real OpenTelemetry exporters (OTEL_EXPORTER_OTLP_ENDPOINT
// pointing here), and tests read the spans back.
package otlptest

import (
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is a received span, flattened for assertions.
type Span struct {
	Service      string
	Name         string
	TraceID      string
	SpanID       string
	ParentSpanID string
	Start, End   time.Time
	Attrs        map[string]string
	StatusError  bool
	Links        []string // linked trace ids
}

// Receiver collects spans posted to /v1/traces.
type Receiver struct {
	URL string // http://host:port, for OTEL_EXPORTER_OTLP_ENDPOINT

	srv   *http.Server
	mu    sync.Mutex
	spans []Span
}

// Listen starts a receiver on addr.
func Listen(addr string) (*Receiver, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &Receiver{URL: "http://" + ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/traces", r.handle)
	r.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// Close stops the receiver.
func (r *Receiver) Close() error { return r.srv.Close() }

func (r *Receiver) handle(w http.ResponseWriter, req *http.Request) {
	b, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ex collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &ex); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var got []Span
	for _, rs := range ex.ResourceSpans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				got = append(got, flatten(service, s))
			}
		}
	}
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	r.mu.Unlock()
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func flatten(service string, s *tracepb.Span) Span {
	sp := Span{
		Service:      service,
		Name:         s.Name,
		TraceID:      hex.EncodeToString(s.TraceId),
		SpanID:       hex.EncodeToString(s.SpanId),
		ParentSpanID: hex.EncodeToString(s.ParentSpanId),
		Start:        time.Unix(0, int64(s.StartTimeUnixNano)),
		End:          time.Unix(0, int64(s.EndTimeUnixNano)),
		Attrs:        map[string]string{},
		StatusError:  s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
	}
	for _, kv := range s.Attributes {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			sp.Attrs[kv.Key] = v.GetStringValue()
		default:
			sp.Attrs[kv.Key] = stringify(v)
		}
	}
	for _, l := range s.Links {
		sp.Links = append(sp.Links, hex.EncodeToString(l.TraceId))
	}
	return sp
}

// Spans returns everything received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Trace returns the spans of one trace.
func (r *Receiver) Trace(traceID string) []Span {
	var out []Span
	for _, s := range r.Spans() {
		if s.TraceID == traceID {
			out = append(out, s)
		}
	}
	return out
}
