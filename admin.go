package docket

import (
	"context"
	"fmt"
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
// name, in lifecycle order. "waiting" is a workflow step waiting for the
// steps before it; "retrying" is a scheduled task waiting for its next
// attempt; "scheduled" one not attempted yet.
var StateNames = []string{"waiting", "scheduled", "retrying", "ready", "running", "succeeded", "failed", "cancelled", "expired"}

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
