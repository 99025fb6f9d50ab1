package worker

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// countingListener counts the TCP connections a destination has open at
// once, as the receiving site sees them.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	open, max int
	total     int
	accepted  []time.Time
	// maxBeforeFirst is the most connections open at once before the
	// first message was accepted (slow start).
	maxBeforeFirst int
	delivered      atomic.Int64
	deliveredAt    []time.Time
	// openFrom and maxFrom count open connections by client address.
	openFrom, maxFrom map[string]int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	from, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	l.mu.Lock()
	if l.openFrom == nil {
		l.openFrom, l.maxFrom = map[string]int{}, map[string]int{}
	}
	l.openFrom[from]++
	l.maxFrom[from] = max(l.maxFrom[from], l.openFrom[from])
	l.open++
	l.total++
	l.accepted = append(l.accepted, time.Now())
	l.max = max(l.max, l.open)
	if l.delivered.Load() == 0 {
		l.maxBeforeFirst = max(l.maxBeforeFirst, l.open)
	}
	l.mu.Unlock()
	return &countedConn{Conn: c, l: l, from: from}, nil
}

func (l *countingListener) stats() (open, maxOpen, total, beforeFirst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.max, l.total, l.maxBeforeFirst
}

// acceptedBetween counts connections accepted in [from, to).
func (l *countingListener) acceptedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.accepted {
		if !a.Before(from) && a.Before(to) {
			n++
		}
	}
	return n
}

// deliveredBetween counts messages accepted in [from, to).
func (l *countingListener) deliveredBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.deliveredAt {
		if !a.Before(from) && a.Before(to) {
			n++
		}
	}
	return n
}

type countedConn struct {
	net.Conn
	l    *countingListener
	from string
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.openFrom[c.from]--
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// countingSMTP is a go-smtp destination behind a countingListener that
// takes its time over DATA, so that connections overlap.
func countingSMTP(t *testing.T, delay time.Duration) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &slowSession{l: cl, delay: delay}, nil
	}))
	srv.Domain = "mx.counting.test"
	go srv.Serve(cl)
	t.Cleanup(func() { srv.Close() })
	return cl
}

type slowSession struct {
	l     *countingListener
	delay time.Duration
}

func (s *slowSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *slowSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *slowSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	time.Sleep(s.delay)
	s.l.mu.Lock()
	s.l.deliveredAt = append(s.l.deliveredAt, time.Now())
	s.l.mu.Unlock()
	s.l.delivered.Add(1)
	return nil
}
func (s *slowSession) Reset()        {}
func (s *slowSession) Logout() error { return nil }

// refusingSMTP answers every connection with reply as its greeting and
// hangs up, as a provider that throttles us does.
func refusingSMTP(t *testing.T, reply string) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := cl.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = io.WriteString(c, reply+"\r\n")
				// Wait for the client to hang up (QUIT or close).
				_, _ = bufio.NewReader(c).ReadString('\n')
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return cl
}

// shapedFleet starts n deliverers, each on its own NATS connection, with
// the shaping section set by mod. It returns their NATS connections.
func (e *env) shapedFleet(t *testing.T, n int, mod func(*Settings), hooks ...func(*Service)) []*nats.Conn {
	t.Helper()
	var conns []*nats.Conn
	for i := range n {
		s := testSettings(e)
		s.Instance = "d" + strconv.Itoa(i)
		s.Concurrency = 8
		if mod != nil {
			mod(&s)
		}
		nc, js := e.ns.Connect(t)
		svc, err := New(s, Deps{JS: js, Tracer: e.tp.Tracer("test"), Meter: noop.NewMeterProvider().Meter(""),
			Logger: slog.New(slog.DiscardHandler), Shuffle: func(int, func(i, j int)) {}})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hooks {
			h(svc)
		}
		if err := svc.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := svc.Close(ctx); err != nil {
				t.Logf("close %s: %v", s.Instance, err)
			}
		})
		conns = append(conns, nc)
	}
	return conns
}

func (e *env) resultsOf(t *testing.T, jobs []*sluicev1.Job, timeout time.Duration) []*sluicev1.Result {
	t.Helper()
	var out []*sluicev1.Result
	for _, j := range jobs {
		out = append(out, e.result(t, j, timeout))
	}
	return out
}

