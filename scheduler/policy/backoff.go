// Package policy is the scheduler's queue policy as pure functions: how long
// to wait before the next delivery attempt, when a message has been queued
// too long, which priority class a job gets, and how recipients are split
// into jobs. Nothing here does I/O or reads a clock or a random source of its
// own; callers pass the time and the randomness in, so every rule is
// table-tested.
package policy

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Retry is the retry schedule, modelled on Postfix's minimal_backoff_time
// (300s) and maximal_backoff_time (4000s): the wait after the first failed
// attempt is Min, it doubles after every further failure, and it never
// exceeds Max.
type Retry struct {
	// Min is the wait after the first failed attempt.
	Min time.Duration
	// Max is the longest wait between two attempts.
	Max time.Duration
	// Jitter spreads each wait uniformly by up to this fraction either way
	// (0.2 is ±20%), so that mail deferred together by one outage does not
	// come back as one thundering herd. It is in [0, 1).
	Jitter float64
}

// DefaultRetry is the Postfix-like default schedule.
func DefaultRetry() Retry {
	return Retry{Min: 300 * time.Second, Max: 4000 * time.Second, Jitter: 0.2}
}

// Validate reports the first bad field by its name under "retry".
func (r Retry) Validate() error {
	if r.Min <= 0 {
		return fmt.Errorf("retry.min: %s, must be positive", r.Min)
	}
	if r.Max < r.Min {
		return fmt.Errorf("retry.max: %s, must not be less than retry.min (%s)", r.Max, r.Min)
	}
	if math.IsNaN(r.Jitter) || r.Jitter < 0 || r.Jitter >= 1 {
		return fmt.Errorf("retry.jitter: %v, want a fraction in [0, 1)", r.Jitter)
	}
	return nil
}

// ErrBadAttempt is returned for attempt numbers below 1.
var ErrBadAttempt = errors.New("policy: attempt numbers start at 1")

// Base is the wait after failed attempt number attempt (1-based) before any
// jitter: Min·2^(attempt-1), capped at Max.
func (r Retry) Base(attempt uint32) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := r.Min
	for i := uint32(1); i < attempt; i++ {
		if d >= r.Max/2 {
			// Doubling again would reach or pass the cap (and, for
			// absurd attempt counts, overflow).
			return r.Max
		}
		d *= 2
	}
	if d > r.Max {
		return r.Max
	}
	return d
}

// Backoff is the wait after failed attempt number attempt, with jitter.
// random must return a value in [0, 1) (math/rand/v2.Float64 in production,
// a constant in tests); 0 gives the shortest wait, values near 1 the longest.
//
// The jitter is applied to the capped base, then the result is capped at Max
// again: Max is a hard ceiling an operator can rely on, so waits at the cap
// spread over [Max·(1-Jitter), Max] rather than around it. The wait is never
// shorter than one second, the resolution of a message schedule.
func (r Retry) Backoff(attempt uint32, random func() float64) time.Duration {
	base := r.Base(attempt)
	d := base
	if r.Jitter > 0 && random != nil {
		u := random()
		if u < 0 || u >= 1 || math.IsNaN(u) {
			u = 0.5
		}
		f := 1 + r.Jitter*(2*u-1)
		d = time.Duration(float64(base) * f)
	}
	if d > r.Max {
		d = r.Max
	}
	if d < time.Second {
		d = time.Second
	}
	return d
}

// NextAttempt is when the attempt after a failure at now should be made:
// now+backoff, but never after the message expires (expires zero means no
// expiry), so that the last attempt happens at the deadline rather than a
// whole backoff after it. The result is rounded up to a whole second because
// a JetStream "@at" schedule has second resolution, and rounding down could
// fire before the backoff is over.
func NextAttempt(now time.Time, backoff time.Duration, expires time.Time) time.Time {
	next := now.Add(backoff)
	if !expires.IsZero() && expires.Before(next) {
		next = expires
	}
	return CeilSecond(next)
}

// CeilSecond rounds t up to the next whole second (t itself when it is one).
func CeilSecond(t time.Time) time.Time {
	tr := t.Truncate(time.Second)
	if tr.Equal(t) {
		return t
	}
	return tr.Add(time.Second)
}

// Expired reports whether a message that expires at expires must no longer be
// retried at now. A zero expires never expires. The deadline itself counts as
// expired, so the attempt NextAttempt schedules at the deadline is the last.
func Expired(now, expires time.Time) bool {
	return !expires.IsZero() && !now.Before(expires)
}
