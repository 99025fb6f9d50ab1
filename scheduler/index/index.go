// Package index is the scheduler's in-memory view of the queue: one compact
// entry per live job, folded from the queue events in SLUICE_EVENTS. It
// answers `sluice queue list` and `stats` without touching JetStream.
//
// Why events: SLUICE_JOBS is a work-queue stream, and JetStream refuses a
// second consumer whose filter overlaps the deliverers', so the jobs
// themselves cannot be read as they pass. Every state change is an event
// instead, and every scheduler instance consumes all of them from the start
// of the stream when it starts (an ordered consumer), so the index survives
// restarts and every instance can answer.
//
// Memory: a million jobs must fit in well under a kilobyte each. Entries are
// fixed-size structs in one slice (no pointer per job besides two strings),
// destination domains, senders and deferral replies are interned with
// reference counts, and recipients are one string per job. Only what list,
// filters and stats need is kept; `sluice queue show` reads the job's
// events instead.
package index

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// State is a live job's state.
type State uint8

// States of live jobs; finished jobs leave the index.
const (
	Ready State = iota + 1
	Active
	Deferred
	Held
)

var stateNames = [...]string{"", admin.StateReady, admin.StateActive, admin.StateDeferred, admin.StateHeld}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// ParseState is the inverse of String.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if i > 0 && n == strings.ToLower(s) {
			return State(i), true
		}
	}
	return 0, false
}

// entry is one live job. Times are Unix nanoseconds; strings of the
// interners are referred to by id. Keep it small: it is multiplied by a
// million.
type entry struct {
	id       string // job id; shares its bytes with the map key
	rcpts    string // addresses, separated by "\n"
	received int64
	next     int64 // next attempt, 0 when not deferred
	expires  int64
	size     int64
	domain   uint32
	sender   uint32
	lastErr  uint32
	gen      uint32 // bumped when the slot is reused
	attempts uint16
	jobs     uint16 // jobs of the message
	state    State
	prev     State // the state a held job was in
	class    sluicev1.Priority
	reason   sluicev1.Reason
}

// Index is the queue index. It is safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	slots   slab
	free    []int32
	byID    map[string]int32
	domains *interner
	senders *interner
	errs    *interner
	seq     uint64
	changed chan struct{}
	waiting int
	delays  *reservoir
}

// New returns an empty index keeping delivery delays for window.
func New(window time.Duration) *Index {
	return &Index{
		byID:    map[string]int32{},
		domains: newInterner(),
		senders: newInterner(),
		errs:    newInterner(),
		changed: make(chan struct{}),
		delays:  newReservoir(1<<16, window),
	}
}

// Len is the number of live jobs.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byID)
}

// Seq is the stream sequence of the last event applied.
func (x *Index) Seq() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.seq
}

// WaitSeq waits until the event with stream sequence seq has been applied,
// so an operator's change is visible to their next command.
func (x *Index) WaitSeq(ctx context.Context, seq uint64) error {
	for {
		x.mu.Lock()
		if x.seq >= seq {
			x.mu.Unlock()
			return nil
		}
		x.waiting++
		ch := x.changed
		x.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			x.mu.Lock()
			x.waiting--
			x.mu.Unlock()
			return ctx.Err()
		}
		x.mu.Lock()
		x.waiting--
		x.mu.Unlock()
	}
}

