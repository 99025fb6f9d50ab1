package worker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// env is one test's world: JetStream with Sluice's streams, a DNS server
// and a span recorder.
type env struct {
	ns    *natstest.Server
	js    jetstream.JetStream
	dns   *dnstest.Server
	spans *tracetest.InMemoryExporter
	tp    *sdktrace.TracerProvider
	n     int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &env{ns: ns, js: js, dns: dnstest.Start(t), spans: exp, tp: tp}
}

func testSettings(e *env) Settings {
	s := DefaultSettings()
	s.Hostname = "deliverer.test"
	s.Instance = "test"
	s.DNSServer = e.dns.Addr
	s.DNSTimeout = dnstest.Timeout
	s.Concurrency = 4
	s.AckWait = 5 * time.Second
	s.ConnectTimeout = 2 * time.Second
	s.CommandTimeout = 10 * time.Second
	s.DataTimeout = 10 * time.Second
	s.MetricsListen = ""
	return s
}

// service starts a Service with its own NATS connection, closed when the
// (sub)test ends.
func (e *env) service(t *testing.T, mod func(*Settings)) *Service {
	t.Helper()
	return e.serviceWith(t, mod, nil)
}

// serviceWith is service with dependencies changed by dmod (nil: none).
func (e *env) serviceWith(t *testing.T, mod func(*Settings), dmod func(*Deps)) *Service {
	t.Helper()
	s := testSettings(e)
	if mod != nil {
		mod(&s)
	}
	_, js := e.ns.Connect(t)
	d := Deps{
		JS:      js,
		Tracer:  e.tp.Tracer("test"),
		Meter:   noop.NewMeterProvider().Meter(""),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Shuffle: func(int, func(i, j int)) {},
	}
	if dmod != nil {
		dmod(&d)
	}
	svc, err := New(s, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return svc
}

func body(subject string) []byte {
	return []byte("Received: from test by sluice\r\nFrom: <sender@origin.test>\r\nSubject: " + subject + "\r\n\r\nHello.\r\n")
}

// jobSpec describes a job to enqueue.
type jobSpec struct {
	domain     string
	rcpts      []string
	class      sluicev1.Priority
	subject    string
	requireTLS bool
	bigBody    []byte // stored in the object store when set
	bodyObject string // with bigBody: its object's name, stored by the test
	lastReason sluicev1.Reason
	scheduled  time.Time
}

// enqueue stores a message like the ingress and its job like the
// scheduler, and returns the job.
func (e *env) enqueue(t *testing.T, s jobSpec) *sluicev1.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.n++
	qid := wire.NewQueueID(time.Now())
	if s.subject == "" {
		s.subject = "test " + strconv.Itoa(e.n)
	}
	if s.class == 0 {
		s.class = sluicev1.Priority_PRIORITY_NORMAL
	}
	msg := &sluicev1.Message{Schema: wire.SchemaVersion, QueueId: qid, MailFrom: "sender@origin.test", ReceivedUnixNano: time.Now().UnixNano()}
	b := body(s.subject)
	switch {
	case s.bodyObject != "":
		b = s.bigBody
		msg.BodyObject = s.bodyObject
	case s.bigBody != nil:
		b = s.bigBody
		if _, err := mustBodies(t, e.js).PutBytes(ctx, qid, b); err != nil {
			t.Fatal(err)
		}
		msg.BodyObject = qid
	default:
		msg.Body = b
	}
	msg.BodySize = int64(len(b))
	var rcpts []*sluicev1.Recipient
	for _, r := range s.rcpts {
		rcpts = append(rcpts, &sluicev1.Recipient{Address: r, Notify: uint32(sluicev1.Notify_NOTIFY_FAILURE), Orcpt: "rfc822;" + r})
		msg.Recipients = append(msg.Recipients, rcpts[len(rcpts)-1])
	}
	data, _ := proto.Marshal(msg)
	ack, err := e.js.Publish(ctx, wire.MessageSubject(qid), data, jetstream.WithMsgID(qid))
	if err != nil {
		t.Fatal(err)
	}
	sched := s.scheduled
	if sched.IsZero() {
		sched = time.Now()
	}
	job := &sluicev1.Job{
		Schema: wire.SchemaVersion, JobId: wire.JobID(qid, 0), QueueId: qid, MsgSeq: ack.Sequence,
		BodyObject: msg.BodyObject, BodySize: msg.BodySize, MailFrom: msg.MailFrom, Recipients: rcpts,
		Domain: s.domain, Priority: s.class, Attempt: 1, ReceivedUnixNano: msg.ReceivedUnixNano,
		ExpiresUnixNano: time.Now().Add(time.Hour).UnixNano(), RequireTls: s.requireTLS, JobsTotal: 1,
		LastReason: s.lastReason, ScheduledUnixNano: sched.UnixNano(),
	}
	e.publishJob(t, job)
	return job
}

