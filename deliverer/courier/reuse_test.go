package courier

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

func deliverOne(t *testing.T, c *Courier) {
	t.Helper()
	res := c.Deliver(context.Background(), job(), strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("outcome %v: %s", res[0].Outcome, res[0].Text)
	}
}

// TestConnectionReuse: consecutive deliveries to one domain share a
// connection, up to the reuse limit.
func TestConnectionReuse(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{TTL: 5 * time.Second, MaxUses: 3}))
	defer c.Close()
	for i := 0; i < 5; i++ {
		deliverOne(t, c)
	}
	if n := srv.Count(); n != 5 {
		t.Fatalf("%d messages arrived, want 5", n)
	}
	// 3 transactions on the first connection, 2 on the second.
	if n := srv.Connections(); n != 2 {
		t.Fatalf("%d connections for 5 deliveries with a reuse limit of 3, want 2", n)
	}
	// Close closes the idle session; Close twice is harmless.
	c.Close()
	c.Close()
}

// TestStaleCachedConnection: a cached session the server dropped meanwhile
// is replaced by a new connection, and the message arrives exactly once.
func TestStaleCachedConnection(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{IdleTimeout: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{TTL: 10 * time.Second}))
	defer c.Close()
	deliverOne(t, c)
	time.Sleep(400 * time.Millisecond) // the server hangs up on the idle session
	deliverOne(t, c)
	if n := srv.Count(); n != 2 {
		t.Fatalf("%d messages arrived, want exactly 2", n)
	}
	if n := srv.Connections(); n != 2 {
		t.Fatalf("%d connections, want 2 (the stale one replaced)", n)
	}
}

// TestNoReuseWhenDisabled: a zero TTL closes every session after use.
func TestNoReuseWhenDisabled(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{}))
	defer c.Close()
	deliverOne(t, c)
	deliverOne(t, c)
	if n := srv.Connections(); n != 2 {
		t.Fatalf("%d connections with reuse off, want 2", n)
	}
}

// TestIdleSessionsExpire: the janitor closes a session idle past its TTL,
// so the next delivery opens a new connection.
func TestIdleSessionsExpire(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{TTL: 100 * time.Millisecond}))
	defer c.Close()
	deliverOne(t, c)
	time.Sleep(300 * time.Millisecond)
	c.cache.mu.Lock()
	idle := len(c.cache.idle)
	c.cache.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d domains still have idle sessions after the TTL", idle)
	}
	deliverOne(t, c)
	if n := srv.Connections(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// countingSlot records releases of a connection slot.
type countingSlot struct{ released int }

func (s *countingSlot) Release() { s.released++ }

// TestReuseBySiteAndSlots: sessions are cached per site, so two domains
// routed to the same servers share one connection; the connection keeps its
// slot while idle and gives it back, once, when it is closed.
func TestReuseBySiteAndSlots(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{TTL: 5 * time.Second, MaxUses: 100}))
	defer c.Close()
	ctx := context.Background()
	route, err := c.Route(ctx, "example.net")
	if err != nil {
		t.Fatal(err)
	}
	slot := &countingSlot{}
	if c.Idle(route.Site) != nil {
		t.Fatal("an idle session before any delivery")
	}
	j := job()
	res := c.DeliverVia(ctx, j, route, NewTicket(route.Site, slot, 2), strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("outcome %v: %s", res[0].Outcome, res[0].Text)
	}
	if slot.released != 0 {
		t.Fatal("the slot of an idle cached session was released")
	}
	// Another domain of the same site takes the idle session.
	other := job()
	other.Domain = "example.org"
	tk := c.Idle(route.Site)
	if tk == nil {
		t.Fatal("no idle session for the site")
	}
	res = c.DeliverVia(ctx, other, route, tk, strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("outcome %v: %s", res[0].Outcome, res[0].Text)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("%d connections for two domains of one site, want 1", n)
	}
	// The ticket's limit of 2 messages per connection closed the session
	// and released its slot.
	if slot.released != 1 {
		t.Errorf("slot released %d times after the session's last message, want 1", slot.released)
	}
	if c.Idle(route.Site) != nil {
		t.Error("a session past its message limit was cached")
	}
	// A ticket for a connection that fails releases its slot.
	bad := &countingSlot{}
	dead := route
	dead.Hosts = []mx.Host{{Name: "127.0.0.1", Port: 1, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}}
	res = c.DeliverVia(ctx, job(), dead, NewTicket(route.Site, bad, 0), strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_TEMPORARY || res[0].Reason != sluicev1.Reason_REASON_CONNECT || bad.released != 1 {
		t.Errorf("refused connection: %v %v, slot released %d times", res[0].Outcome, res[0].Reason, bad.released)
	}
}

// TestAwaitIdle: an attempt waiting for a session of its site takes over
// the one another attempt finishes with, instead of a new connection; no
// more attempts wait than allowed.
func TestAwaitIdle(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{Delay: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithConnectionReuse(CacheConfig{TTL: 5 * time.Second}))
	defer c.Close()
	ctx := context.Background()
	route, err := c.Route(ctx, "example.net")
	if err != nil {
		t.Fatal(err)
	}
	slot := &countingSlot{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.DeliverVia(ctx, job(), route, NewTicket(route.Site, slot, 0), strings.NewReader(message))
	}()
	if tk, freed := c.AwaitIdle(ctx, route.Site, 0, time.Second); tk != nil || freed {
		t.Error("waited with a limit of 0 waiters")
	}
	tk, freed := c.AwaitIdle(ctx, route.Site, 1, 5*time.Second)
	<-done
	if tk == nil || freed {
		t.Fatalf("no session handed over: %v %v", tk, freed)
	}
	res := c.DeliverVia(ctx, job(), route, tk, strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("outcome %v: %s", res[0].Outcome, res[0].Text)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("%d connections, want 1: the waiting attempt takes the session over", n)
	}
	if slot.released != 0 {
		t.Errorf("slot released %d times while its session is cached", slot.released)
	}
	if tk, freed := c.AwaitIdle(ctx, route.Site, 1, 50*time.Millisecond); tk != nil || freed {
		t.Error("a session came from nowhere")
	}
}
