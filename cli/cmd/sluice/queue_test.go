package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/deliverer/worker"
	api "github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/claim"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// world is a running Sluice without the ingress: the real scheduler and
// deliverer services on an embedded JetStream, delivering to a capture
// server. Tests drive it with the CLI exactly as an operator would.
type world struct {
	t     *testing.T
	ns    *natstest.Server
	js    jetstream.JetStream
	dest  *capture.Server
	cfg   scheduler.Config
	sched *scheduler.Service
	// accepted is how long ago the messages send makes say they were
	// accepted (their queue ids' time).
	accepted time.Duration
	tracer   *sdktrace.TracerProvider
	// refuse makes the destination defer every recipient while set.
	refuse atomic.Bool
	// stopDeliverer stops the deliverer startDeliverer started.
	stopDeliverer func()
	// logs holds what the services logged and sent the queue ids sent,
	// both shown when eventually gives up.
	logs diagBuffer
	sent []string
}

func newWorld(t *testing.T, retryMin time.Duration) *world {
	t.Helper()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	w := &world{t: t, ns: natstest.Start(t), tracer: sdktrace.NewTracerProvider()}
	_, w.js = w.ns.Connect(t)
	w.cfg = scheduler.Default()
	w.cfg.Scheduler.Retry.Min, w.cfg.Scheduler.Retry.Max, w.cfg.Scheduler.Retry.Jitter = retryMin, 2*retryMin, 0
	w.cfg.Scheduler.Concurrency, w.cfg.Scheduler.Batch, w.cfg.Scheduler.Instance = 4, 16, "sched-test"
	w.cfg.Scheduler.MetricsListen = ""
	ctx := context.Background()
	if err := streams.Provision(ctx, w.js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	var err error
	w.dest, err = capture.Listen("127.0.0.1:0", capture.Options{Rcpt: func(rcpt string, _ int) *smtp.SMTPError {
		if w.refuse.Load() || strings.HasPrefix(rcpt, "busy@") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy, try later"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.dest.Close() })
	w.startScheduler()
	w.startDeliverer()
	return w
}

func (w *world) logger() *slog.Logger { return slog.New(slog.NewTextHandler(&w.logs, nil)) }

func (w *world) startScheduler() {
	w.t.Helper()
	_, js := w.ns.Connect(w.t)
	s, err := scheduler.New(w.cfg, js, w.tracer.Tracer("scheduler"), noop.NewMeterProvider().Meter(""), w.logger())
	if err != nil {
		w.t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		w.t.Fatal(err)
	}
	w.sched = s
	w.t.Cleanup(func() { _ = s.Close() })
	// The admin API answers 503 while the index is rebuilt from events;
	// tests start once it answers, as an operator would retry.
	w.eventually("scheduler index loaded", 10*time.Second, func() bool {
		code, _, _ := w.cli("stats")
		return code == 0
	})
}

func (w *world) stopScheduler() {
	w.t.Helper()
	if err := w.sched.Close(); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) startDeliverer() {
	w.t.Helper()
	dns := dnstest.Start(w.t)
	s := worker.DefaultSettings()
	s.Hostname, s.Instance, s.DNSServer, s.DNSTimeout = "deliverer.test", "deliverer-test", dns.Addr, dnstest.Timeout
	s.Routes = map[string]string{"dest.test": w.dest.Addr, "other.test": w.dest.Addr, "apart.test": w.dest.Addr}
	// apart.test is shaped as a site of its own ("domain:apart.test"),
	// for tests that need two sites.
	s.Shaping.Domains = map[string]shaping.Policy{"apart.test": {MaxConnections: 3}}
	s.Concurrency, s.AckWait, s.MetricsListen = 4, 5*time.Second, ""
	_, js := w.ns.Connect(w.t)
	d, err := worker.New(s, worker.Deps{JS: js, Tracer: w.tracer.Tracer("deliverer"), Meter: noop.NewMeterProvider().Meter(""), Logger: w.logger()})
	if err != nil {
		w.t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		w.t.Fatal(err)
	}
	w.stopDeliverer = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Close(ctx)
	}
	w.t.Cleanup(w.stopDeliverer)
	// The deliverer's admin service, with the shaping endpoints.
	svc, err := micro.AddService(js.Conn(), micro.Config{Name: api.DelivererService, Version: "0.0.1"})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = svc.Stop() })
	if err := d.ServeShaping(svc); err != nil {
		w.t.Fatal(err)
	}
	// The endpoints' subscriptions reach the server with the flush: a
	// test's first request, from the CLI's own connection, must not find
	// no responders (seen in CI: "sluice shaping suspend: no answer from
	// a deliverer within 3s", right after the world started).
	if err := js.Conn().Flush(); err != nil {
		w.t.Fatal(err)
	}
}

// send stores a message as the ingress does and returns its queue id.
func (w *world) send(from string, rcpts ...string) string {
	w.t.Helper()
	return w.sendLarge(from, 0, rcpts...)
}

// sendLarge is send with a body of over large octets, which the ingress
// stores in the bodies' object store; with large 0 the body is inline.
func (w *world) sendLarge(from string, large int, rcpts ...string) string {
	w.t.Helper()
	qid := wire.NewQueueID(time.Now().Add(-w.accepted))
	w.sent = append(w.sent, qid)
	body := []byte("Received: by test\r\nFrom: <" + from + ">\r\nSubject: queue test\r\n\r\nHello.\r\n")
	m := &sluicev1.Message{Schema: wire.SchemaVersion, QueueId: qid, MailFrom: from, ReceivedUnixNano: time.Now().UnixNano(), Body: body}
	if large > 0 {
		for len(body) <= large {
			body = append(body, "A line of the body, to make it large.\r\n"...)
		}
		obs, err := w.js.ObjectStore(context.Background(), wire.BucketBodies)
		if err != nil {
			w.t.Fatal(err)
		}
		info, err := obs.PutBytes(context.Background(), qid, body)
		if err != nil {
			w.t.Fatal(err)
		}
		m.Body, m.BodyObject, m.BodyNuid, m.BodySize = nil, qid, info.NUID, int64(len(body))
	}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, &sluicev1.Recipient{Address: r})
	}
	data, _ := proto.Marshal(m)
	msg := nats.NewMsg(wire.MessageSubject(qid))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, qid)
	ctx, span := w.tracer.Tracer("ingress").Start(context.Background(), "ingress.test")
	telemetry.Inject(ctx, msg.Header)
	span.End()
	if _, err := w.js.PublishMsg(ctx, msg); err != nil {
		w.t.Fatal(err)
	}
	return qid
}

