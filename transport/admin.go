package transport

import (
	"context"
	"time"
)

// Stater is implemented by transports that can count their tasks. Every
// backend does; RabbitMQ alone knows only the ready depth of each queue
// (from the broker), and leaves the other counts out.
type Stater interface {
	Stats(ctx context.Context, p StatsParams) (Stats, error)
}

// Admin is implemented by transports that keep every task's state where an
// operator can search and change it: SQLite, Redis, and RabbitMQ with a
// result store. It is what the operations API, the command and the
// dashboard are built on.
type Admin interface {
	Stater
	// Search returns one page of tasks matching p, in id order (oldest or
	// newest first), walking an index and examining at most p.Examine
	// tasks per call. A page may hold fewer than p.Limit tasks (even none)
	// while Next is set: call again with Cursor = Next.
	Search(ctx context.Context, p SearchParams) (SearchResult, error)
	// Act applies one action to the tasks p.IDs, each in its own state
	// check; a task the action does not apply to is skipped. All ids of a
	// call are handled in one write, so callers keep batches small
	// (docket uses 100).
	Act(ctx context.Context, p ActParams) (ActResult, error)
	// Paused returns the queues that are paused.
	Paused(ctx context.Context, p PausedParams) ([]QueuePause, error)
	// SetPaused pauses or resumes a queue (idempotent). Workers stop
	// claiming from a paused queue; enqueue still works.
	SetPaused(ctx context.Context, p SetPausedParams) error
	// Heartbeat records (or, with Gone, removes) a running worker process.
	Heartbeat(ctx context.Context, p HeartbeatParams) error
	// Workers returns the worker processes whose last heartbeat has not
	// expired.
	Workers(ctx context.Context, p WorkersParams) ([]WorkerInfo, error)
	// SetProgress records a running task's progress, fenced on its lease.
	SetProgress(ctx context.Context, p ProgressParams) (ProgressResult, error)
}

// StatsParams are the arguments of Stater.Stats.
type StatsParams struct {
	Now time.Time
	// Queues names queues to include even when the backend cannot list
	// its queues (RabbitMQ alone); a backend that can lists every queue
	// with tasks and may ignore it.
	Queues []string
}

// Stats is a snapshot of a backend's tasks.
type Stats struct {
	Queues []QueueStats // every queue with tasks, by name
	// History holds the outcomes recorded per minute and queue for the
	// last hour (minutes without any are left out), oldest first; nil
	// when the backend does not keep it.
	History []MinuteStats
}

// QueueStats counts one queue's tasks.
type QueueStats struct {
	Queue string
	// Counts by state. StateScheduled counts tasks not attempted yet;
	// those waiting to retry are in Retrying. A state missing from the map
	// is unknown (RabbitMQ alone counts only StateReady).
	Counts   map[State]int64
	Retrying int64
	// OldestReady is the due time of the queue's longest-waiting ready
	// task (zero when none is ready, or unknown): now minus it is the lag.
	OldestReady time.Time
}

// MinuteStats counts the attempts that ended in one minute on one queue.
type MinuteStats struct {
	Minute    time.Time // the minute's start, UTC
	Queue     string
	Succeeded int64 // attempts that succeeded
	Failed    int64 // attempts that failed (retried or final)
}

// Order is a listing order.
type Order uint8

// Listing orders: task ids are ULIDs, so id order is enqueue order.
const (
	OldestFirst Order = iota
	NewestFirst
)

// SearchParams select tasks for Admin.Search. Empty fields match all.
type SearchParams struct {
	Now    time.Time
	Queue  string  // exact queue
	Name   string  // exact task name
	States []State // any of these; StateScheduled means not attempted yet
	// Retrying also matches scheduled tasks waiting for a retry.
	Retrying bool
	IDPrefix string
	// Since and Until bound the creation time: [Since, Until).
	Since, Until time.Time
	// Text matches tasks whose arguments, error or headers (as stored:
	// JSON and plain text) contain it, case-sensitively.
	Text   string
	Order  Order
	Cursor string // Next of the previous page; empty for the first
	Limit  int    // tasks per page; default 100, at most 1000
	// Examine bounds the tasks looked at per call (default 10,000), so a
	// search that matches little costs a bounded amount per page.
	Examine int
}

// SearchResult is one page of Admin.Search.
type SearchResult struct {
	Tasks []Info // without Attempts (Get has them)
	// Next continues the walk; empty when it reached the end.
	Next string
}

// Action is what Admin.Act does to each task.
type Action uint8

// Actions.
const (
	// ActionRetry makes a failed, cancelled or expired task ready again
	// (due now) with ActParams.Attempts more attempts: MaxAttempts becomes
	// Attempt+Attempts. Its attempt count is kept (leases stay fenced on
	// it), and its expiry, result, finish time and cancel flag are
	// cleared; its last error stays until the next attempt. A task whose
	// unique key another unfinished task now holds is skipped.
	ActionRetry Action = iota + 1
	// ActionCancel cancels a task that has not started and flags a running
	// one, as Transport.Cancel.
	ActionCancel
	// ActionDelete removes a task that is not running, nor a waiting
	// workflow step (cancel those).
	ActionDelete
	// ActionRunNow makes a scheduled or retrying task ready now.
	ActionRunNow
)