// Apply folds one event, stored at stream sequence seq, into the index.
// Events of one job arrive in the order they were stored; the one race the
// pipeline allows (a deliverer's attempt event stored before the received
// event the scheduler published concurrently) is absorbed by creating the
// entry on whichever comes first and letting a late received event fill in
// only the envelope.
func (x *Index) Apply(ev *admin.QueueEvent, seq uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if seq > x.seq {
		x.seq = seq
		if x.waiting > 0 {
			close(x.changed)
			x.changed = make(chan struct{})
		}
	}
	if ev.JobID == "" {
		return
	}
	switch ev.Type {
	case wire.EventDelivered, wire.EventBounced, wire.EventExpired, wire.EventDeleted:
		if ev.Type != wire.EventDeleted {
			x.recordDelays(ev)
		}
		x.remove(ev.JobID)
		return
	}
	switch ev.Type {
	case wire.EventReceived, wire.EventAttempt, wire.EventDeferred:
	default:
		// An operator's event about a job the index does not know is
		// late news about a finished job: it must not bring it back.
		if _, ok := x.byID[ev.JobID]; !ok {
			return
		}
	}
	i, created := x.slot(ev.JobID)
	e := x.slots.at(i)
	if p, err := wire.ParseClass(ev.Priority); err == nil && ev.Priority != "" {
		e.class = p
	}
	if ev.Attempt > 0 && ev.Type != wire.EventReceived {
		n := uint16(ev.Attempt)
		if ev.Type != wire.EventAttempt && ev.Type != wire.EventDeferred {
			// Operator events name the attempt the job is about to be.
			n--
		}
		e.attempts = max(e.attempts, n)
	}
	switch ev.Type {
	case wire.EventReceived:
		if env := ev.Envelope; env != nil {
			x.fill(e, env)
		}
		if created {
			e.state = Ready
		}
	case wire.EventAttempt:
		e.state = Active
		e.next = 0
	case wire.EventDeferred:
		e.state = stateOr(ev.State, Deferred)
		e.next = unixNano(ev.NextAttempt)
		e.lastErr = x.errs.replace(e.lastErr, ev.Error)
		e.reason = parseReason(ev.Reason)
		if len(ev.Recipients) > 0 {
			// Only the deferred recipients are left.
			var left []string
			for _, r := range ev.Recipients {
				if r.Outcome == "deferred" {
					left = append(left, r.Address)
				}
			}
			if len(left) > 0 {
				e.rcpts = strings.Join(left, "\n")
			}
		}
	case wire.EventHeld:
		if e.state != Held {
			e.prev = e.state
		}
		e.state = Held
	case wire.EventReleased:
		e.state = stateOr(ev.State, e.prev)
		if e.state == Held || e.state == 0 {
			e.state = Ready
		}
		e.next = unixNano(ev.NextAttempt)
	case wire.EventScheduled:
		e.state = stateOr(ev.State, Ready)
		e.next = unixNano(ev.NextAttempt)
	case wire.EventReprioritised:
		// The class was set above.
	case wire.EventThrottled:
		// A deliverer held the job back for its receiving site. Only a
		// job it parked on a schedule says so in its state (deferred, with
		// the time it comes back); a short wait leaves the job as it was.
		if ev.State != "" {
			e.state = stateOr(ev.State, e.state)
			e.next = unixNano(ev.NextAttempt)
			e.reason = parseReason(ev.Reason)
		}
	}
}

