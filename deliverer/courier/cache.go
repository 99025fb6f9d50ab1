package courier

import (
	"context"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/deliverer/smtpclient"
)

// Connection reuse, as Postfix's smtp_connection_cache_on_demand: when a
// destination has more mail waiting, the session of one delivery carries the
// next one instead of a new TCP connection, greeting, EHLO and TLS
// handshake each time. A session is kept idle for at most TTL and carries at
// most MaxUses transactions (Postfix's defaults: 2 s and 100), so a
// destination is never held busy by a connection we do not use, and load
// balancing behind one MX name still sees new connections.
//
// Sessions are keyed by receiving site (mx.Route.Site: the set of MX hosts),
// not by destination domain: two domains served by the same MX hosts share
// their sessions, as they share the site's connection slots. A session that
// cannot carry a job (require_tls at a server without it) is closed and its
// slot serves a new connection.
//
// An idle session keeps the fleet-wide connection slot (Slot) it was opened
// with: it is an open connection to the site. The slot is released when
// the session is closed, whoever closes it.

// CacheConfig configures connection reuse. A zero TTL disables it.
type CacheConfig struct {
	TTL     time.Duration
	MaxUses int
	// MaxIdle bounds the idle sessions kept per site.
	MaxIdle int
}

type idleSession struct {
	s     *smtpclient.Session
	since time.Time
	slot  Slot
	// maxUses is the site's limit of transactions per connection; 0 means
	// CacheConfig.MaxUses.
	maxUses int
}

// close closes the session and gives back its slot.
func (e idleSession) close() {
	e.s.Close()
	if e.slot != nil {
		e.slot.Release()
	}
}

type connCache struct {
	cfg  CacheConfig
	mu   sync.Mutex
	idle map[string][]idleSession
	// waiters are attempts waiting for a session of a site to come back
	// (await), first come first served.
	waiters map[string][]chan idleSession
	done    chan struct{}
	wg      sync.WaitGroup
}

func newConnCache(cfg CacheConfig) *connCache {
	if cfg.TTL <= 0 {
		return nil
	}
	if cfg.MaxUses <= 0 {
		cfg.MaxUses = 100
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = 32
	}
	c := &connCache{cfg: cfg, idle: map[string][]idleSession{}, waiters: map[string][]chan idleSession{}, done: make(chan struct{})}
	c.wg.Add(1)
	go c.janitor()
	return c
}

// get returns an idle session of site, most recently used first (the
// likeliest to be alive).
func (c *connCache) get(site string) (idleSession, bool) {
	if c == nil {
		return idleSession{}, false
	}
	now := time.Now()
	var found idleSession
	ok := false
	var stale []idleSession
	c.mu.Lock()
	l := c.idle[site]
	for len(l) > 0 && !ok {
		e := l[len(l)-1]
		l = l[:len(l)-1]
		if now.Sub(e.since) < c.cfg.TTL {
			found, ok = e, true
		} else {
			stale = append(stale, e)
		}
	}
	c.set(site, l)
	c.mu.Unlock()
	// QUIT can wait on the network: never under the lock.
	for _, e := range stale {
		e.close()
	}
	return found, ok
}

func (c *connCache) set(domain string, l []idleSession) {
	if len(l) == 0 {
		delete(c.idle, domain)
	} else {
		c.idle[domain] = l
	}
}

// put keeps e.s for the next delivery to site, or closes it (releasing its
// slot) when it cannot or should not be reused.
func (c *connCache) put(site string, e idleSession) {
	limit := e.maxUses
	if c != nil && limit <= 0 {
		limit = c.cfg.MaxUses
	}
	if c == nil || !e.s.Reusable() || e.s.Uses() >= limit {
		e.close()
		// Its slot is free: a waiter may take it for a new connection.
		c.wake(site, idleSession{})
		return
	}
	e.s.Bind(nil)
	e.since = time.Now()
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		e.close()
		return
	default:
	}
	if w := c.popWaiter(site); w != nil {
		c.mu.Unlock()
		w <- e
		return
	}
	l := c.idle[site]
	if len(l) >= c.cfg.MaxIdle {
		c.mu.Unlock()
		e.close()
		return
	}
	c.idle[site] = append(l, e)
	c.mu.Unlock()
}

// popWaiter removes and returns the first waiter for site; c.mu is held.
func (c *connCache) popWaiter(site string) chan idleSession {
	ws := c.waiters[site]
	if len(ws) == 0 {
		return nil
	}
	w := ws[0]
	if len(ws) == 1 {
		delete(c.waiters, site)
	} else {
		c.waiters[site] = ws[1:]
	}
	return w
}

// wake hands e (a zero one: "a slot of the site is free") to the first
// waiter for site, if any.
func (c *connCache) wake(site string, e idleSession) {
	if c == nil {
		return
	}
	c.mu.Lock()
	w := c.popWaiter(site)
	c.mu.Unlock()
	if w != nil {
		w <- e
	}
}

// await waits up to d for a session of site to be put back, unless max
// attempts already wait for one. It returns the session, or a zero one
// when a session of the site was closed instead (its slot is free), and
// false when nothing came.
func (c *connCache) await(ctx context.Context, site string, max int, d time.Duration) (idleSession, bool) {
	if c == nil || max <= 0 {
		return idleSession{}, false
	}
	w := make(chan idleSession, 1)
	c.mu.Lock()
	if len(c.waiters[site]) >= max {
		c.mu.Unlock()
		return idleSession{}, false
	}
	c.waiters[site] = append(c.waiters[site], w)
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case e := <-w:
		return e, true
	case <-t.C:
	case <-ctx.Done():
	case <-c.done:
	}
	c.mu.Lock()
	ws := c.waiters[site]
	for i, x := range ws {
		if x == w {
			c.waiters[site] = append(ws[:i:i], ws[i+1:]...)
			if len(c.waiters[site]) == 0 {
				delete(c.waiters, site)
			}
			c.mu.Unlock()
			return idleSession{}, false
		}
	}
	c.mu.Unlock()
	// A session was handed over as we gave up: it is ours.
	return <-w, true
}

// janitor closes sessions idle for longer than TTL.
func (c *connCache) janitor() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.TTL / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			var stale []idleSession
			c.mu.Lock()
			for d, l := range c.idle {
				keep := l[:0]
				for _, e := range l {
					if now.Sub(e.since) >= c.cfg.TTL {
						stale = append(stale, e)
					} else {
						keep = append(keep, e)
					}
				}
				c.set(d, keep)
			}
			c.mu.Unlock()
			for _, e := range stale {
				e.close()
			}
		}
	}
}

// close stops the janitor and closes every idle session; safe twice.
func (c *connCache) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return
	default:
	}
	close(c.done)
	idle := c.idle
	c.idle = map[string][]idleSession{}
	c.mu.Unlock()
	c.wg.Wait()
	for _, l := range idle {
		for _, e := range l {
			e.close()
		}
	}
}