// cli runs `sluice queue <args>` against the world and returns the exit
// status and output.
func (w *world) cli(args ...string) (int, string, string) {
	w.t.Helper()
	return runCLI(w.ns.ClientURL(), args...)
}

func runCLI(url string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	full := append([]string{"queue", args[0], "-server", url, "-timeout", "3s"}, args[1:]...)
	code := run(full, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// rows runs `list -json` with the given filters.
func (w *world) rows(filters ...string) []api.QueueRow {
	w.t.Helper()
	code, out, errs := w.cli(append([]string{"list", "-json"}, filters...)...)
	if code != 0 {
		w.t.Fatalf("list %v: exit %d: %s", filters, code, errs)
	}
	var rows []api.QueueRow
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r api.QueueRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			w.t.Fatalf("list -json printed a line that is not JSON: %q", sc.Text())
		}
		rows = append(rows, r)
	}
	return rows
}

// row returns the row of the message qid, or nil.
func (w *world) row(qid string) *api.QueueRow {
	for _, r := range w.rows() {
		if r.QueueID == qid {
			return &r
		}
	}
	return nil
}

func (w *world) eventually(what string, timeout time.Duration, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			var hist strings.Builder
			for _, qid := range w.sent {
				_, out, errs := w.cli("log", qid)
				hist.WriteString(out + errs)
			}
			w.t.Fatalf("%s: not after %s\nhistory:\n%s\nservices' logs:\n%s", what, timeout, hist.String(), w.logs.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// arrivals counts the messages the destination accepted for rcpt.
func (w *world) arrivals(rcpt string) int {
	n := 0
	for _, m := range w.dest.Messages() {
		for _, r := range m.To {
			if r == rcpt {
				n++
			}
		}
	}
	return n
}

func (w *world) inState(qid, state string) func() bool {
	return func() bool {
		r := w.row(qid)
		if testing.Verbose() {
			w.t.Logf("%s: %+v", qid, r)
		}
		return r != nil && r.QueueName == state
	}
}

func mustCode(t *testing.T, want int, code int, out, errs string, what string) {
	t.Helper()
	if code != want {
		t.Fatalf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, code, want, out, errs)
	}
}

// TestQueueCommands runs every queue command against running services.
func TestQueueCommands(t *testing.T) {
	w := newWorld(t, time.Hour)
	busy := w.send("alice@origin.test", "busy@dest.test")
	ok := w.send("bob@origin.test", "ok@dest.test")
	w.eventually("ok delivered", 10*time.Second, func() bool { return w.arrivals("ok@dest.test") == 1 })
	w.refuse.Store(true) // everything else is deferred from now on
	// Its body is an object: `delete -bounce` reads its header section
	// from the bodies' object store.
	other := w.sendLarge("carol@origin.test", 1<<20, "x@other.test", "y@other.test")
	third := w.send("dave@origin.test", "z@dest.test")
	for _, q := range []string{busy, other, third} {
		w.eventually(q+" deferred", 10*time.Second, w.inState(q, "deferred"))
	}

	t.Run("list", func(t *testing.T) {
		rows := w.rows()
		if len(rows) != 3 {
			t.Fatalf("list: %d rows, want 3 (the delivered message is gone): %+v", len(rows), rows)
		}
		if rows[0].QueueID != busy || rows[1].QueueID != other || rows[2].QueueID != third {
			t.Errorf("not oldest first: %s %s %s", rows[0].QueueID, rows[1].QueueID, rows[2].QueueID)
		}
		r := rows[0]
		if r.Sender != "alice@origin.test" || r.Domain != "dest.test" || r.Attempts != 1 || r.Reason != "remote" ||
			!strings.Contains(r.LastError, "451 4.2.1") || r.NextAttempt < time.Now().Add(50*time.Minute).Unix() ||
			r.MessageSize == 0 || r.Priority != "normal" || r.ArrivalTime == 0 {
			t.Errorf("row = %+v", r)
		}
		if len(rows[1].Recipients) != 2 || rows[1].Recipients[1].Address != "y@other.test" {
			t.Errorf("recipients = %+v", rows[1].Recipients)
		}
		if got := w.rows("-domain", "other.test"); len(got) != 1 || got[0].QueueID != other {
			t.Errorf("-domain other.test: %+v", got)
		}
		if got := w.rows("-sender", "@ORIGIN.test", "-recipient", "z@dest.test"); len(got) != 1 || got[0].QueueID != third {
			t.Errorf("-sender @origin.test -recipient z@dest.test: %+v", got)
		}
		if got := w.rows("-reason", "remote", "-priority", "normal", "-state", "deferred", "-min-age", "0s", "-max-age", "1h"); len(got) != 3 {
			t.Errorf("reason/priority/state/age filters: %d rows", len(got))
		}
		if got := w.rows("-min-age", "1h"); len(got) != 0 {
			t.Errorf("-min-age 1h: %d rows", len(got))
		}
		code, out, errs := w.cli("list")
		mustCode(t, 0, code, out, errs, "list")
		if !strings.HasPrefix(out, "JOB ID") || !strings.Contains(out, busy+"-0") || !strings.Contains(errs, "3 jobs") {
			t.Errorf("list text:\n%s%s", out, errs)
		}
		code, out, errs = w.cli("list", "-state", "held")
		mustCode(t, 1, code, out, errs, "list -state held")
		if !strings.Contains(errs, "no job matches the filter (state=held)") || out != "" {
			t.Errorf("no-match: stdout %q (want nothing, not a header), stderr %q", out, errs)
		}
		code, out, errs = w.cli("list", "-state", "frozen")
		mustCode(t, 1, code, out, errs, "list -state frozen")
		if !strings.Contains(errs, "filter.states") {
			t.Errorf("bad filter error: %q", errs)
		}
	})

	t.Run("show and log", func(t *testing.T) {
		code, out, errs := w.cli("show", "-json", busy)
		mustCode(t, 0, code, out, errs, "show")
		var j api.QueueJob
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &j); err != nil {
			t.Fatal(err)
		}
		if j.State != "deferred" || j.TraceID == "" || j.NextAttempt.IsZero() || len(j.Attempts) != 1 || j.Envelope == nil ||
			j.Envelope.Sender != "alice@origin.test" {
			t.Fatalf("show = %+v", j)
		}
		a := j.Attempts[0]
		if a.Deliverer != "deliverer-test" || a.RemoteHost == "" || a.Result != "deferred" || a.Reason != "remote" ||
			!strings.Contains(a.Reply, "451") || a.Started.IsZero() || a.Finished.Before(a.Started) {
			t.Errorf("attempt = %+v", a)
		}
		if len(j.Recipients) != 1 || j.Recipients[0].Status != "pending" || !strings.Contains(j.Recipients[0].Reply, "mailbox busy") {
			t.Errorf("recipients = %+v", j.Recipients)
		}
		code, out, errs = w.cli("show", busy)
		mustCode(t, 0, code, out, errs, "show text")
		for _, want := range []string{"trace id:", j.TraceID, "deliverer-test", "next attempt:", "busy@dest.test"} {
			if !strings.Contains(out, want) {
				t.Errorf("show text lacks %q:\n%s", want, out)
			}
		}
		// The delivered message's history is still there.
		code, out, errs = w.cli("log", "-json", ok)
		mustCode(t, 0, code, out, errs, "log")
		var types []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var ev api.QueueEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatal(err)
			}
			types = append(types, ev.Type)
		}
		if strings.Join(types, " ") != "received attempt delivered" {
			t.Errorf("log of a delivered message: %v", types)
		}
		code, out, errs = w.cli("log", ok)
		mustCode(t, 0, code, out, errs, "log text")
		if !strings.Contains(out, "delivered") || !strings.Contains(out, "from=bob@origin.test") {
			t.Errorf("log text:\n%s", out)
		}
	})

	t.Run("stats", func(t *testing.T) {
		code, out, errs := w.cli("stats")
		mustCode(t, 0, code, out, errs, "stats")
		lines := strings.Split(out, "\n")
		if f := strings.Fields(lines[0]); len(f) != 11 || f[0] != "T" || f[1] != "5" || f[10] != "1280+" {
			t.Errorf("stats header: %q", lines[0])
		}
		if f := strings.Fields(lines[1]); f[0] != "TOTAL" || f[1] != "3" || f[2] != "3" {
			t.Errorf("stats total: %q", lines[1])
		}
		if f := strings.Fields(lines[2]); f[0] != "dest.test" || f[1] != "2" {
			t.Errorf("largest domain first: %q", lines[2])
		}
		for _, want := range []string{"by state: deferred 3", "by deferral reason: remote 3", "1 delivered): p50"} {
			if !strings.Contains(out, want) {
				t.Errorf("stats lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("hold release retry", func(t *testing.T) {
		code, out, errs := w.cli("hold", "-dry-run", "-domain", "dest.test")
		mustCode(t, 0, code, out, errs, "hold -dry-run")
		if !strings.Contains(out, "2 of 2 matching jobs would be held") {
			t.Errorf("dry run: %q", out)
		}
		if got := w.rows("-state", "held"); len(got) != 0 {
			t.Fatalf("dry run held %d jobs", len(got))
		}
		code, out, errs = w.cli("hold", busy)
		mustCode(t, 0, code, out, errs, "hold")
		if r := w.row(busy); r == nil || r.QueueName != "held" {
			t.Fatalf("after hold: %+v", r)
		}
		code, out, errs = w.cli("retry", busy)
		mustCode(t, 1, code, out, errs, "retry of a held job")
		if !strings.Contains(out, "release it first") {
			t.Errorf("retry of held: %q", out)
		}
		code, out, errs = w.cli("release", "-keep-schedule", busy)
		mustCode(t, 0, code, out, errs, "release -keep-schedule")
		// Its next attempt is an hour away: released keeping its schedule,
		// it is deferred again.
		if r := w.row(busy); r == nil || r.QueueName != "deferred" || r.NextAttempt < time.Now().Add(50*time.Minute).Unix() {
			t.Fatalf("after release -keep-schedule: %+v", r)
		}
		code, out, errs = w.cli("release", busy)
		mustCode(t, 1, code, out, errs, "release of a job not held")
		if !strings.Contains(out, "not held") {
			t.Errorf("release of not held: %q", out)
		}
		// Released by default, it is tried now: a second attempt follows.
		attempts := func() int {
			_, out, _ := w.cli("log", "-json", busy)
			n := 0
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var ev api.QueueEvent
				if json.Unmarshal([]byte(line), &ev) == nil && ev.Type == "attempt" {
					n++
				}
			}
			return n
		}
		before := attempts()
		code, out, errs = w.cli("hold", busy)
		mustCode(t, 0, code, out, errs, "hold again")
		code, out, errs = w.cli("release", busy)
		mustCode(t, 0, code, out, errs, "release")
		w.eventually("an attempt after release", 15*time.Second, func() bool { return attempts() == before+1 })
	})

	t.Run("prioritize", func(t *testing.T) {
		code, out, errs := w.cli("prioritize", "high", other)
		mustCode(t, 0, code, out, errs, "prioritize")
		if r := w.row(other); r == nil || r.Priority != "high" || r.QueueName != "deferred" {
			t.Fatalf("after prioritize: %+v", r)
		}
		str, _ := w.js.Stream(context.Background(), wire.StreamJobs)
		raw, err := str.GetLastMsgForSubject(context.Background(), wire.ScheduleSubject(other+"-0"))
		if err != nil {
			t.Fatal(err)
		}
		if got := raw.Header.Get(jetstream.ScheduleTargetHeader); got != wire.JobSubject(sluicev1.Priority_PRIORITY_HIGH, other+"-0") {
			t.Errorf("schedule target = %q", got)
		}
		code, out, errs = w.cli("log", other)
		mustCode(t, 0, code, out, errs, "log")
		if !strings.Contains(out, "reprioritised") || !strings.Contains(out, "from normal") {
			t.Errorf("log lacks the reprioritisation:\n%s", out)
		}
	})

	t.Run("delete", func(t *testing.T) {
		ctx := context.Background()
		msgs, _ := w.js.Stream(ctx, wire.StreamMessages)
		bounces, _ := w.js.Stream(ctx, wire.StreamBounces)
		code, out, errs := w.cli("delete", "-bounce", other)
		mustCode(t, 0, code, out, errs, "delete -bounce")
		if w.row(other) != nil {
			t.Fatal("deleted job still listed")
		}
		raw, err := bounces.GetLastMsgForSubject(ctx, wire.BounceSubject(other+"-0"))
		if err != nil {
			t.Fatal("no bounce request:", err)
		}
		var b sluicev1.Bounce
		if err := proto.Unmarshal(raw.Data, &b); err != nil {
			t.Fatal(err)
		}
		if b.Kind != sluicev1.BounceKind_BOUNCE_KIND_FAILED || len(b.Recipients) != 2 || b.Recipients[0].EnhancedCode != "5.0.0" ||
			!strings.Contains(b.Recipients[0].Text, "deleted by the postmaster") || !bytes.Contains(b.OriginalHeaders, []byte("Subject: queue test")) || bytes.Contains(b.OriginalHeaders, []byte("A line of the body")) {
			t.Errorf("bounce = %v", &b)
		}
		if _, err := msgs.GetLastMsgForSubject(ctx, wire.MessageSubject(other)); err == nil {
			t.Error("message of the deleted job is still stored")
		}

		code, out, errs = w.cli("delete", third)
		mustCode(t, 0, code, out, errs, "delete silently")
		if _, err := bounces.GetLastMsgForSubject(ctx, wire.BounceSubject(third+"-0")); err == nil {
			t.Error("silent delete requested a bounce")
		}
		code, out, errs = w.cli("log", third)
		mustCode(t, 0, code, out, errs, "log of deleted")
		if !strings.Contains(out, "deleted") || !strings.Contains(out, "deleted silently") {
			t.Errorf("log of deleted:\n%s", out)
		}
		if got := w.rows(); len(got) != 1 || got[0].QueueID != busy {
			t.Errorf("left in the queue: %+v", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		code, out, errs := w.cli("show", "0000000000000000000NOSUCH")
		mustCode(t, 1, code, out, errs, "show unknown")
		if !strings.Contains(errs, "unknown id 0000000000000000000NOSUCH") {
			t.Errorf("unknown id: %q", errs)
		}
		code, out, errs = w.cli("hold", "0000000000000000000NOSUCH-0")
		mustCode(t, 1, code, out, errs, "hold unknown")
		if !strings.Contains(errs, "unknown id 0000000000000000000NOSUCH-0") {
			t.Errorf("unknown id: %q", errs)
		}
		code, out, errs = w.cli("delete", "-domain", "nowhere.test")
		mustCode(t, 1, code, out, errs, "delete no match")
		if !strings.Contains(errs, "no job matches the filter (domain=nowhere.test)") {
			t.Errorf("no match: %q", errs)
		}
		code, out, errs = w.cli("hold")
		mustCode(t, 2, code, out, errs, "hold without ids")
	})
}

// TestNoService checks the error when no scheduler answers.
func TestNoService(t *testing.T) {
	ns := natstest.Start(t)
	code, out, errs := runCLI(ns.ClientURL(), "stats")
	mustCode(t, 1, code, out, errs, "stats without a scheduler")
	if !strings.Contains(errs, "no answer from sluice-scheduler within 3s (is it running?") {
		t.Errorf("error = %q", errs)
	}
	code, out, errs = runCLI(ns.ClientURL(), "hold", "-all")
	mustCode(t, 1, code, out, errs, "hold without a scheduler")
	if !strings.Contains(errs, "no answer from sluice-scheduler within 3s") {
		t.Errorf("error = %q", errs)
	}
	// Global flags before the command work too.
	var o, e bytes.Buffer
	if code := run([]string{"-server", ns.ClientURL(), "-timeout", "2s", "queue", "stats"}, nil, &o, &e); code != 1 ||
		!strings.Contains(e.String(), "no answer from sluice-scheduler within 2s") {
		t.Errorf("global flags first: exit %d: %q", code, e.String())
	}
	code, out, errs = runCLI("nats://127.0.0.1:1", "list")
	mustCode(t, 1, code, out, errs, "no NATS")
	if !strings.Contains(errs, "cannot connect to NATS at nats://127.0.0.1:1") {
		t.Errorf("error = %q", errs)
	}
}

// TestHoldSurvivesRestart: a held job is not delivered while held, even
// across a scheduler restart (the index is rebuilt from events), and is
// delivered once after release.
func TestHoldSurvivesRestart(t *testing.T) {
	w := newWorld(t, 2*time.Second)
	w.refuse.Store(true)
	qid := w.send("alice@origin.test", "held@dest.test")
	w.eventually("deferred", 10*time.Second, w.inState(qid, "deferred"))
	code, out, errs := w.cli("hold", qid)
	mustCode(t, 0, code, out, errs, "hold")
	w.refuse.Store(false)

	w.stopScheduler()
	w.startScheduler()
	w.eventually("held after restart", 10*time.Second, w.inState(qid, "held"))
	// The retry was due 2s after the deferral; wait well past it.
	time.Sleep(3 * time.Second)
	if n := w.arrivals("held@dest.test"); n != 0 {
		t.Fatalf("held job delivered %d times", n)
	}
	if r := w.row(qid); r == nil || r.QueueName != "held" {
		t.Fatalf("after the retry time: %+v", r)
	}
	code, out, errs = w.cli("release", qid)
	mustCode(t, 0, code, out, errs, "release")
	w.eventually("delivered after release", 10*time.Second, func() bool { return w.arrivals("held@dest.test") == 1 })
	w.eventually("gone from the queue", 5*time.Second, func() bool { return w.row(qid) == nil })
	code, out, errs = w.cli("log", "-json", qid)
	mustCode(t, 0, code, out, errs, "log")
	var types []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev api.QueueEvent
		_ = json.Unmarshal([]byte(line), &ev)
		types = append(types, ev.Type)
	}
	if got := strings.Join(types, " "); got != "received attempt deferred held released attempt delivered" {
		t.Errorf("history: %s", got)
	}
}

// TestRetryOnce: retry makes a deferred job due now by replacing its
// schedule; it is delivered exactly once, and the old schedule never fires.
func TestRetryOnce(t *testing.T) {
	w := newWorld(t, 4*time.Second)
	w.refuse.Store(true)
	qid := w.send("alice@origin.test", "retry@dest.test")
	w.eventually("deferred", 10*time.Second, w.inState(qid, "deferred"))
	w.refuse.Store(false)
	old := time.Unix(w.row(qid).NextAttempt, 0)
	code, out, errs := w.cli("retry", qid)
	mustCode(t, 0, code, out, errs, "retry")
	w.eventually("delivered", 10*time.Second, func() bool { return w.arrivals("retry@dest.test") == 1 })
	if now := time.Now(); !now.Before(old) {
		t.Fatalf("delivered at %s, not before the old schedule's time %s: retry did not make it due", now, old)
	}
	// Past the old schedule's time, still exactly once.
	time.Sleep(time.Until(old) + 2*time.Second)
	if n := w.arrivals("retry@dest.test"); n != 1 {
		t.Fatalf("delivered %d times, want exactly once", n)
	}
	str, _ := w.js.Stream(context.Background(), wire.StreamJobs)
	if _, err := str.GetLastMsgForSubject(context.Background(), wire.ScheduleSubject(qid+"-0")); err == nil {
		t.Error("a schedule is still pending")
	}
	code, out, errs = w.cli("log", qid)
	mustCode(t, 0, code, out, errs, "log")
	if strings.Count(out, " delivered ") != 1 || !strings.Contains(out, "scheduled") {
		t.Errorf("log:\n%s", out)
	}
}

// TestPrioritizeOfAFetchedJob interleaves deliverers and prioritize. The
// test is the deliverer: it fetches both jobs' copies from the consumer the
// real deliverer created. The first copy it claims for an attempt, as a
// deliverer does before attempting (its "attempt" event on the copy's
// claim subject): prioritize must leave that job where it is, since a
// second copy in the new class would be delivered too. The second copy,
// fetched but not claimed yet, moves: prioritize claims it first, and the
// deliverer that holds it then finds the claim taken and must not attempt it.
//
// It is run with messages accepted now, and 30 min ago, whose events are
// on subjects of their own (wire.ShardWindow) while the claims stay in
// their shard: the log shows the move either way.
func TestPrioritizeOfAFetchedJob(t *testing.T) {
	for _, age := range []time.Duration{0, 30 * time.Minute} {
		t.Run("accepted "+age.String()+" ago", func(t *testing.T) { prioritizeOfAFetchedJob(t, age) })
	}
}

func prioritizeOfAFetchedJob(t *testing.T, age time.Duration) {
	w := newWorld(t, time.Minute)
	w.accepted = age
	w.stopDeliverer()
	ctx := context.Background()
	claimed, unclaimed := w.send("alice@origin.test", "bob@dest.test"), w.send("alice@origin.test", "carol@dest.test")
	w.eventually("both jobs ready", 10*time.Second, func() bool {
		r1, r2 := w.row(claimed), w.row(unclaimed)
		return r1 != nil && r2 != nil && r1.QueueName == api.StateReady && r2.QueueName == api.StateReady
	})
	normal, err := w.js.Consumer(ctx, wire.StreamJobs, wire.DelivererConsumer(sluicev1.Priority_PRIORITY_NORMAL))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := normal.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	seqs := map[string]uint64{}
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		seqs[wire.QueueIDOf(strings.TrimPrefix(m.Subject(), wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, "")))] = md.Sequence.Stream
	}
	if seqs[claimed] == 0 || seqs[unclaimed] == 0 {
		t.Fatalf("fetched %v, want both jobs", seqs)
	}
	take := func(qid string) claim.Outcome {
		t.Helper()
		m := nats.NewMsg(wire.ClaimSubject(qid, wire.EventAttempt, seqs[qid]))
		m.Data = api.MarshalQueueEvent(&api.QueueEvent{Type: wire.EventAttempt, QueueID: qid, JobID: qid + "-0", Attempt: 1, State: api.StateActive, Time: time.Now()})
		out, err := claim.Take(ctx, w.js, m, qid, seqs[qid])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := take(claimed); !out.Won {
		t.Fatalf("the deliverer's claim of an untouched copy: %+v", out)
	}
	str, err := w.js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}

	code, out, errs := w.cli("prioritize", "high", claimed)
	if !strings.Contains(out+errs, "being attempted now") {
		t.Errorf("prioritize of the claimed job: exit %d, %s%s; want it skipped as being attempted", code, out, errs)
	}
	if _, err := str.GetLastMsgForSubject(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_HIGH, claimed+"-0")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a second copy of the claimed job was queued as high (%v): two deliverers would deliver it", err)
	}

	code, out, errs = w.cli("prioritize", "high", unclaimed)
	mustCode(t, 0, code, out, errs, "prioritize the fetched, unclaimed job")
	if _, err := str.GetLastMsgForSubject(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_HIGH, unclaimed+"-0")); err != nil {
		t.Fatalf("the unclaimed job is not queued as high: %v", err)
	}
	if _, err := str.GetLastMsgForSubject(ctx, wire.JobSubject(sluicev1.Priority_PRIORITY_NORMAL, unclaimed+"-0")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the unclaimed job is still queued as normal too (%v)", err)
	}
	if out := take(unclaimed); out.Won || out.Holder != wire.EventReprioritised {
		t.Fatalf("the deliverer holding the moved job's old copy claimed it: %+v; want it held by the reprioritised event", out)
	}
	high, err := w.js.Consumer(ctx, wire.StreamJobs, wire.DelivererConsumer(sluicev1.Priority_PRIORITY_HIGH))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := high.Info(ctx); err != nil || info.NumPending != 1 {
		t.Fatalf("high class: %d jobs pending (%v), want the moved one", info.NumPending, err)
	}
	code, out, errs = w.cli("log", unclaimed)
	mustCode(t, 0, code, out, errs, "log")
	if strings.Count(out, "reprioritised") != 1 {
		t.Errorf("log of the moved job:\n%s", out)
	}
}
