package docket

import (
	"context"
	"encoding/json"
	"maps"
	"time"

	"github.com/docketq/docket/transport"
)

// Job is one attempt of a task as middleware sees it: the task's context
// (FromContext returns the same) and its encoded arguments. The maps and
// slices it holds are the delivery's own: replace them, never modify them
// in place (a broker may publish a retry from them).
type Job struct {
	TaskContext
	// Args are the encoded arguments (JSON). A middleware may replace
	// them before calling next (to decrypt a payload, say); the task's
	// handler decodes what it finds here.
	Args json.RawMessage
	// Created is when the task was enqueued; ETA when it was due, if it
	// was enqueued with a countdown or an ETA (zero otherwise).
	Created time.Time
	ETA     time.Time
	// Started is when this attempt started, by the Queue's clock.
	Started time.Time
}

// Due is when the task became due: its ETA, or its enqueue time. For a
// first attempt, Started minus Due is the time the task waited for a
// worker.
func (j *Job) Due() time.Time {
	if j.ETA.After(j.Created) {
		return j.ETA
	}
	return j.Created
}

// Handler runs one attempt of a task: the untyped form of a task's
// handler, which middleware wraps. It returns the encoded result, or the
// error that decides the attempt's outcome (see Permanent and RetryAfter).
type Handler func(ctx context.Context, job *Job) (json.RawMessage, error)

// Middleware wraps a Handler, the way net/http middleware wraps an
// http.Handler: it may act before and after calling next, change ctx
// (attach a tenant read from job.Headers, say), replace the arguments,
// or return an error without calling next. A panic in a middleware is
// handled like a panic in the task's handler. Queue-wide middleware comes
// from the Use option, per-task middleware from WithMiddleware; the
// Queue's run outermost, in the order given.
//
// A Middleware sees the handler's error, not the outcome docket draws from
// it (a retry, a final failure, a cancel, a lease lost): for those, see
// OnEvent.
type Middleware func(next Handler) Handler

// Use adds middleware around every handler this Queue's workers run, in
// order: the first is outermost. Without middleware a handler is called
// directly, at no cost.
func Use(mw ...Middleware) Option {
	return func(c *config) {
		for _, m := range mw {
			if !c.check(m != nil, invalid("Use", nil, "middleware is nil")) {
				return
			}
		}
		c.middleware = append(c.middleware, mw...)
	}
}

// WithMiddleware adds middleware around this task's handler, inside the
// Queue's (Use). It is a task default: set it in NewTask; an enqueue that
// passes it is refused.
func WithMiddleware(mw ...Middleware) TaskOption {
	return func(o *taskOpts) {
		for _, m := range mw {
			if m == nil {
				o.badMiddleware = true
				return
			}
		}
		o.middleware = append(o.middleware[:len(o.middleware):len(o.middleware)], mw...)
	}
}

// handlerFor returns the handler chain of task t: its own handler inside
// the task's and the Queue's middleware, or nil when there is none (the
// handler is then called directly).
func (q *Queue) handlerFor(t Registrable) Handler {
	mw := t.taskOptions().middleware
	if len(q.cfg.middleware) == 0 && len(mw) == 0 {
		return nil
	}
	maxResult := q.cfg.maxResult
	h := Handler(func(ctx context.Context, j *Job) (json.RawMessage, error) {
		return t.invoke(ctx, j.Args, maxResult)
	})
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	for i := len(q.cfg.middleware) - 1; i >= 0; i-- {
		h = q.cfg.middleware[i](h)
	}
	return h
}

// Enqueueing is one enqueue call as enqueue middleware sees it: tasks of
// one name, to one queue, with the same options.
type Enqueueing struct {
	Name  string
	Queue string
	// IDs of the tasks, one per set of arguments.
	IDs []string
	// Headers of every task of the call. A middleware may add or change
	// entries (a trace context, a tenant) before calling next; the map is
	// the call's own.
	Headers map[string]string
	ETA     time.Time // zero: due at once
	// InTx: the tasks are written in the caller's transaction (Queue.Tx)
	// and exist only if it commits.
	InTx bool
	// Scheduled names the schedule that fired the task, if a scheduler
	// did; next then returns nil also when the slot was skipped or
	// another process fired it (see OnEvent for what was enqueued).
	Scheduled string
}

