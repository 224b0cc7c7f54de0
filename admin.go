package docket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/docketq/docket/transport"
)

// The operations API: what an operator needs to see and act on tasks
// without writing a handler. The docket command and the dashboard are
// built on it. Each method needs a backend that keeps every task's state
// where it can be searched (SQLite, Redis, RabbitMQ with a result store);
// elsewhere it fails with an error wrapping ErrUnsupported that says so.

// Action is what Queue.Act does to each selected task.
type Action = transport.Action

// Actions for Queue.Act.
const (
	// ActionRetry makes a failed, cancelled or expired task ready again
	// with Target.Attempts more attempts (default 1).
	ActionRetry = transport.ActionRetry
	// ActionCancel cancels a task that has not finished, as Queue.Cancel.
	ActionCancel = transport.ActionCancel
	// ActionDelete deletes a task that is not running.
	ActionDelete = transport.ActionDelete
	// ActionRunNow makes a scheduled or retrying task due now.
	ActionRunNow = transport.ActionRunNow
)

// ParseAction returns the action named name ("retry", "cancel", "delete",
// "run").
func ParseAction(name string) (Action, error) {
	for _, a := range []Action{ActionRetry, ActionCancel, ActionDelete, ActionRunNow} {
		if a.String() == name {
			return a, nil
		}
	}
	return 0, invalid("action", name, `one of "retry", "cancel", "delete", "run"`)
}

// admin returns the backend's Admin, or an error naming what is missing.
func (q *Queue) admin(op string) (transport.Admin, error) {
	if a, ok := q.t.(transport.Admin); ok {
		return a, nil
	}
	return nil, fmt.Errorf("docket: %s: %w: this backend keeps no task state an operator can search (RabbitMQ needs a result store: the ResultStore option, or --result-url)", op, ErrUnsupported)
}

// StateNames lists the states Stats counts and Filter.States accepts by
// name, in lifecycle order. "retrying" is a scheduled task waiting for its
// next attempt; "scheduled" one not attempted yet.
var StateNames = []string{"scheduled", "retrying", "ready", "running", "succeeded", "failed", "cancelled", "expired"}

// QueueStats counts one queue's tasks.
type QueueStats struct {
	Name        string
	Paused      bool
	PausedSince time.Time
	// Counts by state name (see StateNames). A state that is missing is
	// unknown to the backend (RabbitMQ alone counts only "ready").
	Counts map[string]int64
	// OldestReady is the due time of the task that has waited longest to
	// start; Lag is how long ago that was (zero when nothing is ready).
	OldestReady time.Time
	Lag         time.Duration
}

// MinuteStats counts the attempts that ended in one minute on one queue.
type MinuteStats = transport.MinuteStats

// Stats is a snapshot of the backend's tasks, from Queue.Stats.
type Stats struct {
	At     time.Time
	Queues []QueueStats // by name; paused queues are listed even when empty
	// History holds the attempts that ended per minute and queue over the
	// last hour, oldest first; nil when the backend keeps none.
	History []MinuteStats
}

// Stats counts tasks by queue and state, with each queue's lag and the
// last hour's outcomes per minute. Every backend answers it; RabbitMQ alone
// knows only the ready depth (from the broker) of the queues this process
// knows of: those of its registered tasks, its Queues option and the
// default queue.
func (q *Queue) Stats(ctx context.Context) (*Stats, error) {
	s, ok := q.t.(transport.Stater)
	if !ok {
		return nil, fmt.Errorf("docket: stats: %w", ErrUnsupported)
	}
	now := q.now()
	raw, err := s.Stats(ctx, transport.StatsParams{Now: now, Queues: q.allQueues()})
	if err != nil {
		return nil, err
	}
	out := &Stats{At: now, History: raw.History}
	byName := map[string]*QueueStats{}
	for _, qs := range raw.Queues {
		st := QueueStats{Name: qs.Queue, Counts: map[string]int64{}, OldestReady: qs.OldestReady}
		for state, n := range qs.Counts {
			st.Counts[state.String()] = n
		}
		if _, ok := qs.Counts[transport.StateScheduled]; ok {
			st.Counts["retrying"] = qs.Retrying
		}
		if !qs.OldestReady.IsZero() {
			st.Lag = max(0, now.Sub(qs.OldestReady))
		}
		out.Queues = append(out.Queues, st)
	}
	if a, ok := q.t.(transport.Admin); ok {
		paused, err := a.Paused(ctx, transport.PausedParams{Now: now})
		if err != nil {
			return nil, err
		}
		for i := range out.Queues {
			byName[out.Queues[i].Name] = &out.Queues[i]
		}
		for _, p := range paused {
			st := byName[p.Queue]
			if st == nil {
				out.Queues = append(out.Queues, QueueStats{Name: p.Queue, Counts: map[string]int64{}})
				st = &out.Queues[len(out.Queues)-1]
				for i := range out.Queues { // the append may have moved them
					byName[out.Queues[i].Name] = &out.Queues[i]
				}
			}
			st.Paused, st.PausedSince = true, p.Since
		}
	}
	sort.Slice(out.Queues, func(i, j int) bool { return out.Queues[i].Name < out.Queues[j].Name })
	return out, nil
}