// TestFleetConnectionLimit: four deliverers with 32 delivery slots between
// them send 80 messages to two domains of one site (the same MX host)
// limited to 4 connections: the destination never sees more than 4 at
// once, slow start begins at 2, and every message arrives.
func TestFleetConnectionLimit(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 40*time.Millisecond)
	_, ps, _ := net.SplitHostPort(srv.Addr().String())
	port, _ := strconv.Atoi(ps)
	e.dns.MustAdd(t,
		"alpha.test. 300 IN MX 10 mx.site.test.",
		"beta.test. 300 IN MX 10 mx.site.test.",
		"mx.site.test. 300 IN A 127.0.0.1",
	)
	const limit, initial = 4, 2
	e.shapedFleet(t, 4, func(s *Settings) {
		s.SMTPPort = port
		s.Shaping.Default.MaxConnections = limit
		s.Shaping.Default.InitialConnections = initial
		s.Shaping.BusyDelay = 50 * time.Millisecond
	})
	var jobs []*sluicev1.Job
	for i := range 80 {
		d := "alpha.test"
		if i%2 == 1 {
			d = "beta.test"
		}
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: d, rcpts: []string{"x@" + d}}))
	}
	for _, r := range e.resultsOf(t, jobs, 60*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	_, maxOpen, total, beforeFirst := srv.stats()
	t.Logf("80 messages to one site over %d connections; at most %d open at once (limit %d), %d before the first delivery (initial %d)",
		total, maxOpen, limit, beforeFirst, initial)
	if maxOpen > limit || maxOpen == 0 {
		t.Errorf("%d connections open at once, want 1..%d", maxOpen, limit)
	}
	if beforeFirst > initial {
		t.Errorf("%d connections open before the first delivery, want at most the initial %d (slow start)", beforeFirst, initial)
	}
	if maxOpen <= initial {
		t.Errorf("at most %d connections: slow start never raised the concurrency above %d", maxOpen, initial)
	}
	if got := srv.delivered.Load(); got != 80 {
		t.Errorf("%d messages arrived, want 80", got)
	}
	// Jobs that waited for a slot were not attempted meanwhile: each has
	// exactly one attempt event.
	attempts := e.events(t, wire.EventAttempt)
	for _, j := range jobs {
		if n := attempts[j.JobId]; n != 1 {
			t.Errorf("job %s has %d attempt events, want 1", j.JobId, n)
			break
		}
	}
}

// events counts the events of a type per job id.
func (e *env) events(t *testing.T, typ string) map[string]int {
	t.Helper()
	return e.eventsWith(t, typ, nil)
}

func (e *env) eventsWith(t *testing.T, typ string, each func(admin.QueueEvent)) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.js.OrderedConsumer(ctx, wire.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.SubjectEvents + ".*." + typ, wire.SubjectEvents + ".*." + typ + ".*"}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for {
		b, err := c.FetchNoWait(500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			var ev admin.QueueEvent
			if err := admin.UnmarshalQueueEvent(m.Data(), &ev); err != nil {
				t.Fatal(err)
			}
			out[ev.JobID]++
			if each != nil {
				each(ev)
			}
		}
		if n == 0 {
			return out
		}
	}
}

