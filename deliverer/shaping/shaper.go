// Package shaping keeps the whole fleet of deliverers polite to each
// receiving site: at most a site's number of connections open at once
// across every deliverer, a concurrency that starts low and follows the
// site's replies (slow start, as Postfix), and suspensions when a site asks
// us to slow down, which every deliverer honours.
//
// # Shared state
//
// The state lives in the key-value bucket wire.BucketShaping, so that it is
// shared by all deliverers and survives any one of them:
//
//   - conn.<site>.<n>: connection slot n of a site, for n below the site's
//     current concurrency. A deliverer takes a slot with a create (which
//     fails when the key exists, so two deliverers cannot take the same
//     one), holds it as long as the connection is open, idle in the cache
//     included, and deletes it when the connection closes. The key has a
//     TTL (Config.LeaseTTL, 6 s) that the holder renews every third of it:
//     a deliverer that dies, is killed or loses NATS stops renewing, and
//     its slots expire within LeaseTTL.
//   - limit.<site>: the site's current concurrency, changed by
//     compare-and-set; absent means the policy's initial concurrency. It
//     expires after an hour without change, so a site that was quiet for
//     long starts slowly again.
//   - susp.<site>: a suspension, with the reply that caused it; its TTL is
//     the suspension, so it ends by itself.
//
// Every deliverer follows limit.* and susp.* with a key watch, so the hot
// path reads them from memory. Slots are not watched: a deliverer tries to
// create them, and remembers for a moment (Config.BusyDelay) that a site
// was full, so a queue of jobs for a busy site costs no JetStream round
// trips each.
package shaping

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
)

// ErrBusy means every connection slot of the site is taken.
var ErrBusy = errors.New("shaping: every connection slot of the site is taken")

// limitTTL is how long a site's concurrency is remembered without change.
const limitTTL = time.Hour