var actionNames = [...]string{"", "retry", "cancel", "delete", "run"}

// String returns the action's name.
func (a Action) String() string {
	if int(a) < len(actionNames) && a != 0 {
		return actionNames[a]
	}
	return "unknown"
}

// Applies reports whether the action applies to a task in state s.
func (a Action) Applies(s State) bool {
	switch a {
	case ActionRetry:
		return s == StateFailed || s == StateCancelled || s == StateExpired
	case ActionCancel:
		return !s.Terminal()
	case ActionDelete:
		// A waiting workflow step is cancelled, not deleted: its
		// workflow must end.
		return s != StateRunning && s != StateWaiting
	case ActionRunNow:
		return s == StateScheduled
	}
	return false
}

// ActParams are the arguments of Admin.Act.
type ActParams struct {
	Now    time.Time
	Action Action
	IDs    []string
	// Attempts is a retry's new budget, at least 1: the task may be
	// claimed this many more times.
	Attempts int
}

// ActResult reports an Act call.
type ActResult struct {
	Changed []string // ids the action applied to
	// Skipped counts tasks in a state the action does not apply to (or,
	// for a retry, whose unique key is taken); Missing, unknown ids.
	Skipped, Missing int
}

// PausedParams are the arguments of Admin.Paused.
type PausedParams struct {
	Now time.Time
}

// QueuePause is a paused queue.
type QueuePause struct {
	Queue string
	Since time.Time
}

// SetPausedParams are the arguments of Admin.SetPaused.
type SetPausedParams struct {
	Now    time.Time
	Queue  string
	Paused bool
}

// WorkerInfo describes a running worker process.
type WorkerInfo struct {
	ID          string // the worker's run id (the Owner of its leases)
	Host        string
	PID         int
	Queues      []string // empty: every queue with a registered task
	Concurrency int
	Busy        int // tasks running now
	Started     time.Time
	Heartbeat   time.Time
	Expires     time.Time // forgotten after this without a heartbeat
	Version     string    // docket's module version
}

// HeartbeatParams are the arguments of Admin.Heartbeat.
type HeartbeatParams struct {
	Now    time.Time
	Worker WorkerInfo // Heartbeat and Expires set by the caller
	Gone   bool       // the worker stopped: remove it
}

// WorkersParams are the arguments of Admin.Workers.
type WorkersParams struct {
	Now time.Time
}

// ProgressParams are the arguments of Admin.SetProgress.
type ProgressParams struct {
	Now   time.Time
	Lease Lease
	Value []byte // JSON, small (docket bounds it)
}

// ProgressResult reports a SetProgress call.
type ProgressResult struct {
	Lost bool // the lease is no longer held; nothing was written
}

// Attempt records one attempt that ended without success, in
// Info.Attempts. A store appends one whenever an attempt ends otherwise
// than in success: a retry, a failure, a cancel, a release at shutdown, a
// lost worker. A success is not recorded: Info's Started, Finished and
// Owner describe it.
type Attempt struct {
	N        int       // the attempt number (1 for the first)
	Owner    string    // the worker run that held it
	Started  time.Time // when it was claimed
	Finished time.Time // when it ended
	// State is the state the task moved to: StateScheduled (a retry
	// follows), StateReady (given back, or its worker was lost) or a
	// terminal state.
	State State
	Error string
}

// MaxAttemptRecords bounds Info.Attempts: a store keeps the first record
// and the latest ones, this many in all.
const MaxAttemptRecords = 20

// ScheduleAdmin is implemented by schedule stores that can pause a
// schedule and fire it out of turn.
type ScheduleAdmin interface {
	// SchedulePause pauses or resumes a schedule: a paused schedule's
	// slots are skipped (the cursor still moves) by every scheduler.
	SchedulePause(ctx context.Context, p SchedulePauseParams) error
	// ScheduleTrigger enqueues the schedule's task now, from the template
	// the scheduler stored, as a one-off that leaves the cursor alone.
	ScheduleTrigger(ctx context.Context, p ScheduleTriggerParams) (string, error)
}

// SchedulePauseParams are the arguments of ScheduleAdmin.SchedulePause.
type SchedulePauseParams struct {
	Now    time.Time
	Name   string
	Paused bool
}

// ScheduleTriggerParams are the arguments of ScheduleAdmin.ScheduleTrigger.
type ScheduleTriggerParams struct {
	Now time.Time
	// Name is the schedule; ID the new task's id.
	Name, ID string
}

// Search bounds: the defaults and limits of SearchParams.Limit and
// Examine.
const (
	DefaultSearchLimit   = 100
	MaxSearchLimit       = 1000
	DefaultSearchExamine = 10_000
)

// Bounds returns p's page size and examination bound, defaults applied.
func (p *SearchParams) Bounds() (limit, examine int) {
	limit, examine = p.Limit, p.Examine
	if limit <= 0 {
		limit = DefaultSearchLimit
	}
	if examine <= 0 {
		examine = DefaultSearchExamine
	}
	return min(limit, MaxSearchLimit), examine
}