// Filter selects tasks for Queue.Search and Queue.Act. Empty fields match
// every task.
type Filter struct {
	Queue string // exact queue name
	Name  string // exact task name
	// States by name (see StateNames); any of them matches.
	States   []string
	IDPrefix string
	// Since and Until bound the time the task was enqueued: [Since, Until).
	Since, Until time.Time
	// Search matches tasks whose arguments, error or headers contain it
	// (case-sensitive, as stored: JSON and plain text).
	Search string
}

// params translates f for the backend.
func (f *Filter) params(now time.Time) (transport.SearchParams, error) {
	p := transport.SearchParams{Now: now, Queue: f.Queue, Name: f.Name, IDPrefix: f.IDPrefix, Since: f.Since, Until: f.Until, Text: f.Search}
	for _, name := range f.States {
		if name == "retrying" {
			p.Retrying = true
			continue
		}
		s, ok := transport.ParseState(name)
		if !ok {
			return p, invalid("state", name, "one of "+fmt.Sprint(StateNames))
		}
		p.States = append(p.States, s)
	}
	if !f.Until.IsZero() && !f.Since.IsZero() && !f.Until.After(f.Since) {
		return p, invalid("time range", f.Since.Format(time.RFC3339)+" to "+f.Until.Format(time.RFC3339), "an end after its start")
	}
	return p, nil
}

// SearchOptions are the arguments of Queue.Search.
type SearchOptions struct {
	Filter
	Newest bool   // newest first (default oldest first)
	Cursor string // TaskPage.Next of the previous page
	Limit  int    // tasks per page: default 100, at most 1000
}

// TaskPage is one page of Queue.Search.
type TaskPage struct {
	Tasks []*TaskInfo
	// Next continues the search where this page ended; empty at the end.
	// Paging stays correct while tasks change state: each task is seen at
	// most once, in id (enqueue) order.
	Next string
}

// searchBudget bounds the tasks one Search call examines.
const searchBudget = 100_000

// Search lists tasks matching a filter, a page at a time. It walks an
// index in enqueue order and examines a bounded number of tasks per call
// (100,000): a rare match may need several calls (a page may come back
// short, with Next set).
func (q *Queue) Search(ctx context.Context, o SearchOptions) (*TaskPage, error) {
	a, err := q.admin("search")
	if err != nil {
		return nil, err
	}
	p, err := o.Filter.params(q.now())
	if err != nil {
		return nil, err
	}
	switch {
	case o.Limit < 0 || o.Limit > 1000:
		return nil, invalid("limit", o.Limit, "between 1 and 1000 (0: 100)")
	case o.Limit == 0:
		o.Limit = 100
	}
	if o.Newest {
		p.Order = transport.NewestFirst
	}
	p.Cursor = o.Cursor
	out := &TaskPage{}
	for examined := 0; ; {
		p.Limit = o.Limit - len(out.Tasks)
		p.Examine = min(10_000, searchBudget-examined)
		res, err := a.Search(ctx, p)
		if err != nil {
			return nil, err
		}
		for i := range res.Tasks {
			out.Tasks = append(out.Tasks, infoFrom(&res.Tasks[i]))
		}
		out.Next = res.Next
		examined += p.Examine
		if res.Next == "" || len(out.Tasks) >= o.Limit || examined >= searchBudget {
			return out, nil
		}
		p.Cursor = res.Next
	}
}

// Target selects the tasks Queue.Act changes: the listed IDs, or every
// task matching Filter (not both).
type Target struct {
	IDs    []string
	Filter *Filter
	// Attempts is how many more attempts a retried task gets (default 1).
	Attempts int
	// Progress, when set, is called after each batch with the tasks
	// examined and changed so far.
	Progress func(examined, changed int)
}

// ActionResult counts what Queue.Act did.
type ActionResult struct {
	Changed int // tasks the action applied to
	Skipped int // tasks in a state the action does not apply to
	Missing int // ids that name no task
}

// actBatch is how many tasks one write of a bulk action changes: a few
// milliseconds of a SQLite writer's time, so workers are never held up
// for long.
const actBatch = 500