// Value is the JSON of every key of the bucket.
type Value struct {
	Site     string    `json:"site"`
	Instance string    `json:"instance,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	// Limit is the concurrency (limit.* keys).
	Limit int `json:"limit,omitempty"`
	// Until and Reason describe a suspension (susp.* keys).
	Until  time.Time `json:"until,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// Shaper holds this deliverer's slots and its view of the shared state. It
// is safe for concurrent use.
type Shaper struct {
	kv       jetstream.KeyValue
	js       jetstream.JetStream
	live     atomic.Pointer[settings]
	leaseTTL time.Duration // fixed for the Shaper's life: its renewals tick by it
	instance string
	log      *slog.Logger

	mu     sync.Mutex
	sites  map[string]*siteState // by site key
	leases map[*Lease]struct{}
	bySite map[string]int // leases held per site key

	w           jetstream.KeyWatcher
	cancelWatch context.CancelFunc
	stop        chan struct{}
	wg          sync.WaitGroup
	stopped     sync.Once
}

// settings are the reloadable part of a Shaper.
type settings struct {
	rules *Rules
	cfg   Config
}

type siteState struct {
	limit    int // 0: unknown, the policy's initial concurrency
	limitRev uint64
	changed  time.Time
	until    time.Time
	reason   string
	full     time.Time // local hint: the site was full until then
	rateFull int64     // local hint: the rate window with this number is used up
	// connRateFull is rateFull for the connection rate.
	connRateFull int64
}

// New returns a Shaper that keeps its state in kv (wire.BucketShaping,
// provisioned by streams.Provision) and names itself instance in it. Start
// it before use.
func New(js jetstream.JetStream, kv jetstream.KeyValue, cfg Config, instance string, log *slog.Logger) (*Shaper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rules, err := NewRules(cfg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Shaper{kv: kv, js: js, leaseTTL: cfg.LeaseTTL, instance: instance, log: log,
		sites: map[string]*siteState{}, leases: map[*Lease]struct{}{}, bySite: map[string]int{}, stop: make(chan struct{})}
	s.live.Store(&settings{rules: rules, cfg: cfg})
	return s, nil
}

// SetConfig replaces the policies, patterns and delays from now on (a
// configuration reload). lease_ttl keeps its value until a restart: the
// slots held now were created with it.
func (s *Shaper) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	rules, err := NewRules(cfg)
	if err != nil {
		return err
	}
	cfg.LeaseTTL = s.leaseTTL
	s.live.Store(&settings{rules: rules, cfg: cfg})
	return nil
}

// Config is the configuration in force.
func (s *Shaper) Config() Config { return s.live.Load().cfg }

// Start follows the shared state and renews this deliverer's slots until
// Stop. It returns once the watch has delivered the bucket's content.
func (s *Shaper) Start(ctx context.Context) error {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancelWatch = cancel
	w, err := s.kv.WatchFiltered(wctx, []string{"limit.*", "susp.*"})
	if err != nil {
		cancel()
		return fmt.Errorf("shaping: watch %s: %w", wire.BucketShaping, err)
	}
	s.w = w
	current := make(chan struct{})
	s.wg.Add(2)
	go s.follow(current)
	go s.renew()
	select {
	case <-current:
		return nil
	case <-ctx.Done():
		s.Stop()
		return fmt.Errorf("shaping: reading %s: %w", wire.BucketShaping, ctx.Err())
	}
}

// Stop stops the watch and the renewals. Slots still held are left to
// expire: the connections they cover are closed by their owner (the
// courier's Close), which releases them first.
func (s *Shaper) Stop() {
	s.stopped.Do(func() {
		close(s.stop)
		if s.w != nil {
			_ = s.w.Stop()
		}
		if s.cancelWatch != nil {
			// Stop cannot unsubscribe from a closed connection; the
			// context ends the watch's goroutine anyway.
			s.cancelWatch()
		}
		s.wg.Wait()
	})
}

// Rules returns the rules that resolve destinations to sites.
func (s *Shaper) Rules() *Rules { return s.live.Load().rules }

func (s *Shaper) follow(current chan struct{}) {
	defer s.wg.Done()
	once := sync.OnceFunc(func() { close(current) })
	defer once()
	for e := range s.w.Updates() {
		if e == nil {
			once()
			continue
		}
		var kind, site string
		switch key := e.Key(); {
		case strings.HasPrefix(key, "limit."):
			kind, site = "limit", key[len("limit."):]
		case strings.HasPrefix(key, "susp."):
			kind, site = "susp", key[len("susp."):]
		default:
			continue
		}
		var v Value
		if e.Operation() == jetstream.KeyValuePut {
			_ = json.Unmarshal(e.Value(), &v)
		}
		s.mu.Lock()
		st := s.state(site)
		switch {
		case kind == "limit" && e.Operation() == jetstream.KeyValuePut:
			st.limit, st.limitRev, st.changed = v.Limit, e.Revision(), e.Created()
		case kind == "limit":
			st.limit, st.limitRev = 0, 0
		case e.Operation() == jetstream.KeyValuePut:
			st.until, st.reason = v.Until, v.Reason
		default:
			st.until, st.reason = time.Time{}, ""
		}
		s.mu.Unlock()
	}
}

// state returns the state of a site key; s.mu must be held.
func (s *Shaper) state(key string) *siteState {
	st := s.sites[key]
	if st == nil {
		st = &siteState{}
		s.sites[key] = st
	}
	return st
}

// Suspended returns when the site's suspension ends and the reply that
// caused it, or false when it is not suspended.
func (s *Shaper) Suspended(site Site) (until time.Time, reason string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.sites[site.Key]
	if st == nil || !time.Now().Before(st.until) {
		return time.Time{}, "", false
	}
	return st.until, st.reason, true
}

// Limit is the site's current concurrency.
func (s *Shaper) Limit(site Site) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limit(site)
}

func (s *Shaper) limit(site Site) int {
	if st := s.sites[site.Key]; st != nil && st.limit > 0 {
		return min(st.limit, site.Policy.MaxConnections)
	}
	return site.Policy.InitialConnections
}

// Lease is a connection slot of a site held by this deliverer.
type Lease struct {
	s    *Shaper
	site Site
	key  string
	mu   sync.Mutex
	rev  uint64
	done bool
}

// Site is the site the slot belongs to.
func (l *Lease) Site() Site { return l.site }

