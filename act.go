package docket

// Acting on tasks in bulk: Queue.Act (see admin.go for the operations API).

import (
	"context"

	"github.com/docketq/docket/transport"
)

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
const actBatch = 100

// Act applies an action to tasks chosen by id or by filter. A filter is
// walked in bounded batches (100 tasks per write), so acting on a hundred
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
