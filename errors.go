package docket

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/docketq/docket/transport"
)

// Sentinel errors. Every error docket returns wraps one of these or is one of
// the typed errors below; test with errors.Is and errors.As.
var (
	// ErrInvalid is matched by every *ValidationError: a bad name, option or
	// argument. Nothing was written.
	ErrInvalid = transport.ErrInvalid
	// ErrUnknownTask is matched by *UnknownTaskError.
	ErrUnknownTask = errors.New("docket: unknown task")
	// ErrTooLarge is matched by *TooLargeError (it also matches ErrInvalid).
	ErrTooLarge = errors.New("docket: too large")
	// ErrDuplicate is matched by *DuplicateError: a task id or unique key
	// is taken.
	ErrDuplicate = transport.ErrDuplicate
	// ErrNotFound: no task with that id; it never existed or its result TTL
	// passed and it was pruned.
	ErrNotFound = transport.ErrNotFound
	// ErrUnsupported: the transport cannot do what was asked (for example a
	// transactional enqueue on a broker).
	ErrUnsupported = transport.ErrUnsupported
	// ErrBusy: the backend was locked by another process for longer than it
	// waits (SQLite's busy_timeout); nothing was written. Retry later.
	ErrBusy = transport.ErrBusy
	// ErrStorageFull: the backend is out of space; nothing was written.
	ErrStorageFull = transport.ErrStorageFull
	// ErrReadOnly: the backend refuses writes.
	ErrReadOnly = transport.ErrReadOnly
	// ErrOutcomeUnknown is matched by *OutcomeUnknownError: the enqueue
	// was sent but the backend's answer was lost (a connection broke
	// mid-request), so the tasks may or may not be stored. Every other
	// enqueue error means nothing was stored.
	ErrOutcomeUnknown = transport.ErrOutcomeUnknown
	// ErrIncompatible: Open found data docket cannot use (another
	// application's SQLite file, a file that is not a database, a schema
	// written by a newer docket); nothing was written.
	ErrIncompatible = transport.ErrIncompatible
	// ErrOtherDatabase: Tx was given a transaction on another database than
	// the queue's; nothing was written. It also matches ErrInvalid.
	ErrOtherDatabase = transport.ErrOtherDatabase
	// ErrClosed: the Queue, or the backend under it, was closed.
	ErrClosed = transport.ErrClosed
	// ErrRunning: Run was called while the Queue's workers already run.
	ErrRunning = errors.New("docket: workers already running")

	// ErrTaskFailed is matched by a *TaskError for a failed task.
	ErrTaskFailed = errors.New("docket: task failed")
	// ErrTaskCancelled is matched by a *TaskError for a cancelled task.
	ErrTaskCancelled = errors.New("docket: task cancelled")
	// ErrTaskExpired is matched by a *TaskError for an expired task.
	ErrTaskExpired = errors.New("docket: task expired")
)

// DuplicateError reports a taken task id or unique key; ExistingID names the
// task that holds it.
type DuplicateError = transport.DuplicateError

// OutcomeUnknownError reports an enqueue whose outcome is unknown: the
// request reached the backend, or may have, but its answer was lost. IDs
// are the ids the tasks were given. To retry without making duplicates,
// enqueue each again with TaskID(id): a task that was stored after all
// makes the retry fail with a *DuplicateError whose ExistingID is that same
// id, which means it is stored; any other outcome is the retry's own.
// RabbitMQ alone keeps no index of ids, so there a retry may run the task
// twice (handlers are idempotent anyway); with a result store it cannot.
type OutcomeUnknownError struct {
	Name string   // the task name
	IDs  []string // the ids of the tasks of the call
	Err  error    // the backend's error; it matches ErrOutcomeUnknown
}