// EnqueueFunc stores the tasks of one enqueue call.
type EnqueueFunc func(ctx context.Context, e *Enqueueing) error

// EnqueueMiddleware wraps the enqueue step, on the producer side: it runs
// in the process that enqueues, before the tasks are stored, for every
// enqueue of this Queue, including EnqueueByName, transactional enqueues
// and the tasks its schedules fire (not TriggerSchedule, which the store
// does for an operator). It may add headers, which travel with the tasks
// to whichever process runs them. It must call next once, or return an
// error: one that returns nil without storing the tasks fails the
// enqueue with ErrInvalid.
type EnqueueMiddleware func(next EnqueueFunc) EnqueueFunc

// UseEnqueue adds enqueue middleware to this Queue, in order: the first is
// outermost.
func UseEnqueue(mw ...EnqueueMiddleware) Option {
	return func(c *config) {
		for _, m := range mw {
			if !c.check(m != nil, invalid("UseEnqueue", nil, "middleware is nil")) {
				return
			}
		}
		c.enqueueMW = append(c.enqueueMW, mw...)
	}
}

// Options bundles several options into one, so that a package can hand
// its middleware, enqueue middleware and event hook to Open as one value.
func Options(opts ...Option) Option {
	return func(c *config) {
		for _, o := range opts {
			if o != nil {
				o(c)
			}
		}
	}
}

// throughEnqueueMW runs store for msgs (one enqueue call) inside the
// Queue's enqueue middleware, and applies the headers it set to msgs.
func (q *Queue) throughEnqueueMW(ctx context.Context, msgs []transport.Message, inTx bool, schedule string, store func(context.Context) error) error {
	if len(q.cfg.enqueueMW) == 0 {
		return store(ctx)
	}
	m := &msgs[0]
	e := &Enqueueing{Name: m.Name, Queue: m.Queue, Headers: maps.Clone(m.Headers), ETA: m.ETA, InTx: inTx, Scheduled: schedule}
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	before := maps.Clone(e.Headers)
	e.IDs = make([]string, len(msgs))
	for i := range msgs {
		e.IDs[i] = msgs[i].ID
	}
	stored := false
	h := EnqueueFunc(func(ctx context.Context, e *Enqueueing) error {
		if stored {
			return invalid("UseEnqueue", nil, "an enqueue middleware called next twice")
		}
		if err := validHeaders(e.Headers); err != nil {
			return err
		}
		// What the middleware set or removed applies to every message;
		// the headers a message had of its own stay (a workflow's steps
		// differ).
		for i := range msgs {
			msgs[i].Headers = mergeHeaders(msgs[i].Headers, before, e.Headers)
			if err := validHeaders(msgs[i].Headers); err != nil {
				return err
			}
		}
		stored = true
		return store(ctx)
	})
	for i := len(q.cfg.enqueueMW) - 1; i >= 0; i-- {
		h = q.cfg.enqueueMW[i](h)
	}
	err := h(ctx, e)
	if err == nil && !stored {
		// Nothing was stored, yet the caller would be told it was.
		return invalid("UseEnqueue", nil, "an enqueue middleware returned nil without calling next: nothing was stored")
	}
	return err
}

// mergeHeaders applies to own the changes an enqueue middleware made from
// before to after: keys it set or changed, and keys it removed.
func mergeHeaders(own, before, after map[string]string) map[string]string {
	if maps.Equal(own, before) {
		return after
	}
	out := maps.Clone(own)
	if out == nil {
		out = map[string]string{}
	}
	for k, v := range after {
		if bv, ok := before[k]; !ok || bv != v {
			out[k] = v
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			delete(out, k)
		}
	}
	return out
}
