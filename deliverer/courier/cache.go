package courier

import (
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
// Sessions are keyed by destination domain: every domain has its own MX
// lookup, its own policy (require_tls) and its own limits.

// CacheConfig configures connection reuse. A zero TTL disables it.
type CacheConfig struct {
	TTL     time.Duration
	MaxUses int
	// MaxIdle bounds the idle sessions kept per domain.
	MaxIdle int
}

type idleSession struct {
	s     *smtpclient.Session
	since time.Time
}

type connCache struct {
	cfg  CacheConfig
	mu   sync.Mutex
	idle map[string][]idleSession
	done chan struct{}
	wg   sync.WaitGroup
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
	c := &connCache{cfg: cfg, idle: map[string][]idleSession{}, done: make(chan struct{})}
	c.wg.Add(1)
	go c.janitor()
	return c
}

// get returns an idle session for domain, most recently used first (the
// likeliest to be alive), or nil.
func (c *connCache) get(domain string) *smtpclient.Session {
	if c == nil {
		return nil
	}
	now := time.Now()
	var found *smtpclient.Session
	var stale []*smtpclient.Session
	c.mu.Lock()
	l := c.idle[domain]
	for len(l) > 0 && found == nil {
		e := l[len(l)-1]
		l = l[:len(l)-1]
		if now.Sub(e.since) < c.cfg.TTL {
			found = e.s
		} else {
			stale = append(stale, e.s)
		}
	}
	c.set(domain, l)
	c.mu.Unlock()
	// QUIT can wait on the network: never under the lock.
	for _, s := range stale {
		s.Close()
	}
	return found
}

func (c *connCache) set(domain string, l []idleSession) {
	if len(l) == 0 {
		delete(c.idle, domain)
	} else {
		c.idle[domain] = l
	}
}

// put keeps s for the next delivery to domain, or closes it when it cannot
// or should not be reused.
func (c *connCache) put(domain string, s *smtpclient.Session) {
	if c == nil || !s.Reusable() || s.Uses() >= c.cfg.MaxUses {
		s.Close()
		return
	}
	s.Bind(nil)
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		s.Close()
		return
	default:
	}
	l := c.idle[domain]
	if len(l) >= c.cfg.MaxIdle {
		c.mu.Unlock()
		s.Close()
		return
	}
	c.idle[domain] = append(l, idleSession{s: s, since: time.Now()})
	c.mu.Unlock()
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
			var stale []*smtpclient.Session
			c.mu.Lock()
			for d, l := range c.idle {
				keep := l[:0]
				for _, e := range l {
					if now.Sub(e.since) >= c.cfg.TTL {
						stale = append(stale, e.s)
					} else {
						keep = append(keep, e)
					}
				}
				c.set(d, keep)
			}
			c.mu.Unlock()
			for _, s := range stale {
				s.Close()
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
			e.s.Close()
		}
	}
}