func stateOr(s string, def State) State {
	if st, ok := ParseState(s); ok {
		return st
	}
	return def
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

var reasonByName = func() map[string]sluicev1.Reason {
	m := map[string]sluicev1.Reason{}
	for v, n := range sluicev1.Reason_name {
		m[strings.ToLower(strings.TrimPrefix(n, "REASON_"))] = sluicev1.Reason(v)
	}
	return m
}()

func parseReason(s string) sluicev1.Reason { return reasonByName[s] }

func reasonName(r sluicev1.Reason) string {
	if r == sluicev1.Reason_REASON_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

func (x *Index) fill(e *entry, env *admin.QueueEnvelope) {
	e.domain = x.domains.replace(e.domain, strings.ToLower(env.Domain))
	e.sender = x.senders.replace(e.sender, env.Sender)
	if e.rcpts == "" {
		e.rcpts = strings.Join(env.Recipients, "\n")
	}
	e.received = unixNano(env.Received)
	e.expires = unixNano(env.Expires)
	e.size = env.Size
	e.jobs = uint16(min(env.JobsTotal, 65535))
}

// slot returns the slot of id, creating an entry when there is none.
func (x *Index) slot(id string) (int32, bool) {
	if i, ok := x.byID[id]; ok {
		return i, false
	}
	var i int32
	if n := len(x.free); n > 0 {
		i = x.free[n-1]
		x.free = x.free[:n-1]
		gen := x.slots.at(i).gen + 1
		*x.slots.at(i) = entry{gen: gen}
	} else {
		i = x.slots.grow()
	}
	// Keep our own copy of the id: the event's strings are garbage soon.
	id = strings.Clone(id)
	x.slots.at(i).id = id
	x.byID[id] = i
	return i, true
}

func (x *Index) remove(id string) {
	i, ok := x.byID[id]
	if !ok {
		return
	}
	e := x.slots.at(i)
	x.domains.release(e.domain)
	x.senders.release(e.sender)
	x.errs.release(e.lastErr)
	delete(x.byID, id)
	*e = entry{gen: e.gen}
	x.free = append(x.free, i)
}

// recordDelays adds the accept-to-delivery time of every recipient an
// outcome event reports delivered to the delay reservoir.
func (x *Index) recordDelays(ev *admin.QueueEvent) {
	i, ok := x.byID[ev.JobID]
	if !ok || x.slots.at(i).received == 0 {
		return
	}
	d := ev.Time.UnixNano() - x.slots.at(i).received
	for _, r := range ev.Recipients {
		if r.Outcome == "delivered" {
			x.delays.add(ev.Time.UnixNano(), d)
		}
	}
}

// Prune removes jobs that expired more than grace ago: JetStream has
// dropped everything about them by then (its streams keep jobs for the
// queue lifetime plus a grace period), so an entry left behind by a lost
// event cannot linger forever.
func (x *Index) Prune(now time.Time, grace time.Duration) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	limit := now.Add(-grace).UnixNano()
	var gone []string
	for i := range x.slots.n {
		e := x.slots.at(i)
		if e.id != "" && e.expires != 0 && e.expires < limit {
			gone = append(gone, e.id)
		}
	}
	for _, id := range gone {
		x.remove(id)
	}
	return len(gone)
}

// Job is a copy of what the index knows about one job.
type Job struct {
	ID          string
	State       State
	Prev        State
	Class       sluicev1.Priority
	Domain      string
	Sender      string
	Recipients  []string
	Received    time.Time
	NextAttempt time.Time
	Attempts    int
	Reason      sluicev1.Reason
	LastError   string
	Jobs        int
}

// Get returns the job with this id.
func (x *Index) Get(id string) (Job, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	i, ok := x.byID[id]
	if !ok {
		return Job{}, false
	}
	return x.job(x.slots.at(i)), true
}

func (x *Index) job(e *entry) Job {
	j := Job{
		ID: e.id, State: e.state, Prev: e.prev, Class: e.class, Domain: x.domains.str(e.domain),
		Sender: x.senders.str(e.sender), Attempts: int(e.attempts), Reason: e.reason,
		LastError: x.errs.str(e.lastErr), Jobs: int(e.jobs),
	}
	if e.rcpts != "" {
		j.Recipients = strings.Split(e.rcpts, "\n")
	}
	if e.received != 0 {
		j.Received = time.Unix(0, e.received)
	}
	if e.next != 0 {
		j.NextAttempt = time.Unix(0, e.next)
	}
	return j
}

// maxJobsPerMessage bounds the job ids tried for a queue id: a message has
// at most one job per recipient, and the ingress takes at most a thousand
// recipients by default.
const maxJobsPerMessage = 4096

// Resolve returns the ids of the live jobs an id names: the job itself, or
// every job of a message given its queue id.
func (x *Index) Resolve(id string) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if _, ok := x.byID[id]; ok {
		return []string{id}
	}
	var out []string
	for n := 0; n < maxJobsPerMessage; n++ {
		jid := wire.JobID(id, n)
		if i, ok := x.byID[jid]; ok {
			out = append(out, jid)
			if t := int(x.slots.at(i).jobs); t > 0 && n+1 >= t {
				break
			}
		}
	}
	return out
}

