package docket

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/docketq/docket/transport"
)

// State is the lifecycle state of a task; see the package doc.
type State = transport.State

// Task states.
const (
	StateScheduled = transport.StateScheduled // waiting for its ETA or retry time
	StateReady     = transport.StateReady     // due, waiting for a worker
	StateRunning   = transport.StateRunning   // leased to a worker
	StateSucceeded = transport.StateSucceeded // finished with a result
	StateFailed    = transport.StateFailed    // retries exhausted, permanent error, or worker lost
	StateCancelled = transport.StateCancelled // cancelled before or while running
	StateExpired   = transport.StateExpired   // not started before its expiry
	StateWaiting   = transport.StateWaiting   // a workflow step waiting for the steps before it
)

// Task binds a stable name to a typed handler and its defaults, like
// Celery's @app.task. A is the argument type and R the result type; both
// travel as JSON. Create tasks with NewTask, usually as package variables,
// and Register them with every Queue whose workers should run them.
type Task[A, R any] struct {
	name     string
	fn       func(context.Context, A) (R, error)
	defaults []TaskOption
	opts     taskOpts // defaults applied
	err      error    // reported by Register and Enqueue
	remote   bool     // defined by Remote: no handler here
}

// NewTask defines a task. It never fails: an invalid name or default is
// reported by Register and Enqueue.
func NewTask[A, R any](name string, fn func(ctx context.Context, args A) (R, error), defaults ...TaskOption) *Task[A, R] {
	return define(name, fn, defaults, false)
}

func define[A, R any](name string, fn func(context.Context, A) (R, error), defaults []TaskOption, remote bool) *Task[A, R] {
	t := &Task[A, R]{name: name, fn: fn, defaults: defaults, opts: defaultTaskOpts(), remote: remote}
	for _, o := range defaults {
		o(&t.opts)
	}
	switch {
	case fn == nil && !remote:
		t.err = invalid("task handler", name, "is nil")
	default:
		t.err = validName("task name", name)
	}
	if t.err == nil {
		t.err = t.opts.validate(false)
	}
	return t
}

// Remote defines a task that other workers run (Celery's, or another
// service's docket workers), known here by its name and types only, as
// Celery's send_task knows it: Enqueue and Wait work as for any task.
// Registered, it is known to EnqueueByName, and this Queue's workers do
// not take its queue for it (one that is given such a task fails it as not
// registered).
func Remote[A, R any](name string, defaults ...TaskOption) *Task[A, R] {
	return define[A, R](name, nil, defaults, true)
}

// Name returns the task's name.
func (t *Task[A, R]) Name() string { return t.name }

