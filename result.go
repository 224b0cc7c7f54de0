package docket

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/docketq/docket/internal/backoff"
	"github.com/docketq/docket/transport"
)

// Result is a handle on an enqueued task and its typed result R.
type Result[R any] struct {
	q  *Queue
	id string
}

// newResult returns a handle on task id's result; enqueued says it is the
// handle of a task this call enqueued, which a transport.Retainer counts
// already. A backend that keeps this process's tasks in memory (a
// Retainer: RabbitMQ alone) keeps the task's state while a handle is
// reachable, and is told when each is garbage.
func newResult[R any](q *Queue, id string, enqueued bool) *Result[R] {
	r := &Result[R]{q: q, id: id}
	if q.retainer != nil {
		if !enqueued {
			q.retainer.Retain(id)
		}
		runtime.AddCleanup(r, q.retainer.Release, id)
	}
	return r
}

// ID returns the task's id.
func (r *Result[R]) ID() string { return r.id }

// Info returns what the backend knows about the task.
func (r *Result[R]) Info(ctx context.Context) (*TaskInfo, error) { return r.q.Info(ctx, r.id) }

// Cancel cancels the task; see Queue.Cancel.
func (r *Result[R]) Cancel(ctx context.Context) error { return r.q.Cancel(ctx, r.id) }

// waitPoll spaces Wait's look-ups on a backend that does not tell the
// Queue about other processes' writes.
var waitPoll = backoff.Policy{Min: 10 * time.Millisecond, Max: time.Second}

// Wait blocks until the task reaches a terminal state or ctx ends. It
// returns the decoded result of a succeeded task; a *TaskError (matching
// ErrTaskFailed, ErrTaskCancelled or ErrTaskExpired) for the other
// terminal states; an error wrapping ErrNotFound if the task does not exist
// (or was pruned); or ctx's error.
//
// Completion in this process wakes Wait at once; completion in another
// process is noticed within the queue's PollInterval (20 times it after a
// quiet second) on SQLite, and pushed on Redis, RabbitMQ and Celery's
// result backends.
func (r *Result[R]) Wait(ctx context.Context) (R, error) {
	var zero R
	push := r.q.pushed
	if w, ok := r.q.t.(transport.Watcher); ok {
		defer w.Watch(ctx, r.id)()
	}
	polls := 0
	for {
		ch, remove := r.q.waiters.add(r.id)
		in, err := r.q.t.Get(ctx, transport.GetParams{Now: r.q.now(), ID: r.id})
		switch {
		case errors.Is(err, ErrBusy) && ctx.Err() == nil:
			// Another process holds a lock (a crashed writer's WAL being
			// recovered, say): keep waiting.
		case err != nil:
			remove()
			return zero, err
		case in.State.Terminal():
			remove()
			return decodeResult[R](&in)
		}
		// Notifications are the fast path; the timer is the fallback for
		// backends without them and a safety net for missed ones.
		wait := waitPoll.Delay(polls)
		if push && err == nil {
			wait = time.Second
		}
		timer := time.NewTimer(wait)
		select {
		case <-ch:
		case <-timer.C:
			polls++
		case <-ctx.Done():
			timer.Stop()
			remove()
			return zero, ctx.Err()
		case <-r.q.closing:
			timer.Stop()
			remove()
			return zero, ErrClosed
		}
		timer.Stop()
		remove()
	}
}

func decodeResult[R any](in *transport.Info) (R, error) {
	var v R
	if in.State != StateSucceeded {
		return v, &TaskError{ID: in.ID, Name: in.Name, State: in.State, Attempt: in.Attempt, Message: in.Error}
	}
	if len(in.Result) == 0 {
		return v, nil // IgnoreResult
	}
	if err := decodeJSON(in.Result, &v); err != nil {
		return v, fmt.Errorf("docket: decode result of task %s into %T: %w", in.ID, v, err)
	}
	return v, nil
}
