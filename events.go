package docket

import (
	"context"
	"log/slog"
	"time"

	"github.com/docketq/docket/transport"
)

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds. Every attempt a worker of this process starts ends in
// exactly one of EventSucceeded, EventRetried, EventFailed, EventCancelled,
// EventReleased or EventLeaseLost.
const (
	// EventEnqueued: this process stored a task (an enqueue, or a slot
	// its scheduler fired). A task enqueued in a transaction is reported
	// when the enqueue returns, before the transaction commits.
	EventEnqueued EventKind = iota + 1
	// EventSucceeded: an attempt succeeded, and the result was recorded.
	EventSucceeded
	// EventRetried: an attempt failed, and the task will run again.
	EventRetried
	// EventFailed: the task failed for good: its last attempt failed, its
	// error was permanent, or (found by a claim) its worker was lost in
	// its last attempt.
	EventFailed
	// EventCancelled: the task was cancelled while it ran, or a claim
	// found it cancelled (its worker was lost after a cancel was asked;
	// on RabbitMQ, a cancel of a task not yet started).
	EventCancelled
	// EventExpired: a claim found the task past its expiry before it
	// started.
	EventExpired
	// EventReleased: the worker gave the task back at shutdown without
	// using up the attempt (it had not started, or its handler stopped
	// when the grace period ended).
	EventReleased
	// EventLeaseLost: the worker lost the task's lease (it could not renew
	// it in time); another worker may run the task, and this attempt's
	// outcome was discarded.
	EventLeaseLost
)

var eventNames = [...]string{"", "enqueued", "succeeded", "retried", "failed", "cancelled", "expired", "released", "lease_lost"}

// String returns the event kind's name ("succeeded", "lease_lost", ...),
// as used in metric labels.
func (k EventKind) String() string {
	if int(k) < len(eventNames) && k != 0 {
		return eventNames[k]
	}
	return "unknown"
}

// Event reports a step in a task's life seen by this process: for logs
// and metrics. Events of a worker's attempts are reported once their
// outcome is recorded; those a claim finds (expired, worker lost) when the
// claim returns.
type Event struct {
	Kind  EventKind
	ID    string
	Name  string
	Queue string
	// Attempt is the attempt that ended (0 for EventEnqueued, and for a
	// task that expired before it ever ran).
	Attempt int
	// Started and Runtime: when the attempt's handler started and how
	// long it ran (zero for events without an attempt run here).
	Started time.Time
	Runtime time.Duration
	// Error is the attempt's error, or the reason the task ended.
	Error string
	// RetryAt is when a retried task runs again.
	RetryAt time.Time
	// InTx and Schedule describe an EventEnqueued: enqueued in a caller's
	// transaction, or fired by the named schedule.
	InTx     bool
	Schedule string
}

// OnEvent calls fn for every Event of this Queue, synchronously, on the
// goroutine that records outcomes, claims, enqueues or fires a schedule:
// fn is called from several goroutines at once, must be quick and must not
// block (count, log, or hand the event to a channel of its own). An
// attempt's event comes before the Queue announces the outcome to its own
// waiters (a Wait that hears of it from the backend first, by a change
// poll or a broker's push, may return a moment earlier). Several OnEvent
// options all receive every event, in order; a panic in fn is logged at
// Error and goes no further.
func OnEvent(fn func(Event)) Option {
	return func(c *config) {
		if c.check(fn != nil, invalid("OnEvent", nil, "function is nil")) {
			c.onEvent = append(c.onEvent, fn)
		}
	}
}

// emit hands e to the OnEvent hooks and logs it: a healthy Queue logs
// nothing at Info, so successes and releases go to Debug, retries,
// cancels and expiries to Info, lost leases to Warn and final failures
// to Error.
func (q *Queue) emit(e Event) {
	for _, fn := range q.cfg.onEvent {
		q.callHook(fn, e)
	}
	level := e.Kind.level()
	l := q.cfg.logger
	ctx := context.Background()
	if !l.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 4)
	attrs = append(attrs, taskAttr(e.ID, e.Name, e.Queue, e.Attempt))
	if e.Runtime > 0 {
		attrs = append(attrs, slog.Duration("runtime", e.Runtime))
	}
	if e.Error != "" {
		attrs = append(attrs, slog.String("err", e.Error))
	}
	if !e.RetryAt.IsZero() {
		attrs = append(attrs, slog.Time("retry_at", e.RetryAt))
	}
	if e.Schedule != "" {
		attrs = append(attrs, slog.String("schedule", e.Schedule))
	}
	l.LogAttrs(ctx, level, "docket: task "+e.Kind.String(), attrs...)
}