// TestSlowDownSuspendsSite: a destination answering "421 4.7.0 Try again
// later" at connect gets at most the initial concurrency's connections, then
// none while its site is suspended, and fewer per second afterwards; its
// jobs are deferred as throttled or wait without an attempt, with the reason
// in their history; mail for another site goes on meanwhile.
func TestSlowDownSuspendsSite(t *testing.T) {
	e := newEnv(t)
	bad := refusingSMTP(t, "421 4.7.0 Try again later, closing connection.")
	good := countingSMTP(t, 0)
	const initial, suspend = 4, 4 * time.Second
	e.shapedFleet(t, 4, func(s *Settings) {
		s.Routes = map[string]string{"throttling.test": bad.Addr().String(), "fine.test": good.Addr().String()}
		s.Shaping.Default.InitialConnections = initial
		s.Shaping.Default.SuspendFor = suspend
		s.Shaping.BusyDelay = 50 * time.Millisecond
	})
	start := time.Now()
	var badJobs, goodJobs []*sluicev1.Job
	for range 40 {
		badJobs = append(badJobs, e.enqueue(t, jobSpec{domain: "throttling.test", rcpts: []string{"x@throttling.test"}}))
	}
	for range 20 {
		goodJobs = append(goodJobs, e.enqueue(t, jobSpec{domain: "fine.test", rcpts: []string{"x@fine.test"}}))
	}
	// The other site is not delayed: its mail is delivered well before
	// the throttling site's suspension ends.
	for _, r := range e.resultsOf(t, goodJobs, 10*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	goodDone := time.Since(start)
	// Watch the throttling site for three suspensions.
	time.Sleep(3*suspend + suspend/2)
	_, _, total, _ := bad.stats()
	bad.mu.Lock()
	first := bad.accepted[0]
	bad.mu.Unlock()
	firstSecond := bad.acceptedBetween(first, first.Add(time.Second))
	// Attempts admitted just before the suspension may connect a little
	// late on a loaded machine: the quiet period is checked from 1.5 s.
	during := bad.acceptedBetween(first.Add(1500*time.Millisecond), first.Add(suspend))
	after := bad.acceptedBetween(first.Add(suspend), first.Add(3*suspend))
	t.Logf("fine.test delivered in %s; throttling.test: %d connections in the first second, %d in the rest of the suspension, %d in the %s after it (%.1f/s), %d in all for 40 jobs",
		goodDone.Round(time.Millisecond), firstSecond, during, after, 2*suspend, float64(after)/(2*suspend).Seconds(), total)
	// The other site's jobs were attempted once each and never waited
	// for the suspended site (only, perhaps, for their own site's slow
	// start).
	goodAttempts := e.events(t, wire.EventAttempt)
	isGood := map[string]bool{}
	for _, j := range goodJobs {
		isGood[j.JobId] = true
		if goodAttempts[j.JobId] != 1 {
			t.Errorf("fine.test job %s: %d attempts, want 1", j.JobId, goodAttempts[j.JobId])
		}
	}
	e.eventsWith(t, wire.EventThrottled, func(ev admin.QueueEvent) {
		if isGood[ev.JobID] && !strings.Contains(ev.Note, good.Addr().String()) {
			t.Errorf("a fine.test job was throttled for another site: %s", ev.Note)
		}
	})
	// A deliverer whose attempt ends as the site is suspended by another
	// may start one more before the watch tells it: a few more attempts
	// than the initial concurrency, never more at once.
	if firstSecond == 0 || firstSecond > 2*initial {
		t.Errorf("%d connections in the first second, want 1..%d (twice the initial concurrency)", firstSecond, 2*initial)
	}
	if _, maxOpen, _, _ := bad.stats(); maxOpen > initial {
		t.Errorf("%d connections open at once, want at most the initial %d", maxOpen, initial)
	}
	if during != 0 {
		t.Errorf("%d connections while the site was suspended, want 0", during)
	}
	if perSec := float64(after) / (2 * suspend).Seconds(); perSec >= float64(firstSecond) {
		t.Errorf("%.1f connections/s after the suspension, want fewer than the %d/s of the first second", perSec, firstSecond)
	}
	if total >= len(badJobs) {
		t.Errorf("%d connections for %d jobs: the site was not held back", total, len(badJobs))
	}
	// Every attempt that reached the site is deferred as throttled.
	str, err := e.js.Stream(context.Background(), wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	deferred, waited := 0, 0
	for _, j := range badJobs {
		raw, err := str.GetLastMsgForSubject(context.Background(), wire.ResultSubject(j.JobId))
		if err != nil {
			waited++
			continue
		}
		r := &sluicev1.Result{}
		if err := proto.Unmarshal(raw.Data, r); err != nil {
			t.Fatal(err)
		}
		check(t, r.Recipients[0], want{sluicev1.Outcome_OUTCOME_TEMPORARY, sluicev1.Reason_REASON_THROTTLED, 421, "4.7.0"})
		deferred++
	}
	if deferred != total || waited == 0 {
		t.Errorf("%d results for %d connections, %d jobs still waiting", deferred, total, waited)
	}
	// The waiting jobs explain themselves: a throttled event naming the
	// site and its suspension, and no attempt event.
	attempts := e.events(t, wire.EventAttempt)
	notes := 0
	throttled := e.eventsWith(t, wire.EventThrottled, func(ev admin.QueueEvent) {
		if strings.Contains(ev.Note, "throttled by site "+bad.Addr().String()) && ev.Reason == "throttled" {
			notes++
		}
	})
	withoutAttempt := 0
	for _, j := range badJobs {
		if throttled[j.JobId] > 0 && attempts[j.JobId] == 0 {
			withoutAttempt++
		}
	}
	if withoutAttempt == 0 || notes == 0 {
		t.Errorf("%d jobs waited without an attempt with a throttled event; %d events name the site", withoutAttempt, notes)
	}
	// The wait is on the job's trace too.
	spanEvents := 0
	for _, s := range e.spans.GetSpans() {
		for _, ev := range s.Events {
			if ev.Name == "sluice.throttled" {
				spanEvents++
			}
		}
	}
	if spanEvents == 0 {
		t.Error("no sluice.throttled span event")
	}
}

// TestKilledDelivererReleasesSlots: a deliverer that dies holding every
// slot of a site (its NATS connection cut, nothing released) blocks the
// site only until its slots expire, within the lease TTL.
func TestKilledDelivererReleasesSlots(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 0)
	route := map[string]string{"kill.test": srv.Addr().String()}
	const limit = 2
	shaped := func(name string, cacheTime time.Duration) func(*Settings) {
		return func(s *Settings) {
			s.Instance = name
			s.Routes = route
			s.Shaping.Default.MaxConnections = limit
			s.Shaping.Default.InitialConnections = limit
			s.Shaping.BusyDelay = 50 * time.Millisecond
			// Idle sessions keep their slots as long as they are cached.
			s.ConnectionCacheTime = cacheTime
		}
	}
	victim := e.shapedFleet(t, 1, shaped("victim", 5*time.Minute))[0]
	var first []*sluicev1.Job
	for range 8 {
		first = append(first, e.enqueue(t, jobSpec{domain: "kill.test", rcpts: []string{"x@kill.test"}}))
	}
	for _, r := range e.resultsOf(t, first, 20*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	// The victim holds its sessions, and their slots, idle.
	kv, err := e.js.KeyValue(context.Background(), wire.BucketShaping)
	if err != nil {
		t.Fatal(err)
	}
	held := func() int {
		// The lister's watch lives as long as its context.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys, err := kv.ListKeysFiltered(ctx, "conn.>")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range keys.Keys() {
			n++
		}
		return n
	}
	if n := held(); n == 0 || n > limit {
		t.Fatalf("%d slots held after the first deliveries, want 1..%d", n, limit)
	}
	// Kill it: its NATS connection goes, nothing is released.
	victim.Close()
	killed := time.Now()
	e.shapedFleet(t, 1, shaped("survivor", 2*time.Second))
	var second []*sluicev1.Job
	for range 8 {
		second = append(second, e.enqueue(t, jobSpec{domain: "kill.test", rcpts: []string{"x@kill.test"}}))
	}
	var lastAt time.Duration
	for _, r := range e.resultsOf(t, second, 30*time.Second) {
		check(t, r.Recipients[0], delivered)
		if r.Deliverer != "survivor" {
			t.Errorf("delivered by %s", r.Deliverer)
		}
		lastAt = max(lastAt, time.Unix(0, r.FinishedUnixNano).Sub(killed))
	}
	ttl := DefaultSettings().Shaping.LeaseTTL
	t.Logf("the survivor delivered the site's mail %s after the holder of its slots was killed (lease TTL %s)", lastAt.Round(10*time.Millisecond), ttl)
	if lastAt > ttl+3*time.Second {
		t.Errorf("the site was blocked %s after its slots' holder died, want within the lease TTL %s + 3s", lastAt, ttl)
	}
}

// TestLongSuspensionParksJobs: the jobs of a site suspended for longer
// than parkAfter leave the work queue for message schedules, so they hold
// nothing on the shared consumer (whose MaxAckPending they could fill),
// and come back when the suspension ends.
func TestLongSuspensionParksJobs(t *testing.T) {
	e := newEnv(t)
	bad := refusingSMTP(t, "421 4.7.28 Our system has detected an unusual rate of unsolicited mail")
	const suspend = 4 * time.Second
	e.shapedFleet(t, 1, func(s *Settings) {
		s.Routes = map[string]string{"parked.test": bad.Addr().String()}
		s.Shaping.Default.InitialConnections = 1
		s.Shaping.Default.SuspendFor = suspend
		s.Shaping.BusyDelay = 50 * time.Millisecond
	}, func(svc *Service) { svc.parkAfter = time.Second })
	var jobs []*sluicev1.Job
	for range 10 {
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: "parked.test", rcpts: []string{"x@parked.test"}}))
	}
	ctx := context.Background()
	str, err := e.js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := str.Consumer(ctx, wire.DelivererConsumer(sluicev1.Priority_PRIORITY_NORMAL))
	if err != nil {
		t.Fatal(err)
	}
	// Within the suspension: the nine jobs that did not connect are parked
	// on their schedule subjects and nothing is pending on the consumer.
	var parked int
	var pending int
	deadline := time.Now().Add(suspend - time.Second)
	for time.Now().Before(deadline) {
		info, err := str.Info(ctx, jetstream.WithSubjectFilter(wire.SubjectSchedule+".>"))
		if err != nil {
			t.Fatal(err)
		}
		parked = len(info.State.Subjects)
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pending = ci.NumAckPending
		if parked == 9 && pending == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, _, before, _ := bad.stats()
	t.Logf("during the suspension: %d jobs parked, %d pending on the consumer, %d connections", parked, pending, before)
	if parked != 9 || pending != 0 {
		t.Errorf("%d jobs parked on schedules and %d pending on the consumer, want 9 and 0", parked, pending)
	}
	if before != 1 {
		t.Errorf("%d connections before the suspension ended, want 1 (initial concurrency 1)", before)
	}
	// The schedules fire when the suspension ends: the site is tried again.
	waitUntil(t, 3*suspend, func() bool { _, _, n, _ := bad.stats(); return n > before }, "a connection after the suspension")
	attempts := e.events(t, wire.EventAttempt)
	n := 0
	for _, j := range jobs {
		n += attempts[j.JobId]
	}
	_, _, total, _ := bad.stats()
	if n != total {
		t.Errorf("%d attempt events for %d connections: a parked job's return must not be counted before it is tried", n, total)
	}
}

