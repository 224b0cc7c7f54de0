package docket

import (
	"math"
	"time"

	"github.com/docketq/docket/internal/backoff"
)

// Backoff decides how long to wait before retrying. attempt is the number of
// the attempt that just failed (1 for the first); err is its error.
type Backoff interface {
	Delay(attempt int, err error) time.Duration
}

// Exponential is the default backoff: Base·2^(attempt-1), capped at Max,
// then spread by a random ±Jitter fraction so that tasks failing together do
// not retry together. The default is Exponential{Base: time.Second,
// Max: 10 * time.Minute, Jitter: 0.25}.
//
// Exponential is the only policy that can be chosen per enqueue (it travels
// with the task); other policies are set on the task with NewTask.
type Exponential struct {
	Base   time.Duration
	Max    time.Duration
	Jitter float64 // 0..1
}

// defaultBackoff is the retry policy of a task that sets none.
func defaultBackoff() Exponential {
	return Exponential{Base: time.Second, Max: 10 * time.Minute, Jitter: 0.25}
}

// Delay implements Backoff.
func (e Exponential) Delay(attempt int, _ error) time.Duration {
	return backoff.Spread(backoff.Exp(e.Base, e.Max, attempt-1), e.Jitter)
}

func (e Exponential) validate() error {
	switch {
	case e.Base <= 0:
		return invalid("backoff", e.Base, "Base must be positive")
	case e.Max < e.Base:
		return invalid("backoff", e.Max, "Max must be at least Base")
	case e.Jitter < 0 || e.Jitter > 1 || math.IsNaN(e.Jitter):
		return invalid("backoff", e.Jitter, "Jitter must be within [0, 1]")
	}
	return nil
}

// BackoffFunc adapts a function to Backoff.
type BackoffFunc func(attempt int, err error) time.Duration

// Delay implements Backoff.
func (f BackoffFunc) Delay(attempt int, err error) time.Duration { return f(attempt, err) }
