package docket

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/transport"
)

// ErrNotReady is wrapped by CheckReady's error when the backend does not
// answer or the worker does not run.
var ErrNotReady = errors.New("docket: not ready")

// ErrWedged is wrapped by CheckLive's error when a worker loop stopped
// coming round.
var ErrWedged = errors.New("docket: worker wedged")

// Ping checks that the backend answers, with one round trip (SQLite: a
// read of the database header; Redis: PING; RabbitMQ: a passive
// declaration on the live connection, then the result store's ping). It
// returns ErrUnsupported for a transport that cannot be pinged.
func (q *Queue) Ping(ctx context.Context) error {
	if q.isClosed() {
		return ErrClosed
	}
	p, ok := q.t.(transport.Pinger)
	if !ok {
		return fmt.Errorf("docket: ping: %w", ErrUnsupported)
	}
	return p.Ping(ctx)
}

// CheckReady reports whether this process can do its work now: the
// backend answers a Ping within ctx and, when tasks or schedules are
// registered (the process is a worker), Run is active. A readiness probe
// calls it; see the health package for the HTTP handler.
func (q *Queue) CheckReady(ctx context.Context) error {
	// A backend that cannot be pinged is taken as reachable: readiness
	// then rests on the worker alone.
	if err := q.Ping(ctx); err != nil && !(errors.Is(err, ErrUnsupported) && !q.isClosed()) {
		return fmt.Errorf("%w: backend: %w", ErrNotReady, err)
	}
	q.mu.RLock()
	worker := len(q.tasks) > 0 || len(q.schedules) > 0
	running := q.worker != nil
	q.mu.RUnlock()
	if worker && !running {
		return fmt.Errorf("%w: tasks are registered but the worker is not running", ErrNotReady)
	}
	return nil
}

// CheckLive reports whether this process's worker loops are alive: the
// claim loop and the lease heartbeat come round at least every
// 2×max(LeaseDuration, 30s) while Run is active, even while the backend
// is unreachable (a call to it is bounded, and the loops retry). It never
// calls the backend, so a broker outage does not restart healthy workers.
// Without a running worker it returns nil. Long handlers do not count:
// their bound is the task's Timeout.
func (q *Queue) CheckLive() error {
	w := q.running()
	if w == nil || w.stopping() {
		return nil
	}
	return w.wedged(time.Now())
}

// wedged reports a loop that has not come round for 2×loopCall at now.
func (w *worker) wedged(now time.Time) error {
	limit := 2 * w.loopCall()
	for _, l := range []struct {
		name string
		tick *atomic.Int64
	}{{"claim loop", &w.fetchTick}, {"lease heartbeat", &w.beatTick}} {
		if d := now.Sub(w.born.Add(time.Duration(l.tick.Load()))); d > limit {
			return fmt.Errorf("%w: the %s has not come round for %s", ErrWedged, l.name, d.Round(time.Second))
		}
	}
	return nil
}

// Slots reports how many handlers run now in this process and how many
// may (Concurrency); both are zero while Run is not active.
func (q *Queue) Slots() (busy, total int) {
	w := q.running()
	if w == nil {
		return 0, 0
	}
	return w.busy(), w.conc
}

// tick records that a loop came round, as the monotonic time since the
// worker was made (a step of the wall clock does not make a loop stale).
func (w *worker) tick(t *atomic.Int64) { t.Store(int64(time.Since(w.born))) }