func waitUntil(t *testing.T, d time.Duration, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleetRateLimit: four deliverers send a backlog to one site limited to
// 20 messages per 2 s: four aligned 2-second periods receive 80 within 5%,
// and none of them more than 20 (give or take a message per deliverer in
// flight across a period's end).
func TestFleetRateLimit(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 0)
	const n, per, fleet = 20, 2 * time.Second, 4
	for range 150 {
		e.enqueue(t, jobSpec{domain: "rated.test", rcpts: []string{"x@rated.test"}})
	}
	e.shapedFleet(t, fleet, func(s *Settings) {
		s.Routes = map[string]string{"rated.test": srv.Addr().String()}
		s.Shaping.Default.MaxMessageRate = "20/2s"
		s.Shaping.BusyDelay = 50 * time.Millisecond
	})
	// Four whole periods, from the first to begin after the start.
	start := time.Unix(0, (time.Now().UnixNano()/int64(per)+1)*int64(per))
	time.Sleep(time.Until(start.Add(4 * per)))
	var counts []int
	for i := range 4 {
		counts = append(counts, srv.deliveredBetween(start.Add(time.Duration(i)*per), start.Add(time.Duration(i+1)*per)))
	}
	t.Logf("messages per 2 s period at a rate of %d/%s: %v (%d delivered in all)", n, per, counts, srv.delivered.Load())
	total := 0
	for i, c := range counts {
		total += c
		// A message counted at the end of a period may arrive at the
		// start of the next: one over per deliverer is the transaction's
		// time (seen on a loaded machine: 22), not the limit's failure;
		// the total over four periods below is the limit's measure.
		if c > n+fleet {
			t.Errorf("period %d: %d messages, want at most %d", i, c, n)
		}
	}
	if want := 4 * n; total < want*95/100 || total > want*105/100 {
		t.Errorf("%d messages in four periods, want %d within 5%%", total, want)
	}
}