// Acquire takes a free connection slot of the site, or returns ErrBusy when
// its current concurrency is used up. Other errors are JetStream's.
func (s *Shaper) Acquire(ctx context.Context, site Site) (*Lease, error) {
	now := time.Now()
	s.mu.Lock()
	st := s.state(site.Key)
	if now.Before(st.full) {
		s.mu.Unlock()
		return nil, ErrBusy
	}
	n := s.limit(site)
	s.mu.Unlock()
	val, _ := json.Marshal(Value{Site: site.Name, Instance: s.instance, Since: now.UTC()})
	start := rand.IntN(n)
	for i := range n {
		key := wire.ShapingConnKey(site.Key, (start+i)%n)
		rev, err := s.kv.Create(ctx, key, val, jetstream.KeyTTL(s.leaseTTL))
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("shaping: take slot %s of %s: %w", key, site.Name, err)
		}
		l := &Lease{s: s, site: site, key: key, rev: rev}
		s.mu.Lock()
		s.leases[l] = struct{}{}
		s.bySite[site.Key]++
		s.mu.Unlock()
		return l, nil
	}
	s.mu.Lock()
	st.full = time.Now().Add(s.Config().BusyDelay / 2)
	s.mu.Unlock()
	return nil, ErrBusy
}

// Release gives the slot back; safe to call twice.
func (l *Lease) Release() {
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	l.done = true
	rev := l.rev
	l.mu.Unlock()
	s := l.s
	s.mu.Lock()
	s.forget(l)
	if st := s.sites[l.site.Key]; st != nil {
		st.full = time.Time{}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Only our own revision: a slot that expired and was taken by another
	// deliverer is theirs. The purge marker goes after a minute.
	err := s.kv.Purge(ctx, l.key, jetstream.LastRevision(rev), jetstream.PurgeTTL(time.Minute))
	if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		s.log.Warn("cannot release a connection slot; it expires by itself", "key", l.key, "site", l.site.Name, "err", err)
	}
}

// prune forgets the local state of sites that have nothing stored, held
// or remembered any more, so that a deliverer sending to many domains over
// months does not keep one entry per site it ever saw; s.mu is held.
func (s *Shaper) prune(now time.Time) {
	for key, st := range s.sites {
		if st.limit == 0 && st.limitRev == 0 && !now.Before(st.until) && !now.Before(st.full) && s.bySite[key] == 0 {
			delete(s.sites, key)
		}
	}
}

// forget drops l from the held leases; s.mu is held.
func (s *Shaper) forget(l *Lease) {
	if _, ok := s.leases[l]; !ok {
		return
	}
	delete(s.leases, l)
	if s.bySite[l.site.Key]--; s.bySite[l.site.Key] <= 0 {
		delete(s.bySite, l.site.Key)
	}
}

// HeldFor is how many slots of the site this deliverer holds: its open
// connections to it.
func (s *Shaper) HeldFor(site Site) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bySite[site.Key]
}

// Held is how many slots this deliverer holds.
func (s *Shaper) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// renew extends every held slot's TTL every third of it. A slot whose
// renewal is refused because its revision moved on expired meanwhile (this
// deliverer was cut off from NATS for longer than LeaseTTL) and may belong
// to another deliverer now: it is forgotten, and its connection runs to
// its end without one, the one way the limit can be exceeded.
func (s *Shaper) renew() {
	defer s.wg.Done()
	t := time.NewTicker(s.leaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		held := make([]*Lease, 0, len(s.leases))
		for l := range s.leases {
			held = append(held, l)
		}
		s.prune(time.Now())
		s.mu.Unlock()
		for _, l := range held {
			s.renewOne(l)
		}
	}
}

func (s *Shaper) renewOne(l *Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	val, _ := json.Marshal(Value{Site: l.site.Name, Instance: s.instance, Since: time.Now().UTC()})
	ctx, cancel := context.WithTimeout(context.Background(), s.leaseTTL/3)
	defer cancel()
	ack, err := s.publish(ctx, l.key, val, l.rev, s.leaseTTL)
	switch {
	case err == nil:
		l.rev = ack.Sequence
	case isWrongLastSeq(err):
		s.log.Warn("connection slot lost: it expired before it was renewed", "key", l.key, "site", l.site.Name)
		l.done = true
		s.mu.Lock()
		s.forget(l)
		s.mu.Unlock()
	default:
		s.log.Warn("cannot renew a connection slot", "key", l.key, "site", l.site.Name, "err", err)
	}
}

// publish writes a key of the bucket with a TTL if its revision is still
// rev: the key-value API sets TTLs only when it creates a key.
// A rev of 0 writes whatever the key holds.
func (s *Shaper) publish(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (*jetstream.PubAck, error) {
	m := &nats.Msg{Subject: "$KV." + wire.BucketShaping + "." + key, Data: val}
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl.Round(time.Second))}
	if rev > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	}
	return s.js.PublishMsg(ctx, m, opts...)
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