func (e *env) publishJob(t *testing.T, job *sluicev1.Job) {
	t.Helper()
	data, _ := proto.Marshal(job)
	m := nats.NewMsg(wire.JobSubject(job.Priority, job.JobId))
	m.Data = data
	// Continue the trace of a span that plays the scheduler.
	ctx, span := e.tp.Tracer("test").Start(context.Background(), "test.schedule")
	telemetry.Inject(ctx, m.Header)
	span.End()
	if _, err := e.js.PublishMsg(ctx, m, jetstream.WithMsgID(fmt.Sprintf("%s/%d", job.JobId, job.Attempt))); err != nil {
		t.Fatal(err)
	}
}

func mustBodies(t *testing.T, js jetstream.JetStream) jetstream.ObjectStore {
	t.Helper()
	os, err := js.ObjectStore(context.Background(), wire.BucketBodies)
	if err != nil {
		t.Fatal(err)
	}
	return os
}

// result waits for the stored Result of job.
func (e *env) result(t *testing.T, job *sluicev1.Job, timeout time.Duration) *sluicev1.Result {
	t.Helper()
	str, err := e.js.Stream(context.Background(), wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		raw, err := str.GetLastMsgForSubject(context.Background(), wire.ResultSubject(job.JobId))
		if err == nil {
			if got := raw.Header.Get(nats.MsgIdHdr); got != fmt.Sprintf("%s/%d/result", job.JobId, job.Attempt) {
				t.Errorf("result Nats-Msg-Id = %q", got)
			}
			r := &sluicev1.Result{}
			if err := proto.Unmarshal(raw.Data, r); err != nil {
				t.Fatal(err)
			}
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("no result for job %s after %s: %v", job.JobId, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsServer is a go-smtp destination that offers STARTTLS with a
// certificate made for the test, and records whether mail came over TLS.
type tlsServer struct {
	Addr string
	// Cert is the server's self-signed certificate, for mx.tls.test and
	// 127.0.0.1 (the host of a configured route).
	Cert *x509.Certificate
	mu   sync.Mutex
	got  []tlsMsg
}

type tlsMsg struct {
	tls        bool
	version    uint16
	to         []string
	requireTLS bool
	helo       string
}

func startTLSServer(t *testing.T, requireTLS bool) *tlsServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.tls.test"}, DNSNames: []string{"mx.tls.test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ts := &tlsServer{Addr: ln.Addr().String(), Cert: cert}
	srv := smtp.NewServer(ts)
	srv.Domain = "mx.tls.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.EnableREQUIRETLS = requireTLS
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ts
}

func (ts *tlsServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &tlsSession{s: ts, c: c}, nil
}

func (ts *tlsServer) messages() []tlsMsg {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]tlsMsg(nil), ts.got...)
}

type tlsSession struct {
	s   *tlsServer
	c   *smtp.Conn
	to  []string
	req bool
}

func (s *tlsSession) Mail(_ string, o *smtp.MailOptions) error {
	s.req = o != nil && o.RequireTLS
	return nil
}
func (s *tlsSession) Rcpt(to string, _ *smtp.RcptOptions) error { s.to = append(s.to, to); return nil }
func (s *tlsSession) Data(r io.Reader) error {
	if _, err := io.ReadAll(r); err != nil {
		return err
	}
	st, ok := s.c.TLSConnectionState()
	s.s.mu.Lock()
	s.s.got = append(s.s.got, tlsMsg{tls: ok, version: st.Version, to: s.to, requireTLS: s.req, helo: s.c.Hostname()})
	s.s.mu.Unlock()
	return nil
}
func (s *tlsSession) Reset()        { s.to = nil }
func (s *tlsSession) Logout() error { return nil }

func provision(e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return streams.Provision(ctx, e.js, config.DefaultQueue())
}
