package amqp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/docketq/docket/transport"
)

// With a result store, the operations API is the store's: it keeps every
// task's state, the paused queues, the worker registry and the schedules.
// What the broker adds is delivery: a task an action makes ready (a retry,
// a run-now) needs a message, and the broker has none (a finished task's
// was acknowledged; a scheduled one's waits in a delay level until its
// time).
//
// Act publishes those messages first, each marked with actedHeader, and
// then applies the action in the store, as Enqueue publishes before it
// records. A marked copy delivered before the store changed state (the
// task still final, or still scheduled) goes round the delay levels and is
// asked about again, for up to giveUpAfter; a copy whose task the action
// skipped is then dropped. So a task the store made ready always has a
// message, and an action that fails halfway leaves at most a few copies to
// be dropped. The scheduled task's old copy still arrives at its time and
// is dropped, as any copy of a task that ran.

// actedHeader marks a message published for an action (see above); its
// value is the action's time in Unix milliseconds.
const actedHeader = "docket.acted"

var (
	_ transport.Admin         = (*stored)(nil)
	_ transport.ScheduleAdmin = (*stored)(nil)
)

// Stats implements transport.Stater, from the store.
func (st *stored) Stats(ctx context.Context, p transport.StatsParams) (transport.Stats, error) {
	return st.admin.Stats(ctx, p)
}

// Search implements transport.Admin, from the store.
func (st *stored) Search(ctx context.Context, p transport.SearchParams) (transport.SearchResult, error) {
	return st.admin.Search(ctx, p)
}

// Paused implements transport.Admin, from the store.
func (st *stored) Paused(ctx context.Context, p transport.PausedParams) ([]transport.QueuePause, error) {
	return st.admin.Paused(ctx, p)
}

// SetPaused implements transport.Admin, in the store. A paused queue's
// messages still arrive at a worker's consumer (up to its prefetch); the
// worker does not start them until the queue is resumed.
func (st *stored) SetPaused(ctx context.Context, p transport.SetPausedParams) error {
	return st.admin.SetPaused(ctx, p)
}

// Heartbeat implements transport.Admin, in the store.
func (st *stored) Heartbeat(ctx context.Context, p transport.HeartbeatParams) error {
	return st.admin.Heartbeat(ctx, p)
}

// Workers implements transport.Admin, from the store.
func (st *stored) Workers(ctx context.Context, p transport.WorkersParams) ([]transport.WorkerInfo, error) {
	return st.admin.Workers(ctx, p)
}

// SetProgress implements transport.Admin, in the store.
func (st *stored) SetProgress(ctx context.Context, p transport.ProgressParams) (transport.ProgressResult, error) {
	return st.admin.SetProgress(ctx, p)
}

// Act implements transport.Admin: see the comment at the top of this file.
// A cancel is also broadcast to running handlers, as Cancel does.
//
// Two actions are narrower than on a store alone. A retry or run-now
// applies only to the tasks whose copy was published (a task that was
// running when the copies were made is skipped, not made ready without a
// message), and never to a record of a message a worker gave up (its
// producer was told nothing was enqueued). A delete applies only to
// finished tasks: an unfinished one still has a message in RabbitMQ,
// which would find no task and be recorded as given up; cancel it first.
func (st *stored) Act(ctx context.Context, p transport.ActParams) (transport.ActResult, error) {
	var skipped int
	switch p.Action {
	case transport.ActionRetry, transport.ActionRunNow, transport.ActionDelete:
		ids, n, err := st.actable(ctx, p)
		if err != nil {
			return transport.ActResult{}, fmt.Errorf("docket: amqp: %s: nothing changed: %w", p.Action, err)
		}
		p.IDs, skipped = ids, n
	}
	if len(p.IDs) == 0 {
		return transport.ActResult{Skipped: skipped}, nil
	}
	res, err := st.admin.Act(ctx, p)
	res.Skipped += skipped
	if err == nil && len(res.Changed) > 0 {
		st.kickRelay() // a step's end may make the next step ready
	}
	if err != nil || p.Action != transport.ActionCancel || len(res.Changed) == 0 {
		return res, err
	}
	// Some of the cancelled tasks may be running: tell their handlers.
	st.revoke(res.Changed)
	return res, st.broadcastCancel(ctx, res.Changed)
}

