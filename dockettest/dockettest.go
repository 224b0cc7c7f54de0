// Package dockettest helps test code that uses docket, without a broker and
// without sleeping: a private in-memory queue, a fake clock, and assertions
// about what was enqueued.
//
//	func TestSignup(t *testing.T) {
//		q, clock := dockettest.Open(t)
//		q.Register(SendWelcome)
//
//		signup(ctx, q, "ann@example.com") // code under test enqueues
//
//		dockettest.RequireEnqueued(t, q, SendWelcome, Welcome{To: "ann@example.com"})
//		dockettest.Drain(t, q)            // runs it through the real path
//		clock.Advance(time.Hour)          // retries and countdowns fall due
//		dockettest.Drain(t, q)
//	}
package dockettest

import (
	"context"
	"encoding/json"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// Clock is a fake docket.Clock that moves only when told.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock set to t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now implements docket.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t (backwards too, to test clock jumps).
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// Open returns a queue on a private in-memory database with a fake clock
// set to 2030-01-01 09:00 UTC (a fixed instant, so that test output does not
// depend on when the test runs), closed when the test ends. opts are added after the
// defaults, so they may replace the clock.
func Open(tb testing.TB, opts ...docket.Option) (*docket.Queue, *Clock) {
	tb.Helper()
	clock := NewClock(time.Date(2030, time.January, 1, 9, 0, 0, 0, time.UTC))
	q, err := docket.Open(context.Background(), "memory:", append([]docket.Option{docket.WithClock(clock)}, opts...)...)
	if err != nil {
		tb.Fatalf("dockettest: open: %v", err)
	}
	tb.Cleanup(func() { q.Close() })
	return q, clock
}

// Drain runs every due task (see Queue.Drain) and returns how many attempts
// ran; it fails the test on error.
func Drain(tb testing.TB, q *docket.Queue) int {
	tb.Helper()
	n, err := q.Drain(context.Background())
	if err != nil {
		tb.Fatalf("dockettest: drain: %v", err)
	}
	return n
}

// Advance moves clock by d and drains what fell due.
func Advance(tb testing.TB, q *docket.Queue, clock *Clock, d time.Duration) int {
	tb.Helper()
	clock.Advance(d)
	return Drain(tb, q)
}

// Enqueued returns the decoded arguments of every waiting (scheduled or
// ready) task of this kind, oldest first.
func Enqueued[A, R any](tb testing.TB, q *docket.Queue, task *docket.Task[A, R]) []A {
	tb.Helper()
	var out []A
	for _, in := range waiting(tb, q, task.Name()) {
		var a A
		if err := json.Unmarshal(in.Args, &a); err != nil {
			tb.Fatalf("dockettest: decode arguments of %s %s: %v", in.Name, in.ID, err)
		}
		out = append(out, a)
	}
	return out
}

// RequireEnqueued fails the test unless a waiting task of this kind has
// arguments equal (reflect.DeepEqual) to want; it returns that task.
func RequireEnqueued[A, R any](tb testing.TB, q *docket.Queue, task *docket.Task[A, R], want A) *docket.TaskInfo {
	tb.Helper()
	infos := waiting(tb, q, task.Name())
	var seen []A
	for _, in := range infos {
		var a A
		if err := json.Unmarshal(in.Args, &a); err == nil {
			if reflect.DeepEqual(a, want) {
				return in
			}
			seen = append(seen, a)
		}
	}
	tb.Fatalf("dockettest: no waiting %s task with arguments %+v; waiting: %+v", task.Name(), want, seen)
	return nil
}

// RequireNotEnqueued fails the test if any task of this kind is waiting.
func RequireNotEnqueued[A, R any](tb testing.TB, q *docket.Queue, task *docket.Task[A, R]) {
	tb.Helper()
	if infos := waiting(tb, q, task.Name()); len(infos) > 0 {
		tb.Fatalf("dockettest: %d %s task(s) waiting, want none", len(infos), task.Name())
	}
}

func waiting(tb testing.TB, q *docket.Queue, name string) []*docket.TaskInfo {
	tb.Helper()
	var all []*docket.TaskInfo
	after := ""
	for {
		page, err := q.List(context.Background(), docket.ListOptions{
			Name: name, States: []docket.State{docket.StateScheduled, docket.StateReady}, After: after, Limit: 1000,
		})
		if err != nil {
			tb.Fatalf("dockettest: list %s: %v", name, err)
		}
		all = append(all, page...)
		if len(page) < 1000 {
			return all
		}
		after = page[len(page)-1].ID
	}
}
