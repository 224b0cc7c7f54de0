package docket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/docketq/docket/internal/failpoint"
	"github.com/docketq/docket/transport"
)

func (w *worker) executor() {
	defer w.execs.Done()
	for ex := range w.work {
		if context.Cause(ex.ctx) == errLeaseLost {
			w.q.leaseLost(&ex.d, attemptRun{})
			w.done(ex)
			continue
		}
		if !w.limits.acquire(ex.d.Name, w.stopFetch) {
			w.finish(ex, release(ex))
			continue
		}
		ex.mu.Lock()
		ex.running = true
		ex.mu.Unlock()
		w.started.Add(1)
		out, skip, run := w.q.execute(ex.ctx, &ex.d)
		failpoint.Hit("handler.after")
		if out.State == StateScheduled {
			failpoint.Hit("retry.before-record")
		}
		w.limits.release(ex.d.Name)
		ex.mu.Lock()
		ex.running = false
		ex.run = run
		ex.mu.Unlock()
		if skip {
			w.q.leaseLost(&ex.d, run)
			w.done(ex)
			continue
		}
		w.finish(ex, out)
	}
}

// attemptRun is when an attempt's handler started and how long it ran.
type attemptRun struct {
	started time.Time
	runtime time.Duration
}

// leaseLost reports an attempt whose outcome may not be written.
func (q *Queue) leaseLost(d *transport.Delivery, run attemptRun) {
	q.attemptEnded(d, &transport.Outcome{Error: "lease lost"}, true, run)
}

// execute runs one delivery's handler and decides the outcome. skip means
// no outcome may be written (the lease was lost).
func (q *Queue) execute(parent context.Context, d *transport.Delivery) (out transport.Outcome, skip bool, run attemptRun) {
	t, h := q.lookupHandler(d.Name)
	if t == nil {
		out.Lease, out.Queue, out.Flow = d.Lease(), d.Queue, d.FlowID()
		out.State = StateFailed
		out.Error = fmt.Sprintf("docket: task name %q is not registered in the worker that claimed it", d.Name)
		return out, false, run
	}
	ts := &taskState{
		TaskContext: TaskContext{ID: d.ID, Name: d.Name, Queue: d.Queue, Attempt: d.Attempt, MaxRetries: d.MaxAttempts - 1, Headers: d.Headers, LastError: d.LastError},
		progress:    progress{q: q, lease: d.Lease(), d: d},
	}
	ctx := context.WithValue(parent, ctxKey{}, ts)
	var timeoutCancel context.CancelFunc = func() {}
	if d.Timeout > 0 {
		ctx, timeoutCancel = context.WithTimeoutCause(ctx, d.Timeout, fmt.Errorf("docket: attempt timed out after %s: %w", d.Timeout, context.DeadlineExceeded))
	}
	var result []byte
	var err error
	// Two readings of the system clock time the attempt; with the system
	// clock they are also its start and decision times.
	_, sysClock := q.cfg.clock.(systemClock)
	mono := time.Now()
	run.started = mono
	if !sysClock {
		run.started = q.now()
	}
	switch {
	case len(d.Payload) > q.cfg.maxPayload:
		err = Permanent(&TooLargeError{What: "arguments", Size: len(d.Payload), Limit: q.cfg.maxPayload})
	case h != nil:
		job := &Job{TaskContext: ts.TaskContext, Args: d.Payload, Created: d.Created, ETA: d.ETA, Started: run.started}
		result, err = invokeChain(ctx, h, job)
		if err == nil {
			err = checkResult(result, q.cfg.maxResult)
		}
	default:
		result, err = invoke(ctx, t, d.Payload, q.cfg.maxResult)
	}
	end := time.Now()
	run.runtime = end.Sub(mono)
	if !sysClock {
		end = q.now()
	}
	if err != nil && ctx.Err() != nil && context.Cause(parent) == nil {
		if cause := context.Cause(ctx); cause != nil && cause != err && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	timeoutCancel()
	ts.progress.end(parent)
	out, skip = decide(d, result, err, context.Cause(parent), end, func() Backoff { return q.backoffFor(d, t) })
	return out, skip, run
}

// decide is the outcome of an attempt that returned result and err, its
// ctx cancelled for cause (nil when it was not): a pure function of its
// inputs, apart from the backoff's jitter. skip means no outcome may be
// written (the lease was lost).
func decide(d *transport.Delivery, result []byte, err, cause error, now time.Time, backoff func() Backoff) (out transport.Outcome, skip bool) {
	out.Lease, out.Queue, out.Flow = d.Lease(), d.Queue, d.FlowID()
	switch {
	case cause == errLeaseLost:
		return out, true
	case err == nil:
		out.State = StateSucceeded
		if !d.IgnoreResult {
			out.Result = result
		}
	case cause == errShutdown:
		out.State = StateReady
	case cause == errCancelRequested:
		out.State, out.Error = StateCancelled, errText(err)
	default:
		out.Error = errText(err)
		var perm *PermanentError
		var retry *RetryError
		switch {
		case errors.As(err, &perm):
			out.State = StateFailed
		case d.Attempt >= d.MaxAttempts:
			out.State = StateFailed
		default:
			var delay time.Duration
			if errors.As(err, &retry) {
				delay = max(retry.Delay, 0)
			} else {
				delay = backoff().Delay(d.Attempt, err)
			}
			runAt, ok := addDelay(now, delay)
			if !ok {
				runAt, _ = addDelay(now, maxDelay)
			}
			out.State, out.RunAt = StateScheduled, runAt
		}
	}
	return out, false
}

func (q *Queue) backoffFor(d *transport.Delivery, t Registrable) Backoff {
	if b := d.Backoff; b != nil {
		return Exponential{Base: b.Base, Max: b.Max, Jitter: b.Jitter}
	}
	if b := t.taskOptions().backoff; b != nil {
		return b
	}
	return defaultBackoff()
}

// invoke calls the handler, turning a panic into an error with its stack.
func invoke(ctx context.Context, t Registrable, payload []byte, maxResult int) (result []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: string(debug.Stack())}
		}
	}()
	return t.invoke(ctx, payload, maxResult)
}

// checkResult holds a result a middleware returned (perhaps without
// calling the handler) to the rules the handler's own result meets: JSON,
// within MaxResultSize.
func checkResult(result []byte, limit int) error {
	if len(result) > limit {
		return Permanent(&TooLargeError{What: "result", Size: len(result), Limit: limit})
	}
	if len(result) > 0 && !json.Valid(result) {
		return Permanent(fmt.Errorf("docket: a middleware returned a result that is not JSON: %q", truncate(result, 64)))
	}
	return nil
}

// invokeChain calls a task's middleware chain, turning a panic in a
// middleware or the handler into an error with its stack.
func invokeChain(ctx context.Context, h Handler, job *Job) (result []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: string(debug.Stack())}
		}
	}()
	return h(ctx, job)
}

const maxErrText = 64 << 10

func errText(err error) string {
	s := err.Error()
	if len(s) > maxErrText {
		s = s[:maxErrText]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
