package docket

import (
	"errors"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fixed := func() Backoff {
		return BackoffFunc(func(int, error) time.Duration { return time.Minute })
	}
	boom := errors.New("boom")
	d := func(attempt, max int, ignore bool) *transport.Delivery {
		return &transport.Delivery{Message: transport.Message{ID: "t", MaxAttempts: max, IgnoreResult: ignore}, Attempt: attempt, Owner: "w"}
	}
	for _, c := range []struct {
		name   string
		d      *transport.Delivery
		result []byte
		err    error
		cause  error
		state  transport.State
		runAt  time.Time
		skip   bool
		keep   bool // the result is recorded
	}{
		{name: "success", d: d(1, 4, false), result: []byte("1"), state: StateSucceeded, keep: true},
		{name: "success, result ignored", d: d(1, 4, true), result: []byte("1"), state: StateSucceeded},
		{name: "lease lost wins over success", d: d(1, 4, false), cause: errLeaseLost, skip: true},
		{name: "error retries after the backoff", d: d(1, 4, false), err: boom, state: StateScheduled, runAt: now.Add(time.Minute)},
		{name: "RetryAfter picks the delay", d: d(1, 4, false), err: RetryAfter(5 * time.Second), state: StateScheduled, runAt: now.Add(5 * time.Second)},
		{name: "last attempt fails", d: d(4, 4, false), err: boom, state: StateFailed},
		{name: "permanent fails at once", d: d(1, 4, false), err: Permanent(boom), state: StateFailed},
		{name: "shutdown releases", d: d(1, 4, false), err: boom, cause: errShutdown, state: StateReady},
		{name: "cancel ends cancelled", d: d(1, 4, false), err: boom, cause: errCancelRequested, state: StateCancelled},
		{name: "cancelled handler that succeeded", d: d(1, 4, false), result: []byte("2"), cause: errCancelRequested, state: StateSucceeded, keep: true},
	} {
		out, skip := decide(c.d, c.result, c.err, c.cause, now, fixed)
		if skip != c.skip {
			t.Errorf("%s: skip = %v", c.name, skip)
			continue
		}
		if skip {
			continue
		}
		if out.State != c.state || !out.RunAt.Equal(c.runAt) || out.Lease != c.d.Lease() {
			t.Errorf("%s: got %v at %v (lease %v), want %v at %v", c.name, out.State, out.RunAt, out.Lease, c.state, c.runAt)
		}
		if (out.Result != nil) != c.keep {
			t.Errorf("%s: result %q recorded = %v, want %v", c.name, out.Result, out.Result != nil, c.keep)
		}
		// An attempt that ends in error records it; a success or a
		// release (the attempt is given back) records none.
		wantText := c.err != nil && c.state != StateReady && c.state != StateSucceeded
		if wantText != (out.Error != "") {
			t.Errorf("%s: error text %q", c.name, out.Error)
		}
	}
}

// Backends keep milliseconds: an ETA between two rounds up, so that no
// backend starts the task before it.
func TestETARoundsUpToMillisecond(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 999_600, time.UTC) // 0.9996 ms
	def := defaultTaskOpts()
	for _, opt := range []TaskOption{Countdown(400 * time.Millisecond), ETA(now.Add(time.Second))} {
		msgs, err := buildMessages(now, "t", &def, [][]byte{[]byte("1")}, []TaskOption{opt})
		if err != nil {
			t.Fatal(err)
		}
		eta := msgs[0].ETA
		if eta.Truncate(time.Millisecond) != eta {
			t.Errorf("ETA %v is not a whole millisecond", eta)
		}
		if ms := eta.UnixMilli(); time.UnixMilli(ms).Before(now.Add(400 * time.Millisecond)) {
			t.Errorf("stored ETA %v is before the countdown's end", time.UnixMilli(ms))
		}
	}
}