// Enqueue submits one task and returns a handle to its result. e is a
// *Queue, or q.Tx(tx) to enqueue inside a database transaction. When
// Enqueue returns nil the task is stored: it will reach exactly one terminal
// state. On error nothing was stored, except for an *OutcomeUnknownError
// (ErrOutcomeUnknown): a broker connection broke before the answer came,
// and its doc says how to retry without duplicates.
func (t *Task[A, R]) Enqueue(ctx context.Context, e Enqueuer, args A, opts ...TaskOption) (*Result[R], error) {
	rs, err := t.EnqueueMany(ctx, e, []A{args}, opts...)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// EnqueueMany submits one task per element of args in a single transaction:
// all are stored, or none. The options apply to every task.
func (t *Task[A, R]) EnqueueMany(ctx context.Context, e Enqueuer, args []A, opts ...TaskOption) ([]*Result[R], error) {
	if t.err != nil {
		return nil, t.err
	}
	q, tx := e.target()
	payloads := make([][]byte, len(args))
	for i, a := range args {
		p, err := encodeArgs(a, q.cfg.maxPayload)
		if err != nil {
			return nil, fmt.Errorf("docket: enqueue %s: %w", t.name, err)
		}
		payloads[i] = p
	}
	ids, err := q.enqueue(ctx, tx, t.name, &t.opts, payloads, opts)
	if err != nil {
		return nil, err
	}
	out := make([]*Result[R], len(ids))
	for i, id := range ids {
		out[i] = newResult[R](q, id, true)
	}
	return out, nil
}

// ResultOf returns a handle to the result of a task of this kind enqueued
// earlier (by id, perhaps by another process).
func (t *Task[A, R]) ResultOf(q *Queue, id string) *Result[R] { return newResult[R](q, id, false) }

// register implementation: the untyped layer the worker drives.
func (t *Task[A, R]) taskName() string       { return t.name }
func (t *Task[A, R]) taskErr() error         { return t.err }
func (t *Task[A, R]) taskOptions() *taskOpts { return &t.opts }

func (t *Task[A, R]) invoke(ctx context.Context, payload []byte, maxResult int) ([]byte, error) {
	var args A
	if err := decodeJSON(payload, &args); err != nil {
		return nil, Permanent(fmt.Errorf("docket: decode arguments of %s: %w", t.name, err))
	}
	r, err := t.fn(ctx, args)
	if err != nil {
		return nil, err
	}
	raw, err := marshalJSON(r)
	if err != nil {
		return nil, Permanent(fmt.Errorf("docket: encode result of %s: %w", t.name, err))
	}
	if len(raw) > maxResult {
		return nil, Permanent(&TooLargeError{What: "result", Size: len(raw), Limit: maxResult})
	}
	return raw, nil
}

// checkArgs reports whether payload decodes as the task's arguments, so
// that untyped arguments of the wrong shape fail at enqueue, not on a
// worker.
func (t *Task[A, R]) checkArgs(payload []byte) error {
	var args A
	if err := decodeJSON(payload, &args); err != nil {
		return invalid("arguments", nil, fmt.Sprintf("do not decode as %T, the arguments of %s: %v", args, t.name, err))
	}
	return nil
}

// Registrable is implemented by *Task; it lets Register take tasks of any
// argument and result types.
type Registrable interface {
	taskName() string
	taskErr() error
	taskOptions() *taskOpts
	invoke(ctx context.Context, payload []byte, maxResult int) ([]byte, error)
	checkArgs(payload []byte) error
}

func encodeArgs(v any, limit int) ([]byte, error) {
	var raw []byte
	switch x := v.(type) {
	case json.RawMessage:
		// Unmarshal, unlike json.Valid, says why: a syntax error, or
		// nesting deeper than encoding/json decodes (so no worker could).
		if err := json.Unmarshal(x, new(json.RawMessage)); err != nil {
			return nil, invalid("arguments", nil, "json.RawMessage cannot be decoded: "+err.Error())
		}
		raw = x
	default:
		var err error
		if raw, err = marshalJSON(v); err != nil {
			return nil, &ValidationError{Field: "arguments", Reason: "cannot be encoded as JSON: " + err.Error()}
		}
	}
	if len(raw) > limit {
		return nil, &TooLargeError{What: "arguments", Size: len(raw), Limit: limit}
	}
	return raw, nil
}

// marshalJSON encodes v without HTML escaping, so payloads read the same
// from any language.
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// decodeJSON decodes exactly one JSON value; trailing bytes are an error.
func decodeJSON(raw []byte, v any) error { return json.Unmarshal(raw, v) }

// Args is a convenience for EnqueueByName with positional arguments; it
// travels as a JSON array, like Celery's args.
type Args []any

// TaskInfo describes a task as stored.
type TaskInfo struct {
	ID         string
	Name       string
	Queue      string
	State      State
	Attempt    int // attempts so far (claims)
	MaxRetries int
	Priority   int
	// ETA is when a scheduled task becomes due (zero once it is due).
	ETA      time.Time
	Expires  time.Time
	Created  time.Time
	Started  time.Time // start of the latest attempt
	Finished time.Time
	// Error is the last attempt's error (with the stack for a panic), or
	// the reason the task ended.
	Error           string
	Headers         map[string]string
	UniqueKey       string
	CancelRequested bool
	Args            json.RawMessage // the encoded arguments
	Result          json.RawMessage // the encoded result, once succeeded
	// Worker is the worker run holding the task, or that ran its latest
	// attempt ("host:pid:id"; Queue.Workers describes it while it runs).
	Worker string
	// Progress is the latest value the handler reported with Progress or
	// ReportProgress (JSON), if any.
	Progress json.RawMessage
	// Attempts lists every attempt, oldest first, with its worker, times,
	// outcome and error (Info fills it; Search leaves it nil). The backend
	// keeps the first and the latest 19 of those that ended in error.
	Attempts []Attempt
	// Workflow is the id of the workflow the task is a step of (the id of
	// its last step), and Next the step that takes its result; both empty
	// for a plain task. Queue.FlowInfo lists the workflow's steps.
	Workflow string
	Next     string
}

// Attempt is one attempt of a task: who ran it, when, and how it ended.
// State is the state the attempt moved the task to (StateScheduled: a
// retry follows; StateReady: it was given back or its worker was lost), or
// StateRunning for the attempt running now.
type Attempt = transport.Attempt

// attempts lists in's attempt records and, when its latest attempt ended
// in success or still runs (which the backend does not record), that one.
func attempts(in *transport.Info) []Attempt {
	out := slices.Clone(in.Attempts)
	// The latest attempt is recorded when it ended without success. A
	// record of the same number may be an earlier claim of it that was
	// given back (a release does not use up the attempt): it started
	// before this one did.
	recorded := slices.ContainsFunc(out, func(a Attempt) bool { return a.N == in.Attempt && !a.Started.Before(in.Started) })
	if in.Attempt > 0 && !recorded &&
		(in.State == StateRunning || in.State == StateSucceeded || in.State == StateCancelled) {
		a := Attempt{N: in.Attempt, Owner: in.Owner, Started: in.Started, State: in.State}
		if in.State.Terminal() {
			a.Finished = in.Finished
		}
		out = append(out, a)
	}
	return out
}

func infoFrom(in *transport.Info) *TaskInfo {
	ti := &TaskInfo{
		ID: in.ID, Name: in.Name, Queue: in.Queue, State: in.State, Attempt: in.Attempt,
		MaxRetries: in.MaxAttempts - 1, Priority: in.Priority, ETA: in.ETA, Expires: in.Expires,
		Created: in.Created, Started: in.Started, Finished: in.Finished, Error: in.Error,
		Headers: in.Headers, UniqueKey: in.UniqueKey, CancelRequested: in.CancelRequested,
		Args: json.RawMessage(in.Payload), Worker: in.Owner, Attempts: attempts(in),
	}
	if len(in.Progress) > 0 {
		ti.Progress = json.RawMessage(in.Progress)
	}
	if in.Flow != nil {
		ti.Workflow, ti.Next = in.Flow.ID, in.Flow.Next
	}
	if len(in.Result) > 0 {
		ti.Result = json.RawMessage(in.Result)
	}
	return ti
}

// TaskContext is what a running handler can learn about its task; see
// FromContext.
type TaskContext struct {
	ID         string
	Name       string
	Queue      string
	Attempt    int // 1 for the first attempt
	MaxRetries int
	Headers    map[string]string
	// LastError is the previous attempt's error, if this is a retry.
	LastError string
}

// taskState is what a handler's ctx carries: its TaskContext, and the
// progress it reports (one allocation per attempt).
type taskState struct {
	TaskContext
	progress progress
}

type ctxKey struct{}

// FromContext returns the task a handler's ctx belongs to.
func FromContext(ctx context.Context) (TaskContext, bool) {
	ts, ok := ctx.Value(ctxKey{}).(*taskState)
	if !ok {
		return TaskContext{}, false
	}
	return ts.TaskContext, true
}

func (t *Task[A, R]) isRemote() bool { return t.remote }

// isRemote reports whether t was defined by Remote.
func isRemote(t Registrable) bool {
	r, ok := t.(interface{ isRemote() bool })
	return ok && r.isRemote()
}