// TestFleetConnectionRate: with sessions closed after each message, four
// deliverers open at most a site's connection rate of new connections:
// 10 per 2 s, over three periods 30 within 5%, and the mail still flows.
func TestFleetConnectionRate(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 0)
	const n, per = 10, 2 * time.Second
	for range 100 {
		e.enqueue(t, jobSpec{domain: "crate.test", rcpts: []string{"x@crate.test"}})
	}
	e.shapedFleet(t, 4, func(s *Settings) {
		s.Routes = map[string]string{"crate.test": srv.Addr().String()}
		s.Shaping.Default.MaxConnectionRate = "10/2s"
		s.Shaping.Default.MaxMessagesPerConnection = 1 // a connection per message
		s.Shaping.BusyDelay = 50 * time.Millisecond
	})
	start := time.Unix(0, (time.Now().UnixNano()/int64(per)+1)*int64(per))
	time.Sleep(time.Until(start.Add(3 * per)))
	var counts []int
	total := 0
	for i := range 3 {
		c := srv.acceptedBetween(start.Add(time.Duration(i)*per), start.Add(time.Duration(i+1)*per))
		counts = append(counts, c)
		total += c
		// As in TestFleetRateLimit: a connection counted at the end of a
		// period may be accepted at the start of the next, one per
		// deliverer at most.
		if c > n+4 {
			t.Errorf("period %d: %d new connections, want at most %d", i, c, n)
		}
	}
	t.Logf("new connections per 2 s period at a rate of %d/%s: %v; %d messages delivered", n, per, counts, srv.delivered.Load())
	if want := 3 * n; total < want*95/100 || total > want*105/100 {
		t.Errorf("%d new connections in three periods, want %d within 5%%", total, want)
	}
}

