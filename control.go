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

// pauseRefresh is how often a worker re-reads the paused queues: a pause
// or resume reaches every worker within it (and a read's time).
const pauseRefresh = 500 * time.Millisecond

// pauseLoop keeps the worker's view of the paused queues (w.paused)
// current, reading it every pauseRefresh on its own goroutine, so that a
// slow backend never holds up a claim; a change wakes the fetch loop. A
// failed read keeps the last view, and is logged now and then.
func (w *worker) pauseLoop(a transport.Admin) {
	defer w.loops.Done()
	tick := time.NewTicker(pauseRefresh)
	defer tick.Stop()
	failures := 0
	for {
		select {
		case <-w.quitLoops:
			return
		case <-tick.C:
		}
		err := w.readPaused(a)
		switch {
		case err == nil:
			failures = 0
		case errors.Is(err, context.Canceled):
		default:
			failures++
			if failures == 1 || failures%100 == 0 {
				w.q.cfg.logger.Warn("docket: could not read paused queues", "err", err, "failures", failures)
			}
		}
	}
}

// readPaused reads the paused queues into w.paused, and wakes the fetch
// loop when they changed.
func (w *worker) readPaused(a transport.Admin) error {
	ctx, cancel := w.call(5 * time.Second)
	defer cancel()
	ps, err := a.Paused(ctx, transport.PausedParams{Now: w.q.now()})
	if err != nil {
		return err
	}
	names := make([]string, len(ps))
	for i, x := range ps {
		names[i] = x.Queue
	}
	sort.Strings(names)
	if old := w.paused.Load(); old != nil && slices.Equal(*old, names) {
		return nil
	}
	w.paused.Store(&names)
	select {
	case w.freed <- struct{}{}:
	default:
	}
	return nil
}

// pausedNow returns the paused queues as last read.
func (w *worker) pausedNow() []string {
	if p := w.paused.Load(); p != nil {
		return *p
	}
	return nil
}

// claimable returns the worker's queues, in this claim's order, without
// the paused ones.
func (w *worker) claimable(paused []string) []string {
	qs := w.queueOrder()
	if len(paused) == 0 {
		return qs
	}
	return slices.DeleteFunc(qs, func(s string) bool { return slices.Contains(paused, s) })
}
