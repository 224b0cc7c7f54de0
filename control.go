package docket

// Queues, workers and schedules, as an operator controls them (see
// admin.go for the operations API).

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