// TestShapingDisabled: with deliverer.shaping.disabled a deliverer opens as
// many connections as its concurrency allows, whatever the site's limits
// say, takes no slot in the shaping bucket, and delivers everything.
func TestShapingDisabled(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 100*time.Millisecond)
	e.shapedFleet(t, 1, func(s *Settings) {
		s.Routes = map[string]string{"open.test": srv.Addr().String()}
		s.Shaping.Disabled = true
		s.Shaping.Default.MaxConnections = 2
		s.Shaping.Default.InitialConnections = 1
	})
	var jobs []*sluicev1.Job
	for range 32 {
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: "open.test", rcpts: []string{"x@open.test"}}))
	}
	for _, r := range e.resultsOf(t, jobs, 30*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	_, maxOpen, _, _ := srv.stats()
	t.Logf("32 messages, at most %d connections open at once with shaping disabled (concurrency 8, limit 2 ignored)", maxOpen)
	if maxOpen <= 2 {
		t.Errorf("at most %d connections: the disabled limit of 2 was applied", maxOpen)
	}
	if maxOpen > 8 {
		t.Errorf("%d connections open at once, more than the concurrency of 8", maxOpen)
	}
	kv, err := e.js.KeyValue(context.Background(), wire.BucketShaping)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Errorf("shaping bucket holds %q with shaping disabled", k)
	}
}

// TestPerSourceLimits: two deliverers sending from 127.0.0.1 and 127.0.0.2
// (deliverer.source_address) with shaping.per_source: each source has its
// own budget of 2 connections at the site, so the destination sees at most
// 2 from each address and more than 2 in all, and each deliverer's
// connections leave from its own address.
func TestPerSourceLimits(t *testing.T) {
	e := newEnv(t)
	srv := countingSMTP(t, 100*time.Millisecond)
	sources := map[string]string{"d0": "127.0.0.1", "d1": "127.0.0.2"}
	e.shapedFleet(t, 2, func(s *Settings) {
		s.Routes = map[string]string{"sourced.test": srv.Addr().String()}
		s.SourceAddress = sources[s.Instance]
		s.Shaping.PerSource = true
		s.Shaping.Default.MaxConnections = 2
		s.Shaping.Default.InitialConnections = 2
		s.Shaping.BusyDelay = 50 * time.Millisecond
	})
	var jobs []*sluicev1.Job
	for range 40 {
		jobs = append(jobs, e.enqueue(t, jobSpec{domain: "sourced.test", rcpts: []string{"x@sourced.test"}}))
	}
	for _, r := range e.resultsOf(t, jobs, 60*time.Second) {
		check(t, r.Recipients[0], delivered)
	}
	srv.mu.Lock()
	maxFrom, maxOpen := maps.Clone(srv.maxFrom), srv.max
	srv.mu.Unlock()
	t.Logf("40 messages from two sources limited to 2 connections each: at most %v open per source, %d in all", maxFrom, maxOpen)
	if len(maxFrom) != 2 || maxFrom["127.0.0.1"] == 0 || maxFrom["127.0.0.2"] == 0 {
		t.Fatalf("connections came from %v, want 127.0.0.1 and 127.0.0.2", maxFrom)
	}
	for from, n := range maxFrom {
		if n > 2 {
			t.Errorf("%d connections open at once from %s, limit 2 per source", n, from)
		}
	}
	if maxOpen <= 2 {
		t.Errorf("at most %d connections in all: the two sources did not have budgets of their own", maxOpen)
	}
}
