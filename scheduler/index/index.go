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
// Memory: a job costs about 100 bytes, outside the Go heap (see storage).
// Entries are fixed-size structs without pointers (48 bytes: times in
// seconds, except the arrival, which delivery delays need to the
// nanosecond; enums in bytes); destination domains, senders and deferral
// replies are interned with reference counts; a job's id and recipients are
// one record in a byte arena; a hash table of 8-byte cells finds a job by
// id. Only what list, filters and stats need is kept; `sluice queue show`
// reads the job's events instead.
package index

import (
	"context"
	"hash/maphash"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

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

// entry is one live job; strings of the interners are referred to by id.
// Keep it small and free of pointers: it is multiplied by a million, and
// lives outside the Go heap.
type entry struct {
	received int64  // Unix nanoseconds
	ref      uint32 // arena position of the id and recipients
	n        uint32 // their length; 0 in a free slot
	next     uint32 // next attempt, Unix seconds; 0 when not deferred
	expires  uint32 // Unix seconds
	size     uint32 // bytes, at most 4 GiB - 1
	domain   uint32
	sender   uint32
	lastErr  uint32
	attempts uint16
	jobs     uint16 // jobs of the message
	state    State
	prev     State // the state a held job was in
	class    uint8 // sluicev1.Priority
	reason   uint8 // sluicev1.Reason
}

// The size the comment above promises; the build fails when it grows.
var _ [48 - unsafe.Sizeof(entry{})]struct{}

// Index is the queue index. It is safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	st      *storage
	free    []int32
	scratch []byte
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
	x := &Index{
		st:      &storage{table: table{seed: maphash.MakeSeed()}},
		domains: newInterner(),
		senders: newInterner(),
		errs:    newInterner(),
		changed: make(chan struct{}),
		delays:  newReservoir(1<<16, window),
	}
	// The storage is outside the heap: give it back when the index is
	// garbage (tests make many).
	runtime.AddCleanup(x, func(st *storage) { st.free() }, x.st)
	return x
}

// Len is the number of live jobs.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.st.table.n
}

