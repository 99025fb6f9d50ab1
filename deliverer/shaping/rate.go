package shaping

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Rate is a number of messages per period, written "600/1m", "10/1s" or
// "1000/1h" (a Go duration after the slash).
type Rate struct {
	N   int
	Per time.Duration
}

// ParseRate parses a Rate; "" is no limit (a zero Rate).
func ParseRate(s string) (Rate, error) {
	if strings.TrimSpace(s) == "" {
		return Rate{}, nil
	}
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("%q, want messages/period such as 600/1m", s)
	}
	r := Rate{}
	var err error
	if r.N, err = strconv.Atoi(strings.TrimSpace(n)); err != nil || r.N < 1 {
		return Rate{}, fmt.Errorf("%q: the number of messages must be a positive integer", s)
	}
	if r.Per, err = time.ParseDuration(strings.TrimSpace(per)); err != nil || r.Per < time.Second {
		return Rate{}, fmt.Errorf("%q: the period must be a duration of at least 1s", s)
	}
	return r, nil
}

// Fleet-wide message rates are counted in windows: a period is cut into
// k = min(10, N) windows aligned on the Unix epoch, and window i of a period
// allows floor((i+1)N/k) - floor(iN/k) messages, so that a period allows
// exactly N and they are spread over it rather than sent in a burst at its
// start. Each window is a key rate.<site>.<window number> holding its count,
// raised by compare-and-set by every deliverer before it sends a message, and
// expiring after two periods.

// window returns the number of the window now falls in, its quota and when
// it ends.
func (r Rate) window(now time.Time) (idx int64, quota int, end time.Time) {
	k := int64(min(10, r.N))
	w := int64(r.Per) / k
	idx = now.UnixNano() / w
	i := idx % k
	n := int64(r.N)
	quota = int((i+1)*n/k - i*n/k)
	return idx, quota, time.Unix(0, (idx+1)*w)
}

// Sent is the number of messages counted against r over the last period at
// now: in the current window and the ones before it that make up one
// period, from windows, the counts by window number (State.Windows).
func (r Rate) Sent(windows map[int64]int, now time.Time) int {
	if r.N == 0 {
		return 0
	}
	k := int64(min(10, r.N))
	idx, _, _ := r.window(now)
	n := 0
	for i, c := range windows {
		if i > idx-k && i <= idx {
			n += c
		}
	}
	return n
}

// retryAfter is how long a job waits for the window that ends at end,
// spread over the next window. It is positive even when the window ended
// while the bucket answered (a loaded machine): a zero wait means
// "counted, go", and a job let through that way was never counted.
func (r Rate) retryAfter(end, now time.Time) time.Duration {
	return max(end.Sub(now), 0) + time.Millisecond + rand.N(time.Duration(int64(r.Per)/int64(min(10, r.N))))
}

// Take counts one message to the site against its rate, and returns 0, or
// how long to wait when the rate is used up for now.
func (s *Shaper) Take(ctx context.Context, site Site) (time.Duration, error) {
	return s.take(ctx, site, site.rate, "rate", func(st *siteState) *int64 { return &st.rateFull })
}

// TakeConnection counts one new connection to the site against its
// connection rate, like Take.
func (s *Shaper) TakeConnection(ctx context.Context, site Site) (time.Duration, error) {
	return s.take(ctx, site, site.connRate, "crate", func(st *siteState) *int64 { return &st.connRateFull })
}

// take counts one against rate r in the window keys <prefix>.<site>.<n>;
// hint points at the local note of the last window found used up.
func (s *Shaper) take(ctx context.Context, site Site, r Rate, prefix string, hint func(*siteState) *int64) (time.Duration, error) {
	if r.N == 0 {
		return 0, nil
	}
	now := time.Now()
	idx, quota, end := r.window(now)
	wait := func() time.Duration { return r.retryAfter(end, time.Now()) }
	s.mu.Lock()
	st := s.state(site.Key)
	spent := *hint(st) == idx
	s.mu.Unlock()
	if spent || quota == 0 {
		return wait(), nil
	}
	key := prefix + "." + site.Key + "." + strconv.FormatInt(idx, 10)
	for range 8 {
		e, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			_, err = s.kv.Create(ctx, key, []byte("1"), jetstream.KeyTTL(max(2*r.Per, time.Second)))
			if err == nil {
				return 0, nil
			}
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return 0, err
			}
			continue
		case err != nil:
			return 0, err
		}
		n, _ := strconv.Atoi(string(e.Value()))
		if n >= quota {
			s.mu.Lock()
			*hint(st) = idx
			s.mu.Unlock()
			return wait(), nil
		}
		if _, err := s.kv.Update(ctx, key, []byte(strconv.Itoa(n+1)), e.Revision()); err == nil {
			return 0, nil
		} else if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !isWrongLastSeq(err) {
			return 0, err
		}
	}
	// Lost the race eight times: the window is busy; try the next.
	return wait(), nil
}