// Ref points at a job matched by Select; the generation detects a slot
// reused since.
type Ref struct {
	Received int64
	ID       string
	slot     int32
	gen      uint32
}

// Less orders refs by arrival, then id: the order of `sluice queue list`.
func (r Ref) Less(o Ref) bool {
	if r.Received != o.Received {
		return r.Received < o.Received
	}
	return r.ID < o.ID
}

func cmpRef(a, b Ref) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// Select returns the jobs m matches, oldest first.
func (x *Index) Select(m *Matcher) []Ref {
	x.mu.RLock()
	var out []Ref
	m.prepare(x)
	for i := range x.slots.n {
		e := x.slots.at(i)
		if e.id == "" || !m.match(x, e) {
			continue
		}
		out = append(out, Ref{Received: e.received, ID: e.id, slot: int32(i), gen: e.gen})
	}
	x.mu.RUnlock()
	slices.SortFunc(out, cmpRef)
	return out
}

// Matching returns the ids of the jobs m matches, in no particular order.
func (x *Index) Matching(m *Matcher) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	m.prepare(x)
	var out []string
	for i := range x.slots.n {
		e := x.slots.at(i)
		if e.id != "" && m.match(x, e) {
			out = append(out, e.id)
		}
	}
	return out
}

// maxRowRecipients bounds the recipients listed in one row; `show` has
// them all.
const maxRowRecipients = 20

// Rows renders the refs that still name the same job as list rows.
func (x *Index) Rows(refs []Ref) []admin.QueueRow {
	x.mu.RLock()
	defer x.mu.RUnlock()
	rows := make([]admin.QueueRow, 0, len(refs))
	for _, r := range refs {
		if r.slot >= x.slots.n {
			continue
		}
		e := x.slots.at(r.slot)
		if e.gen != r.gen || e.id != r.ID {
			continue
		}
		rows = append(rows, x.row(e))
	}
	return rows
}

func (x *Index) row(e *entry) admin.QueueRow {
	row := admin.QueueRow{
		QueueName: e.state.String(), QueueID: wire.QueueIDOf(e.id), JobID: e.id,
		ArrivalTime: e.received / 1e9, MessageSize: e.size, Sender: x.senders.str(e.sender),
		Domain: x.domains.str(e.domain), Priority: wire.ClassName(e.class), Attempts: int(e.attempts),
		Reason: reasonName(e.reason), LastError: x.errs.str(e.lastErr),
	}
	if e.next != 0 {
		row.NextAttempt = e.next / 1e9
	}
	rest := e.rcpts
	for rest != "" {
		var a string
		a, rest, _ = strings.Cut(rest, "\n")
		if len(row.Recipients) == maxRowRecipients {
			row.MoreRecipients++
			continue
		}
		row.Recipients = append(row.Recipients, admin.QueueRecipient{Address: a, DelayReason: row.LastError})
	}
	return row
}

// QshapeBuckets are qshape's default age columns in minutes.
var QshapeBuckets = []int{5, 10, 20, 40, 80, 160, 320, 640, 1280}

// Shape is the qshape view and the totals of the jobs m matches.
type Shape struct {
	Total    admin.QueueShapeRow
	Domains  []admin.QueueShapeRow
	Jobs     int
	ByState  map[string]int
	ByClass  map[string]int
	ByReason map[string]int
}