func (e *OutcomeUnknownError) Error() string {
	ids := strings.Join(e.IDs, ", ")
	if len(e.IDs) > 3 {
		ids = fmt.Sprintf("%s and %d more", strings.Join(e.IDs[:3], ", "), len(e.IDs)-3)
	}
	return fmt.Sprintf("docket: enqueue %s (ids %s): %v", e.Name, ids, e.Err)
}

// Unwrap returns the backend's error, which matches ErrOutcomeUnknown.
func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// ValidationError reports one invalid input. It matches ErrInvalid.
type ValidationError struct {
	Field  string // what was invalid: "task name", "queue", "MaxRetries", ...
	Value  string // the offending value, quoted and shortened
	Reason string
}

func (e *ValidationError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("docket: invalid %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("docket: invalid %s %s: %s", e.Field, e.Value, e.Reason)
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(field string, value any, reason string) *ValidationError {
	var v string
	switch x := value.(type) {
	case nil:
	case string:
		v = shortQuote(x)
	default:
		v = fmt.Sprint(x)
	}
	return &ValidationError{Field: field, Value: v, Reason: reason}
}

func shortQuote(s string) string {
	const max = 80
	if len(s) > max {
		return strconv.Quote(s[:max]) + "…"
	}
	return strconv.Quote(s)
}

// UnknownTaskError reports a task name that is not registered with the
// Queue. It matches ErrUnknownTask.
type UnknownTaskError struct{ Name string }

func (e *UnknownTaskError) Error() string {
	return fmt.Sprintf("docket: task %s is not registered (call Queue.Register first)", shortQuote(e.Name))
}

// Is reports whether target is ErrUnknownTask.
func (e *UnknownTaskError) Is(target error) bool { return target == ErrUnknownTask }

// TooLargeError reports a payload, result or header set over its limit. It
// matches ErrTooLarge and ErrInvalid.
type TooLargeError struct {
	What  string // "arguments", "result", "headers"
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("docket: %s of %d bytes exceed the limit of %d bytes", e.What, e.Size, e.Limit)
}

// Is reports whether target is ErrTooLarge or ErrInvalid.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge || target == ErrInvalid }

// TaskError is what Wait returns for a task that did not succeed. It matches
// ErrTaskFailed, ErrTaskCancelled or ErrTaskExpired according to State.
type TaskError struct {
	ID      string
	Name    string
	State   State
	Attempt int
	// Message is the last attempt's error (with the stack for a panic), or
	// the reason the task ended.
	Message string
}

func (e *TaskError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.State.String()
	}
	return fmt.Sprintf("docket: task %s (%s) %s after %d attempt(s): %s", e.ID, e.Name, e.State, e.Attempt, msg)
}

// Is matches the sentinel for the task's state.
func (e *TaskError) Is(target error) bool {
	switch e.State {
	case StateFailed:
		return target == ErrTaskFailed
	case StateCancelled:
		return target == ErrTaskCancelled
	case StateExpired:
		return target == ErrTaskExpired
	}
	return false
}

// RetryError is returned by a handler (see RetryAfter) to retry after Delay
// instead of the task's backoff. The retry still counts as an attempt.
type RetryError struct {
	Delay time.Duration
	Err   error // optional cause, recorded as the attempt's error
}

func (e *RetryError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("retry in %s: %v", e.Delay, e.Err)
	}
	return fmt.Sprintf("retry in %s", e.Delay)
}

func (e *RetryError) Unwrap() error { return e.Err }

// RetryAfter returns an error that makes the current attempt retry after d
// (instead of after the task's backoff), if attempts remain.
func RetryAfter(d time.Duration) error { return &RetryError{Delay: d} }

// PermanentError wraps a handler error that must not be retried.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string {
	if e.Err == nil {
		return "permanent failure"
	}
	return e.Err.Error()
}

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying: the task fails at once.
func Permanent(err error) error { return &PermanentError{Err: err} }

// PanicError is the error recorded for an attempt whose handler panicked.
// A panic counts as a failed attempt and is retried like any error.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", e.Value, e.Stack) }