// Act applies an action to tasks chosen by id or by filter. A filter is
// walked in bounded batches (500 tasks per write), so acting on a hundred
// thousand tasks neither holds memory in proportion nor blocks workers
// for more than a batch; the walk is in enqueue order and each task is
// visited once. Every action checks each task's state as it applies it,
// so Act is safe to repeat: a second retry of the same filter finds the
// tasks no longer failed and skips them.
func (q *Queue) Act(ctx context.Context, action Action, t Target) (ActionResult, error) {
	var res ActionResult
	a, err := q.admin(action.String())
	if err != nil {
		return res, err
	}
	switch {
	case action < ActionRetry || action > ActionRunNow:
		return res, invalid("action", int(action), "ActionRetry, ActionCancel, ActionDelete or ActionRunNow")
	case (len(t.IDs) > 0) == (t.Filter != nil):
		return res, invalid("target", nil, "either IDs or a Filter")
	case t.Attempts < 0:
		return res, invalid("attempts", t.Attempts, "at least 1 (0: 1)")
	case t.Attempts == 0:
		t.Attempts = 1
	}
	apply := func(ids []string) error {
		r, err := a.Act(ctx, transport.ActParams{Now: q.now(), Action: action, IDs: ids, Attempts: t.Attempts})
		if err != nil {
			return err
		}
		res.Changed += len(r.Changed)
		res.Skipped += r.Skipped
		res.Missing += r.Missing
		q.announce(action, r.Changed)
		return nil
	}
	if t.Filter == nil {
		for ids := t.IDs; len(ids) > 0; {
			n := min(len(ids), actBatch)
			if err := apply(ids[:n]); err != nil {
				return res, err
			}
			ids = ids[n:]
			if t.Progress != nil {
				t.Progress(len(t.IDs)-len(ids), res.Changed)
			}
		}
		return res, nil
	}
	p, err := t.Filter.params(q.now())
	if err != nil {
		return res, err
	}
	examined := 0
	for {
		p.Limit, p.Examine = actBatch, 10_000
		page, err := a.Search(ctx, p)
		if err != nil {
			return res, err
		}
		ids := make([]string, 0, len(page.Tasks))
		for i := range page.Tasks {
			if action.Applies(page.Tasks[i].State) {
				ids = append(ids, page.Tasks[i].ID)
			} else {
				res.Skipped++
			}
		}
		examined += len(page.Tasks)
		if len(ids) > 0 {
			if err := apply(ids); err != nil {
				return res, err
			}
		}
		if t.Progress != nil {
			t.Progress(examined, res.Changed)
		}
		if page.Next == "" {
			return res, nil
		}
		p.Cursor = page.Next
	}
}

// announce tells this process's workers and waiters what an action did.
func (q *Queue) announce(action Action, ids []string) {
	if len(ids) == 0 {
		return
	}
	switch action {
	case ActionRetry, ActionRunNow:
		q.onEvent(transport.Event{Kind: transport.EventReady})
	case ActionCancel:
		// Running tasks get their handlers cancelled; waiters re-read the
		// state of the others, which ended.
		q.onEvent(transport.Event{Kind: transport.EventCancel, IDs: ids})
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: ids})
	case ActionDelete:
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: ids})
	}
}

// PauseQueue stops every worker, in every process, from starting tasks of
// the queue, within about a second; tasks already running finish, and
// enqueue still works. The pause is kept in the backend until
// ResumeQueue.
func (q *Queue) PauseQueue(ctx context.Context, name string) error {
	return q.setPaused(ctx, name, true)
}

// ResumeQueue lets workers start the queue's tasks again.
func (q *Queue) ResumeQueue(ctx context.Context, name string) error {
	return q.setPaused(ctx, name, false)
}

func (q *Queue) setPaused(ctx context.Context, name string, paused bool) error {
	if err := validName("queue", name); err != nil {
		return err
	}
	op := "pause queue"
	if !paused {
		op = "resume queue"
	}
	a, err := q.admin(op)
	if err != nil {
		return err
	}
	if err := a.SetPaused(ctx, transport.SetPausedParams{Now: q.now(), Queue: name, Paused: paused}); err != nil {
		return err
	}
	if !paused {
		q.onEvent(transport.Event{Kind: transport.EventReady, Queue: name})
	}
	return nil
}

// WorkerInfo describes a running worker process, from Queue.Workers.
type WorkerInfo = transport.WorkerInfo