// actable returns the ids of p the store may act on (see Act), and how
// many it skipped; for a retry or run-now, it publishes a marked message
// for each of them first. Unknown ids are kept, for the store to count.
func (st *stored) actable(ctx context.Context, p transport.ActParams) ([]string, int, error) {
	var ids []string
	var msgs []transport.Message
	skipped := 0
	stamp := strconv.FormatInt(p.Now.UnixMilli(), 10)
	for _, id := range p.IDs {
		in, err := st.store.Get(ctx, transport.GetParams{Now: p.Now, ID: id})
		switch {
		case errors.Is(err, transport.ErrNotFound):
			ids = append(ids, id)
			continue
		case err != nil:
			return nil, 0, err
		case !p.Action.Applies(in.State) || in.Headers[givenUpHeader] != "",
			p.Action == transport.ActionDelete && !in.State.Terminal():
			skipped++
			continue
		}
		ids = append(ids, id)
		if p.Action == transport.ActionDelete {
			continue
		}
		m := in.Message
		m.ETA = time.Time{}
		m.Headers = maps.Clone(m.Headers)
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		m.Headers[actedHeader] = stamp
		msgs = append(msgs, m)
	}
	if len(msgs) > 0 {
		if err := st.publishNew(ctx, p.Now, msgs); err != nil {
			return nil, 0, err
		}
	}
	return ids, skipped, nil
}

// actedPending reports whether h is an action's copy (see the top of this
// file) whose action may not have reached the store yet.
func (st *stored) actedPending(now time.Time, h *held) (bool, time.Duration) {
	raw := h.msg.Headers[actedHeader]
	if raw == "" {
		return false, 0
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return false, 0
	}
	age := now.Sub(time.UnixMilli(ms))
	return age < st.giveUpAfter, age
}

// ScheduleTrigger implements transport.ScheduleAdmin: the task is
// published, then recorded by the store (as a slot's is).
func (st *stored) ScheduleTrigger(ctx context.Context, p transport.ScheduleTriggerParams) (string, error) {
	states, err := st.sched.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: p.Now, Names: []string{p.Name}})
	if err != nil {
		return "", err
	}
	if len(states) == 1 && states[0].Template != nil {
		m := *states[0].Template
		m.ID, m.Created = p.ID, p.Now
		if err := st.publishNew(ctx, p.Now, []transport.Message{m}); err != nil {
			return "", fmt.Errorf("docket: schedule %s: %w", p.Name, unrecorded(err))
		}
	}
	return st.schedAdmin.ScheduleTrigger(ctx, p)
}

// SchedulePause implements transport.ScheduleAdmin, in the store.
func (st *stored) SchedulePause(ctx context.Context, p transport.SchedulePauseParams) error {
	return st.schedAdmin.SchedulePause(ctx, p)
}

var _ transport.Stater = (*alone)(nil)

// Stats implements transport.Stater for RabbitMQ alone: the number of
// ready messages in each queue, as the broker reports it, for the queues
// named in p (the caller's known queues) and those this process consumes.
// RabbitMQ alone keeps no other state, so every other count is left out.
func (a *alone) Stats(ctx context.Context, p transport.StatsParams) (transport.Stats, error) {
	names := map[string]bool{}
	for _, q := range p.Queues {
		names[q] = true
	}
	a.mu.Lock()
	for q := range a.queues {
		names[q] = true
	}
	a.mu.Unlock()
	s, err := a.session(ctx)
	if err != nil {
		return transport.Stats{}, err
	}
	var out transport.Stats
	for _, q := range slices.Sorted(maps.Keys(names)) {
		n, err := a.depth(ctx, s, q)
		if err != nil {
			return transport.Stats{}, err
		}
		out.Queues = append(out.Queues, transport.QueueStats{Queue: q, Counts: map[transport.State]int64{transport.StateReady: n}})
	}
	return out, nil
}

// depth declares a docket queue (a no-op when it exists, as it does for
// every process that uses it) and returns the broker's count of its ready
// messages.
func (b *broker) depth(ctx context.Context, s *session, queue string) (int64, error) {
	if err := b.declareQueue(ctx, s, queue); err != nil {
		return 0, err
	}
	qn := b.queueName(queue)
	if err := s.lockCtl(ctx); err != nil {
		return 0, b.wrap("count queue "+qn, err)
	}
	defer s.unlockCtl()
	qi, err := s.ctl.QueueDeclare(qn, true, false, false, false, b.queueArgs())
	if err != nil {
		return 0, b.wrap("count queue "+qn, err)
	}
	return int64(qi.Messages), nil
}