// Stats computes the shape of the jobs m matches at now; top limits the
// domain rows (0: all), largest first.
func (x *Index) Stats(m *Matcher, now time.Time, top int) Shape {
	nb := len(QshapeBuckets) + 1
	var states [len(stateNames)]int
	var classes [4]int
	reasons := map[sluicev1.Reason]int{}

	x.mu.RLock()
	m.prepare(x)
	counts := make([]int32, x.domains.size()*nb)
	totals := make([]int32, x.domains.size())
	bounds := make([]int64, len(QshapeBuckets))
	for i, b := range QshapeBuckets {
		bounds[i] = int64(b) * int64(time.Minute)
	}
	nowNs := now.UnixNano()
	jobs := 0
	for i := range x.slots.n {
		e := x.slots.at(i)
		if e.id == "" || !m.match(x, e) {
			continue
		}
		jobs++
		age := nowNs - e.received
		b := 0
		for b < len(bounds) && age >= bounds[b] {
			b++
		}
		counts[int(e.domain)*nb+b]++
		totals[e.domain]++
		states[e.state]++
		if int(e.class) < len(classes) {
			classes[e.class]++
		}
		if e.state == Deferred || (e.state == Held && e.reason != 0) {
			reasons[e.reason]++
		}
	}
	names := make([]string, len(totals))
	for d := range totals {
		if totals[d] > 0 {
			names[d] = x.domains.str(uint32(d))
		}
	}
	x.mu.RUnlock()

	s := Shape{
		Jobs: jobs, ByState: map[string]int{}, ByClass: map[string]int{}, ByReason: map[string]int{},
		Total: admin.QueueShapeRow{Domain: "TOTAL", Counts: make([]int, nb)},
	}
	for st, n := range states {
		if st > 0 && n > 0 {
			s.ByState[State(st).String()] = n
		}
	}
	for c, n := range classes {
		if n > 0 {
			s.ByClass[wire.ClassName(sluicev1.Priority(c))] += n
		}
	}
	for r, n := range reasons {
		name := reasonName(r)
		if name == "" {
			name = "unspecified"
		}
		s.ByReason[name] = n
	}
	for d, n := range totals {
		if n == 0 {
			continue
		}
		row := admin.QueueShapeRow{Domain: names[d], Total: int(n), Counts: make([]int, nb)}
		for b := 0; b < nb; b++ {
			c := int(counts[d*nb+b])
			row.Counts[b] = c
			s.Total.Counts[b] += c
		}
		if row.Domain == "" {
			row.Domain = "(none)"
		}
		s.Total.Total += row.Total
		s.Domains = append(s.Domains, row)
	}
	slices.SortFunc(s.Domains, func(a, b admin.QueueShapeRow) int {
		if a.Total != b.Total {
			return b.Total - a.Total
		}
		return strings.Compare(a.Domain, b.Domain)
	})
	if top > 0 && len(s.Domains) > top {
		s.Domains = s.Domains[:top]
	}
	return s
}

// Delays returns delivery delay percentiles over the reservoir's window.
func (x *Index) Delays(now time.Time) admin.QueueDelay {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.delays.percentiles(now.UnixNano())
}

// slab stores entries in fixed-size chunks: growing never copies the
// entries already there (a million of them would be copied, and held twice,
// at every doubling of one big slice).
type slab struct {
	chunks [][]entry
	n      int32
}

const chunkBits = 12

func (s *slab) at(i int32) *entry { return &s.chunks[i>>chunkBits][i&(1<<chunkBits-1)] }

func (s *slab) grow() int32 {
	if int(s.n)>>chunkBits == len(s.chunks) {
		s.chunks = append(s.chunks, make([]entry, 1<<chunkBits))
	}
	s.n++
	return s.n - 1
}

// Depth counts the live jobs by priority class and state, for the
// sluice_scheduler_queue_depth gauge: Depth()[class][state], with class a
// sluicev1.Priority and state a State.
func (x *Index) Depth() [4][len(stateNames)]int {
	var d [4][len(stateNames)]int
	x.mu.RLock()
	defer x.mu.RUnlock()
	for i := range x.slots.n {
		e := x.slots.at(i)
		if e.id == "" {
			continue
		}
		if int(e.class) < len(d) && int(e.state) < len(stateNames) {
			d[e.class][e.state]++
		}
	}
	return d
}
