package policy

import (
	"testing"
	"time"
)

func TestBase(t *testing.T) {
	r := DefaultRetry()
	tests := []struct {
		attempt uint32
		want    time.Duration
	}{
		{0, 300 * time.Second}, // treated as the first attempt
		{1, 300 * time.Second},
		{2, 600 * time.Second},
		{3, 1200 * time.Second},
		{4, 2400 * time.Second},
		{5, 4000 * time.Second}, // 4800s capped
		{6, 4000 * time.Second},
		{1000, 4000 * time.Second}, // no overflow
		{^uint32(0), 4000 * time.Second},
	}
	for _, tt := range tests {
		if got := r.Base(tt.attempt); got != tt.want {
			t.Errorf("Base(%d) = %s, want %s", tt.attempt, got, tt.want)
		}
	}
}

func TestBackoffJitter(t *testing.T) {
	r := DefaultRetry()
	constant := func(v float64) func() float64 { return func() float64 { return v } }
	tests := []struct {
		name    string
		attempt uint32
		random  func() float64
		want    time.Duration
	}{
		{"no random source is the base", 1, nil, 300 * time.Second},
		{"middle is the base", 1, constant(0.5), 300 * time.Second},
		{"zero is -jitter", 1, constant(0), 240 * time.Second},
		{"near one is almost +jitter", 1, constant(0.999999), 359999892 * time.Microsecond},
		{"doubling with -jitter", 3, constant(0), 960 * time.Second},
		{"cap is a hard ceiling", 5, constant(0.999999), 4000 * time.Second},
		{"below the cap jitter spreads down", 5, constant(0), 3200 * time.Second},
		{"out-of-range random counts as middle", 2, constant(1.5), 600 * time.Second},
	}
	for _, tt := range tests {
		got := r.Backoff(tt.attempt, tt.random)
		if d := got - tt.want; d > time.Millisecond || d < -time.Millisecond {
			t.Errorf("%s: Backoff(%d) = %s, want %s", tt.name, tt.attempt, got, tt.want)
		}
	}

	// Whatever the random source says, waits stay within the bounds.
	for attempt := uint32(1); attempt <= 8; attempt++ {
		base := r.Base(attempt)
		lo := time.Duration(float64(base) * (1 - r.Jitter))
		hi := min(time.Duration(float64(base)*(1+r.Jitter)), r.Max)
		for i := 0; i < 100; i++ {
			u := float64(i) / 100
			got := r.Backoff(attempt, constant(u))
			if got < lo || got > hi {
				t.Fatalf("Backoff(%d) with random %v = %s, want within [%s, %s]", attempt, u, got, lo, hi)
			}
		}
	}

	// A sub-second schedule still waits the one second a schedule can express.
	tiny := Retry{Min: 10 * time.Millisecond, Max: time.Second}
	if got := tiny.Backoff(1, nil); got != time.Second {
		t.Errorf("tiny Backoff = %s, want 1s", got)
	}
}

func TestRetryValidate(t *testing.T) {
	tests := []struct {
		r     Retry
		field string
	}{
		{DefaultRetry(), ""},
		{Retry{Min: time.Second, Max: time.Second}, ""},
		{Retry{Min: 0, Max: time.Second}, "retry.min"},
		{Retry{Min: -time.Second, Max: time.Second}, "retry.min"},
		{Retry{Min: 2 * time.Second, Max: time.Second}, "retry.max"},
		{Retry{Min: time.Second, Max: time.Second, Jitter: 1}, "retry.jitter"},
		{Retry{Min: time.Second, Max: time.Second, Jitter: -0.1}, "retry.jitter"},
	}
	for _, tt := range tests {
		err := tt.r.Validate()
		switch {
		case tt.field == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tt.r, err)
		case tt.field != "" && (err == nil || !hasPrefix(err.Error(), tt.field+":")):
			t.Errorf("%+v: error %v, want one naming %s", tt.r, err, tt.field)
		}
	}
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

func TestNextAttemptAndExpiry(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 250_000_000, time.UTC)
	tests := []struct {
		name    string
		backoff time.Duration
		expires time.Time
		want    time.Time
	}{
		{"rounds up to the second", 300 * time.Second, time.Time{}, time.Date(2026, 1, 2, 3, 9, 6, 0, time.UTC)},
		{"whole second stays", 750 * time.Millisecond, time.Time{}, time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)},
		{"capped at expiry", time.Hour, now.Add(90 * time.Second), time.Date(2026, 1, 2, 3, 5, 36, 0, time.UTC)},
		{"expiry after backoff does not matter", time.Minute, now.Add(time.Hour), time.Date(2026, 1, 2, 3, 5, 6, 0, time.UTC)},
	}
	for _, tt := range tests {
		if got := NextAttempt(now, tt.backoff, tt.expires); !got.Equal(tt.want) {
			t.Errorf("%s: NextAttempt = %s, want %s", tt.name, got, tt.want)
		}
	}

	exp := []struct {
		now, expires time.Time
		want         bool
	}{
		{now, time.Time{}, false},
		{now, now.Add(time.Nanosecond), false},
		{now, now, true},
		{now, now.Add(-time.Hour), true},
	}
	for _, tt := range exp {
		if got := Expired(tt.now, tt.expires); got != tt.want {
			t.Errorf("Expired(%s, %s) = %v, want %v", tt.now, tt.expires, got, tt.want)
		}
	}
}
