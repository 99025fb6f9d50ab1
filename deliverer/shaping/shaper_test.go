package shaping

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// deliverer is one Shaper on its own NATS connection, as one deliverer
// process has.
func deliverer(t *testing.T, ns *natstest.Server, cfg Config, name string) (*Shaper, func()) {
	t.Helper()
	nc, js := ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := streams.Shaping(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(js, kv, cfg, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s, nc.Close
}

func testConfig() Config {
	c := DefaultConfig()
	c.Default.MaxConnections = 4
	c.Default.InitialConnections = 2
	c.Default.SuspendFor = 2 * time.Second
	c.LeaseTTL = 3 * time.Second
	c.BusyDelay = 20 * time.Millisecond
	return c
}

// TestSlotsAcrossDeliverers: two deliverers share a site's slots; the
// limit holds across them, a released slot is free at once, slow start
// raises the limit for both, and a killed deliverer's slots expire.
func TestSlotsAcrossDeliverers(t *testing.T) {
	ns := natstest.Start(t)
	cfg := testConfig()
	a, killA := deliverer(t, ns, cfg, "a")
	b, _ := deliverer(t, ns, cfg, "b")
	ctx := context.Background()
	site := a.Rules().Site("example.test", "mx1.example.test,mx2.example.test")
	if site.Policy.MaxConnections != 4 || site.Policy.InitialConnections != 2 {
		t.Fatalf("policy %+v", site.Policy)
	}
	l1, err := a.Acquire(ctx, site)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := b.Acquire(ctx, site)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx, site); !errors.Is(err, ErrBusy) {
		t.Fatalf("third slot at initial concurrency 2: %v, want ErrBusy", err)
	}
	time.Sleep(cfg.BusyDelay) // past the local "full" hint
	if _, err := b.Acquire(ctx, site); !errors.Is(err, ErrBusy) {
		t.Fatalf("third slot from the other deliverer: %v, want ErrBusy", err)
	}
	l2.Release()
	l2b, err := a.Acquire(ctx, site)
	if err != nil {
		t.Fatalf("a released slot must be free at once: %v", err)
	}
	// Slow start: a delivery raises the limit, and the other deliverer
	// sees it through its watch.
	b.Delivered(ctx, site)
	waitFor(t, func() bool { return a.Limit(site) == 3 }, "limit 3 seen by a")
	if b.Limit(site) != 3 {
		t.Errorf("b's limit %d, want 3", b.Limit(site))
	}
	l3, err := b.Acquire(ctx, site)
	if err != nil {
		t.Fatalf("slot under the raised limit: %v", err)
	}
	for range 5 {
		b.Delivered(ctx, site)
	}
	waitFor(t, func() bool { return a.Limit(site) == 4 }, "limit capped at max 4")
	// a dies holding two slots: its connection to NATS goes, nothing is
	// released. They expire within the lease TTL and b can take them.
	if a.Held() != 2 {
		t.Fatalf("a holds %d slots, want 2", a.Held())
	}
	_ = l1
	_ = l2b
	killA()
	a.Stop()
	got := 0
	start := time.Now()
	var held []*Lease
	for time.Since(start) < 3*cfg.LeaseTTL && got < 3 {
		l, err := b.Acquire(ctx, site)
		if err == nil {
			held = append(held, l)
			got++
			continue
		}
		if !errors.Is(err, ErrBusy) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	freed := time.Since(start)
	t.Logf("a's slots were free again after %s (lease TTL %s)", freed.Round(10*time.Millisecond), cfg.LeaseTTL)
	if got != 3 {
		t.Fatalf("b took %d more slots after a died, want 3 (limit 4, b holds 1)", got)
	}
	if freed > cfg.LeaseTTL+2*time.Second {
		t.Errorf("slots of a dead deliverer freed after %s, want within the lease TTL %s plus 2s", freed, cfg.LeaseTTL)
	}
	// b renews its slots: they outlive the TTL.
	time.Sleep(cfg.LeaseTTL + time.Second)
	if _, err := b.Acquire(ctx, site); !errors.Is(err, ErrBusy) {
		t.Errorf("a renewed slot expired: %v", err)
	}
	l3.Release()
	for _, l := range held {
		l.Release()
	}
	if b.Held() != 0 {
		t.Errorf("b holds %d after releasing all", b.Held())
	}
}

// TestSlowDown: a slow-down reply halves the limit and suspends the site
// for every deliverer, and the suspension ends by itself.
func TestSlowDown(t *testing.T) {
	ns := natstest.Start(t)
	cfg := testConfig()
	cfg.Default.InitialConnections = 4
	a, _ := deliverer(t, ns, cfg, "a")
	b, _ := deliverer(t, ns, cfg, "b")
	ctx := context.Background()
	site := a.Rules().Site("example.test", "mx.example.test")
	other := a.Rules().Site("other.test", "mx.other.test")
	c := a.SlowDown(ctx, site, "421 4.7.0 Try again later")
	if c == nil || c.From != 4 || c.To != 2 || c.Until.IsZero() {
		t.Fatalf("change %+v, want 4 -> 2 and a suspension", c)
	}
	waitFor(t, func() bool { _, _, ok := b.Suspended(site); return ok }, "suspension seen by b")
	if _, reason, _ := b.Suspended(site); reason != "421 4.7.0 Try again later" {
		t.Errorf("reason %q", reason)
	}
	if _, _, ok := b.Suspended(other); ok {
		t.Error("another site is suspended too")
	}
	waitFor(t, func() bool { return b.Limit(site) == 2 }, "halved limit seen by b")
	// The key expires with the suspension.
	waitFor(t, func() bool { _, _, ok := b.Suspended(site); return !ok }, "suspension over")
	e, err := b.kv.Get(ctx, "susp."+site.Key)
	deadline := time.Now().Add(5 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		e, err = b.kv.Get(ctx, "susp."+site.Key)
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		t.Errorf("suspension key after its end: %v %v", e, err)
	}
	// A connection failure lowers by one.
	if c := b.ConnectFailed(ctx, site, "connection refused"); c == nil || c.From != 2 || c.To != 1 {
		t.Errorf("connect failure change %+v, want 2 -> 1", c)
	}
	if c := b.ConnectFailed(ctx, site, "connection refused"); c != nil {
		t.Errorf("limit went below 1: %+v", c)
	}
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