// Workers lists the worker processes (Queue.Run) whose heartbeat is
// current: each records itself every few seconds and is forgotten about
// half a minute after its last heartbeat.
func (q *Queue) Workers(ctx context.Context) ([]WorkerInfo, error) {
	a, err := q.admin("workers")
	if err != nil {
		return nil, err
	}
	ws, err := a.Workers(ctx, transport.WorkersParams{Now: q.now()})
	if err != nil {
		return nil, err
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].Started.Before(ws[j].Started) })
	return ws, nil
}

func (q *Queue) scheduleAdmin(op string) (transport.ScheduleAdmin, error) {
	if sa, ok := q.t.(transport.ScheduleAdmin); ok {
		return sa, nil
	}
	return nil, fmt.Errorf("docket: %s: %w: this backend keeps no shared schedule state", op, ErrUnsupported)
}

// PauseSchedule makes every scheduler skip the schedule's slots until
// ResumeSchedule (the cursor still moves, so resuming does not fire the
// slots missed meanwhile).
func (q *Queue) PauseSchedule(ctx context.Context, name string) error {
	return q.pauseSchedule(ctx, name, true)
}

// ResumeSchedule lets a paused schedule fire again from its next slot.
func (q *Queue) ResumeSchedule(ctx context.Context, name string) error {
	return q.pauseSchedule(ctx, name, false)
}

func (q *Queue) pauseSchedule(ctx context.Context, name string, paused bool) error {
	sa, err := q.scheduleAdmin("pause schedule")
	if err != nil {
		return err
	}
	return sa.SchedulePause(ctx, transport.SchedulePauseParams{Now: q.now(), Name: name, Paused: paused})
}

// TriggerSchedule enqueues the schedule's task now, as a one-off that
// leaves its next slot alone, and returns the task's id. It works from any
// process, such as the docket command: the task and arguments are those a
// scheduler stored when it last started.
func (q *Queue) TriggerSchedule(ctx context.Context, name string) (string, error) {
	sa, err := q.scheduleAdmin("trigger schedule")
	if err != nil {
		return "", err
	}
	id, err := sa.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: q.now(), Name: name, ID: newID(q.now())})
	if err != nil {
		return "", err
	}
	q.onEvent(transport.Event{Kind: transport.EventReady})
	return id, nil
}

// EnqueueJSON submits a task by name with arguments already encoded as
// JSON, without a registered task to check them against: it is for tools
// (the docket command, the dashboard) that enqueue for workers elsewhere.
// The worker that runs it decodes the arguments; a mismatch fails the task
// there. It returns the task's id.
func (q *Queue) EnqueueJSON(ctx context.Context, name string, args json.RawMessage, opts ...TaskOption) (string, error) {
	if err := validName("task name", name); err != nil {
		return "", err
	}
	if !json.Valid(args) {
		return "", fmt.Errorf("docket: enqueue %s: %w", name, invalid("arguments", string(truncate(args, 64)), "valid JSON"))
	}
	if len(args) > q.cfg.maxPayload {
		return "", fmt.Errorf("docket: enqueue %s: %w", name, &TooLargeError{What: "arguments", Size: len(args), Limit: q.cfg.maxPayload})
	}
	defaults := defaultTaskOpts()
	ids, err := q.enqueue(ctx, nil, name, &defaults, [][]byte{args}, opts)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// pausedQueues is a worker's view of the paused queues, refreshed at most
// every pauseRefresh.
type pausedQueues struct {
	checked time.Time
	names   []string
	failed  int
}

// pauseRefresh is how often a worker re-reads the paused queues: a pause
// or resume reaches every worker within it.
const pauseRefresh = 500 * time.Millisecond

// refresh re-reads the paused queues when they are older than pauseRefresh.
// A failed read keeps the last view (and is logged now and then).
func (p *pausedQueues) refresh(w *worker) {
	a, ok := w.q.t.(transport.Admin)
	if !ok || time.Since(p.checked) < pauseRefresh {
		return
	}
	p.checked = time.Now()
	ctx, cancel := w.call(5 * time.Second)
	defer cancel()
	ps, err := a.Paused(ctx, transport.PausedParams{Now: w.q.now()})
	if err != nil {
		p.failed++
		if p.failed == 1 || p.failed%100 == 0 && !errors.Is(err, context.Canceled) {
			w.q.cfg.logger.Warn("docket: could not read paused queues", "err", err, "failures", p.failed)
		}
		return
	}
	p.failed = 0
	p.names = p.names[:0]
	for _, x := range ps {
		p.names = append(p.names, x.Queue)
	}
}

// filter removes paused queues from qs.
func (p *pausedQueues) filter(qs []string) []string {
	if len(p.names) == 0 {
		return qs
	}
	return slices.DeleteFunc(qs, func(s string) bool { return slices.Contains(p.names, s) })
}
