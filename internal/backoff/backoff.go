// Package backoff computes the waits between attempts: docket's one
// exponential-backoff formula, used for task retries and for its own
// reconnects, claim failures and polling.
package backoff

import (
	"math"
	"math/rand/v2"
	"time"
)

// Exp returns base·2^n, capped at max (when max > 0), for n ≥ 0. It never
// overflows.
func Exp(base, max time.Duration, n int) time.Duration {
	d := float64(base) * math.Pow(2, float64(min(max0(n), 62)))
	if max > 0 && d > float64(max) {
		d = float64(max)
	}
	return clamp(d)
}

// Spread multiplies d by a random factor in [1-jitter, 1+jitter], so that
// callers failing together do not retry together. jitter is in [0, 1].
func Spread(d time.Duration, jitter float64) time.Duration {
	if jitter <= 0 {
		return d
	}
	return clamp(float64(d) * (1 + jitter*(2*rand.Float64()-1)))
}

// Policy is an exponential backoff from Min to Max with equal jitter: the
// wait before retry n (0 for the first) is Min·2^n capped at Max, of which
// the lower half is fixed and the upper half random. Loops that retry an
// operation against a backend use it so that many processes do not retry
// in step.
type Policy struct {
	Min, Max time.Duration
}

// Delay returns the wait before retry n.
func (p Policy) Delay(n int) time.Duration {
	d := Exp(p.Min, p.Max, n)
	return d/2 + rand.N(d/2+1)
}

func max0(n int) int {
	if n < 0 {
		return 0
	}
	return n
}

func clamp(d float64) time.Duration {
	switch {
	case d > float64(math.MaxInt64/2):
		return time.Duration(math.MaxInt64 / 2)
	case d < 0:
		return 0
	}
	return time.Duration(d)
}