// StorageBytes is the memory the index holds outside the Go heap (see
// storage): its entries, records and table, used or not.
func (x *Index) StorageBytes() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := len(x.st.slab.chunks)*int(unsafe.Sizeof(entry{}))<<chunkBits + len(x.st.table.cells)*8
	for _, c := range x.st.arena.chunks {
		n += cap(c)
	}
	return n
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
		if _, ok := x.st.lookup(ev.JobID); !ok {
			return
		}
	}
	i, created := x.slot(ev.JobID)
	e := x.st.slab.at(i)
	if p, err := wire.ParseClass(ev.Priority); err == nil && ev.Priority != "" {
		e.class = uint8(p)
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
		e.next = unixSec(ev.NextAttempt)
		e.lastErr = x.errs.replace(e.lastErr, ev.Error)
		e.reason = parseReason(ev.Reason)
		if len(ev.Recipients) > 0 {
			// Only the deferred recipients are left.
			left := x.scratch[:0]
			for _, r := range ev.Recipients {
				if r.Outcome == "deferred" {
					if len(left) > 0 {
						left = append(left, '\n')
					}
					left = append(left, r.Address...)
				}
			}
			x.scratch = left
			if len(left) > 0 {
				x.st.setRcpts(e, left)
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
		e.next = unixSec(ev.NextAttempt)
	case wire.EventScheduled:
		e.state = stateOr(ev.State, Ready)
		e.next = unixSec(ev.NextAttempt)
	case wire.EventReprioritised:
		// The class was set above.
	case wire.EventThrottled:
		// A deliverer held the job back for its receiving site. Only a
		// job it parked on a schedule says so in its state (deferred, with
		// the time it comes back); a short wait leaves the job as it was.
		if ev.State != "" {
			e.state = stateOr(ev.State, e.state)
			e.next = unixSec(ev.NextAttempt)
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

// unixSec is t in Unix seconds for an entry: 0 for the zero time, and
// within 1 (1970) and 2106 otherwise.
func unixSec(t time.Time) uint32 {
	if t.IsZero() {
		return 0
	}
	return uint32(min(max(t.Unix(), 1), math.MaxUint32))
}

var reasonByName = func() map[string]sluicev1.Reason {
	m := map[string]sluicev1.Reason{}
	for v, n := range sluicev1.Reason_name {
		m[strings.ToLower(strings.TrimPrefix(n, "REASON_"))] = sluicev1.Reason(v)
	}
	return m
}()

func parseReason(s string) uint8 { return uint8(reasonByName[s]) }

func reasonName(r sluicev1.Reason) string {
	if r == sluicev1.Reason_REASON_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

func (x *Index) fill(e *entry, env *admin.QueueEnvelope) {
	e.domain = x.domains.replace(e.domain, strings.ToLower(env.Domain))
	e.sender = x.senders.replace(e.sender, env.Sender)
	if x.st.rcptsOf(e) == "" && len(env.Recipients) > 0 {
		b := x.scratch[:0]
		for i, r := range env.Recipients {
			if i > 0 {
				b = append(b, '\n')
			}
			b = append(b, r...)
		}
		x.scratch = b
		x.st.setRcpts(e, b)
	}
	e.received = unixNano(env.Received)
	e.expires = unixSec(env.Expires)
	e.size = uint32(min(max(env.Size, 0), math.MaxUint32))
	e.jobs = uint16(min(env.JobsTotal, 65535))
}

// slot returns the slot of id, creating an entry when there is none.
func (x *Index) slot(id string) (int32, bool) {
	i, ok, tag := x.st.find(id)
	if ok {
		return i, false
	}
	if n := len(x.free); n > 0 {
		i = x.free[n-1]
		x.free = x.free[:n-1]
	} else {
		i = x.st.slab.grow()
	}
	// The record copies the id: the event's strings are gone soon.
	e := x.st.slab.at(i)
	*e = entry{}
	x.st.setRecord(e, id, nil)
	x.st.insert(i, tag)
	return i, true
}

func (x *Index) remove(id string) {
	if i, ok := x.st.lookup(id); ok {
		x.removeSlot(i)
	}
}

func (x *Index) removeSlot(i int32) {
	e := x.st.slab.at(i)
	x.domains.release(e.domain)
	x.senders.release(e.sender)
	x.errs.release(e.lastErr)
	x.st.delete(i)
	x.st.arena.dead(e.n)
	*e = entry{}
	x.free = append(x.free, i)
	if x.st.arena.wasteful() {
		x.st.compact()
	}
}

// recordDelays adds the accept-to-delivery time of every recipient an
// outcome event reports delivered to the delay reservoir.
func (x *Index) recordDelays(ev *admin.QueueEvent) {
	i, ok := x.st.lookup(ev.JobID)
	if !ok || x.st.slab.at(i).received == 0 {
		return
	}
	d := ev.Time.UnixNano() - x.st.slab.at(i).received
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
	limit := now.Add(-grace).Unix()
	var gone []int32
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n != 0 && e.expires != 0 && int64(e.expires) < limit {
			gone = append(gone, i)
		}
	}
	for _, i := range gone {
		x.removeSlot(i)
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
	i, ok := x.st.lookup(id)
	if !ok {
		return Job{}, false
	}
	return x.job(x.st.slab.at(i)), true
}

func (x *Index) job(e *entry) Job {
	j := Job{
		ID: strings.Clone(x.st.idOf(e)), State: e.state, Prev: e.prev, Class: sluicev1.Priority(e.class),
		Domain: x.domains.str(e.domain), Sender: x.senders.str(e.sender), Attempts: int(e.attempts),
		Reason: sluicev1.Reason(e.reason), LastError: x.errs.str(e.lastErr), Jobs: int(e.jobs),
	}
	if r := x.st.rcptsOf(e); r != "" {
		j.Recipients = strings.Split(strings.Clone(r), "\n")
	}
	if e.received != 0 {
		j.Received = time.Unix(0, e.received)
	}
	if e.next != 0 {
		j.NextAttempt = time.Unix(int64(e.next), 0)
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
	if _, ok := x.st.lookup(id); ok {
		return []string{id}
	}
	var out []string
	for n := 0; n < maxJobsPerMessage; n++ {
		jid := wire.JobID(id, n)
		if i, ok := x.st.lookup(jid); ok {
			out = append(out, jid)
			if t := int(x.st.slab.at(i).jobs); t > 0 && n+1 >= t {
				break
			}
		}
	}
	return out
}

// Ref points at a job matched by Select; its id detects a slot reused
// since.
type Ref struct {
	Received int64
	ID       string
	slot     int32
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
	var ids idCopier
	m.prepare(x)
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n == 0 || !m.match(x, e) {
			continue
		}
		ids.add(x.st.idOf(e))
		out = append(out, Ref{Received: e.received, slot: i})
	}
	x.mu.RUnlock()
	for i := range out {
		out[i].ID = ids.id(i)
	}
	slices.SortFunc(out, cmpRef)
	return out
}

// Matching returns the ids of the jobs m matches, in no particular order.
func (x *Index) Matching(m *Matcher) []string {
	x.mu.RLock()
	var ids idCopier
	m.prepare(x)
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n != 0 && m.match(x, e) {
			ids.add(x.st.idOf(e))
		}
	}
	x.mu.RUnlock()
	out := make([]string, len(ids.ends))
	for i := range out {
		out[i] = ids.id(i)
	}
	return out
}

// idCopier copies many ids out of the index into one allocation (a string
// per id would be a million allocations for a million matches).
type idCopier struct {
	buf  []byte
	ends []int
}

func (c *idCopier) add(id string) {
	c.buf = append(c.buf, id...)
	c.ends = append(c.ends, len(c.buf))
}

// id is the i-th id; the buffer is complete, and never written again.
func (c *idCopier) id(i int) string {
	start := 0
	if i > 0 {
		start = c.ends[i-1]
	}
	return view(c.buf[start:c.ends[i]])
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
		if r.slot >= x.st.slab.n {
			continue
		}
		e := x.st.slab.at(r.slot)
		if e.n == 0 || x.st.idOf(e) != r.ID {
			continue
		}
		rows = append(rows, x.row(e, r.ID))
	}
	return rows
}

// row renders e, whose id (a string of the caller's) is id.
func (x *Index) row(e *entry, id string) admin.QueueRow {
	row := admin.QueueRow{
		QueueName: e.state.String(), QueueID: wire.QueueIDOf(id), JobID: id,
		ArrivalTime: e.received / 1e9, MessageSize: int64(e.size), Sender: x.senders.str(e.sender),
		Domain: x.domains.str(e.domain), Priority: wire.ClassName(sluicev1.Priority(e.class)), Attempts: int(e.attempts),
		Reason: reasonName(sluicev1.Reason(e.reason)), LastError: x.errs.str(e.lastErr),
	}
	if e.next != 0 {
		row.NextAttempt = int64(e.next)
	}
	rest := strings.Clone(x.st.rcptsOf(e))
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
	var reasons [256]int

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
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n == 0 || !m.match(x, e) {
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
		if n == 0 {
			continue
		}
		name := reasonName(sluicev1.Reason(r))
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

// Depth counts the live jobs by priority class and state, for the
// sluice_scheduler_queue_depth gauge: Depth()[class][state], with class a
// sluicev1.Priority and state a State.
func (x *Index) Depth() [4][len(stateNames)]int {
	var d [4][len(stateNames)]int
	x.mu.RLock()
	defer x.mu.RUnlock()
	for i := range x.st.slab.n {
		e := x.st.slab.at(i)
		if e.n == 0 {
			continue
		}
		if int(e.class) < len(d) && int(e.state) < len(stateNames) {
			d[e.class][e.state]++
		}
	}
	return d
}