// level is the level docket logs an event of kind k at.
func (k EventKind) level() slog.Level {
	switch k {
	case EventRetried, EventCancelled, EventExpired:
		return slog.LevelInfo
	case EventLeaseLost:
		return slog.LevelWarn
	case EventFailed:
		return slog.LevelError
	}
	return slog.LevelDebug
}

// quiet reports whether an event of kind k would reach no hook and no
// log line, so that the worker's hot path need not build it.
func (q *Queue) quiet(k EventKind) bool {
	return len(q.cfg.onEvent) == 0 && !q.cfg.logger.Enabled(context.Background(), k.level())
}

// callHook calls an OnEvent hook, keeping a panic in it from stopping
// the goroutine that reports.
func (q *Queue) callHook(fn func(Event), e Event) {
	defer func() {
		if v := recover(); v != nil {
			q.cfg.logger.Error("docket: an OnEvent hook panicked", taskAttr(e.ID, e.Name, e.Queue, e.Attempt), "panic", v)
		}
	}()
	fn(e)
}

// taskAttr is the group every log line about a task carries:
// task.id, task.name, task.queue and task.attempt.
func taskAttr(id, name, queue string, attempt int) slog.Attr {
	return slog.Group("task", slog.String("id", id), slog.String("name", name), slog.String("queue", queue), slog.Int("attempt", attempt))
}

// deliveryAttr is taskAttr for a delivery.
func deliveryAttr(d *transport.Delivery) slog.Attr {
	return taskAttr(d.ID, d.Name, d.Queue, d.Attempt)
}

// attemptEnded reports the recorded outcome of one attempt of d.
func (q *Queue) attemptEnded(d *transport.Delivery, out *transport.Outcome, lost bool, run attemptRun) {
	var kind EventKind
	switch {
	case lost:
		kind = EventLeaseLost
	case out.State == StateSucceeded:
		kind = EventSucceeded
	case out.State == StateScheduled:
		kind = EventRetried
	case out.State == StateReady:
		kind = EventReleased
	case out.State == StateCancelled:
		kind = EventCancelled
	default:
		kind = EventFailed
	}
	if q.quiet(kind) {
		return
	}
	e := Event{Kind: kind, ID: d.ID, Name: d.Name, Queue: d.Queue, Attempt: d.Attempt, Started: run.started, Runtime: run.runtime, Error: out.Error}
	if kind == EventRetried {
		e.RetryAt = out.RunAt
	}
	q.emit(e)
}

// claimEnded reports the tasks a claim ended instead of delivering them.
func (q *Queue) claimEnded(ended []transport.Status) {
	for _, st := range ended {
		e := Event{ID: st.ID, Name: st.Name, Queue: st.Queue, Attempt: st.Attempt}
		switch st.State {
		case StateExpired:
			e.Kind, e.Error = EventExpired, "expired before start"
		case StateCancelled:
			e.Kind, e.Error = EventCancelled, "cancelled before it ran again"
		default:
			e.Kind, e.Error = EventFailed, "worker lost in its last attempt"
		}
		q.emit(e)
	}
}

// TaskLogHandler wraps h so that every record logged with a handler's ctx
// (slog.InfoContext(ctx, ...) inside a task) carries the task's group, as
// docket's own lines do: task.id, task.name, task.queue and task.attempt.
// Records logged with any other ctx pass through unchanged.
//
//	slog.SetDefault(slog.New(docket.TaskLogHandler(slog.NewJSONHandler(os.Stderr, nil))))
func TaskLogHandler(h slog.Handler) slog.Handler { return taskLogHandler{h} }

type taskLogHandler struct{ h slog.Handler }

func (t taskLogHandler) Enabled(ctx context.Context, l slog.Level) bool { return t.h.Enabled(ctx, l) }

func (t taskLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if tc, ok := FromContext(ctx); ok {
		r = r.Clone()
		r.AddAttrs(taskAttr(tc.ID, tc.Name, tc.Queue, tc.Attempt))
	}
	return t.h.Handle(ctx, r)
}

func (t taskLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return taskLogHandler{t.h.WithAttrs(as)}
}

func (t taskLogHandler) WithGroup(name string) slog.Handler {
	return taskLogHandler{t.h.WithGroup(name)}
}
