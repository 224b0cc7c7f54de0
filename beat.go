package docket

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/docketq/docket/transport"
)

// step is one move of a schedule's cursor: fire slot (if not zero) and
// move the cursor to next.
type step struct {
	slot, next time.Time
	catchUp    bool
}

// plan decides the next move of a schedule whose cursor is at cursor; ok
// is false when nothing is due. Called repeatedly, it fires every on-time
// slot once, in order:
//
//   - A slot is on time if it is at most the misfire grace late. The
//     default grace is a minute, or half the gap to the following slot if
//     that is shorter, so by default at most one slot is ever on time and a
//     scheduler that wakes up late, or a clock that jumps forward, never
//     causes a burst.
//   - Slots later than that were missed. They are skipped, unless the
//     policy is CatchUp: then the latest missed slot fires once.
//   - A cursor beyond the next slot after now means the clock moved back:
//     the cursor follows it, and the store's record of fired slots keeps
//     any slot from firing twice.
func (e *scheduleEntry) plan(now, cursor time.Time) (st step, ok bool) {
	if cursor.IsZero() {
		return step{next: e.sched.Next(now)}, true
	}
	if cursor.After(now) {
		if next := e.sched.Next(now); !next.IsZero() && next.Before(cursor) {
			return step{next: next}, true // the clock moved back
		}
		return step{}, false
	}
	following := e.sched.Next(cursor)
	if now.Sub(cursor) <= e.grace(cursor, following) {
		next := following
		if next.IsZero() || next.After(now) {
			next = e.sched.Next(now)
		}
		return step{slot: cursor, next: next}, true
	}
	// The cursor slot was missed; so were all slots up to the latest one
	// before now, unless that one is on time.
	latest := e.latestSlot(now, cursor)
	if !latest.IsZero() && !latest.Equal(cursor) {
		if now.Sub(latest) <= e.grace(latest, e.sched.Next(latest)) {
			return step{next: latest}, true // skip to it; the next plan fires it
		}
	}
	next := e.sched.Next(now)
	if e.opts.catchUp && !latest.IsZero() && (e.opts.catchUpWindow == 0 || now.Sub(latest) <= e.opts.catchUpWindow) {
		return step{slot: latest, next: next, catchUp: true}, true
	}
	return step{next: next}, true
}

// grace is how late slot may fire as on time; following is the next slot.
func (e *scheduleEntry) grace(slot, following time.Time) time.Duration {
	if e.opts.graceSet {
		return e.opts.grace
	}
	g := time.Minute
	if !following.IsZero() {
		g = min(g, following.Sub(slot)/2)
	}
	return g
}

// latestSlot returns the last slot in [cursor, now] (the cursor is one),
// looking back no further than the policy could use.
func (e *scheduleEntry) latestSlot(now, cursor time.Time) time.Time {
	horizon := time.Minute
	if e.opts.graceSet {
		horizon = e.opts.grace
	}
	if e.opts.catchUp {
		horizon = e.opts.catchUpWindow
		if horizon == 0 {
			horizon = maxDelay
		}
	}
	latest, s := time.Time{}, cursor
	if from := now.Add(-horizon); from.After(cursor) {
		s = e.sched.Next(from.Add(-time.Nanosecond))
	}
	for range 1_000_000 {
		if s.IsZero() || s.After(now) {
			break
		}
		latest = s
		s = e.sched.Next(s)
	}
	return latest
}

// fireDue fires every due slot of this process's schedules and returns
// when the next one falls due (zero if none).
func (q *Queue) fireDue(ctx context.Context) (time.Time, error) {
	entries := q.scheduleEntries()
	if len(entries) == 0 {
		return time.Time{}, nil
	}
	ss := q.ss // not nil: schedule refuses a backend without one
	now := q.now()
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.name
	}
	states, err := ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: now, Names: names})
	if err != nil {
		return time.Time{}, err
	}
	byName := make(map[string]transport.ScheduleState, len(states))
	for _, st := range states {
		byName[st.Name] = st
	}
	var soonest time.Time
	var errs []error
	for _, e := range entries {
		next, err := q.fireOne(ctx, ss, e, byName[e.name], now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !next.IsZero() && (soonest.IsZero() || next.Before(soonest)) {
			soonest = next
		}
	}
	return soonest, errors.Join(errs...)
}

// message builds the task a slot of e enqueues.
func (e *scheduleEntry) message(now time.Time, extra ...TaskOption) (*transport.Message, error) {
	opts := append(append([]TaskOption{Header("docket.schedule", e.name)}, extra...), e.opts.enqueue...)
	msgs, err := buildMessages(now, e.task.taskName(), e.task.taskOptions(), [][]byte{e.payload}, opts)
	if err != nil {
		return nil, err
	}
	return &msgs[0], nil
}

// template is the message the store keeps for TriggerSchedule: a slot's
// task without its id, times (an expiry is relative to a slot) or slot.
func (e *scheduleEntry) template(now time.Time) (*transport.Message, error) {
	m, err := e.message(now)
	if err != nil {
		return nil, err
	}
	m.ID, m.ETA, m.Expires, m.Created = "", time.Time{}, time.Time{}, time.Time{}
	return m, nil
}

// queue is the queue e's tasks go to.
func (e *scheduleEntry) queue() string {
	if m, err := e.message(time.Now()); err == nil {
		return m.Queue
	}
	return ""
}

// fireOne brings one schedule up to now and returns its next slot.
func (q *Queue) fireOne(ctx context.Context, ss transport.ScheduleStore, e *scheduleEntry, st transport.ScheduleState, now time.Time) (time.Time, error) {
	var err error
	if st.Name == "" || st.Spec != e.spec || !e.inited.Load() {
		var tmpl *transport.Message
		tmpl, err = e.template(now)
		if err != nil {
			return time.Time{}, err
		}
		st, err = ss.ScheduleInit(ctx, transport.ScheduleInitParams{Now: now, Name: e.name, Spec: e.spec, NextAt: e.sched.Next(now), Template: tmpl})
		if err != nil {
			return time.Time{}, err
		}
		e.inited.Store(true)
	}
	// Each step moves the cursor once; a few steps may be needed (skip to
	// the latest slot, then fire it), and a step is retried when another
	// scheduler moved the cursor first.
	for range 64 {
		plan, due := e.plan(now, st.NextAt)
		if !due {
			return st.NextAt, nil
		}
		next := plan.next
		if next.IsZero() {
			next, _ = addDelay(now, maxDelay) // a schedule that ends: park it
		}
		p := transport.ScheduleFireParams{Now: now, Name: e.name, Cursor: st.NextAt, NextAt: next, SkipIfRunning: e.opts.skipIfRunning}
		if !plan.slot.IsZero() {
			m, err := e.message(now, Header("docket.slot", plan.slot.UTC().Format(time.RFC3339Nano)))
			if err != nil {
				return time.Time{}, err
			}
			p.Slot, p.Message = plan.slot, m
		}
		var res transport.ScheduleFireResult
		fire := func(ctx context.Context) (err error) {
			res, err = q.fire(ctx, ss, p)
			return err
		}
		if p.Message != nil {
			msgs := []transport.Message{*p.Message}
			p.Message = &msgs[0] // the middleware's headers land in p
			err = q.throughEnqueueMW(ctx, msgs, false, e.name, func(ctx context.Context) error {
				return fire(ctx)
			})
		} else {
			err = fire(ctx)
		}
		if err != nil {
			return time.Time{}, err
		}
		if res.Fired && p.Message != nil {
			q.emit(Event{Kind: EventEnqueued, ID: res.TaskID, Name: p.Message.Name, Queue: p.Message.Queue, Schedule: e.name})
		}
		if res.Advanced {
			switch {
			case res.Fired:
				q.cfg.logger.Debug("docket: schedule fired", "schedule", e.name, "slot", plan.slot, "catch_up", plan.catchUp, "task", res.TaskID)
			case !plan.slot.IsZero():
				q.cfg.logger.Info("docket: schedule slot skipped", "schedule", e.name, "slot", plan.slot, "reason", res.Skipped)
			}
			st.NextAt = next
			continue
		}
		sts, err := ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: now, Names: []string{e.name}})
		if err != nil {
			return time.Time{}, err
		}
		if len(sts) == 0 {
			return time.Time{}, fmt.Errorf("docket: schedule %s: state vanished: %w", e.name, ErrNotFound)
		}
		st = sts[0]
	}
	return st.NextAt, nil
}

// beatLoop fires schedules while the worker runs.
func (w *worker) beatLoop() {
	defer w.loops.Done()
	q := w.q
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-w.quitLoops:
			return
		case <-timer.C:
		case <-q.beatWake:
		}
		ctx, cancel := w.call(w.loopCall())
		next, err := q.fireDue(ctx)
		cancel()
		sleep := time.Second
		if err != nil {
			failures++
			if failures == 1 || failures%60 == 0 {
				q.cfg.logger.Error("docket: scheduler", "err", err)
			}
		} else {
			failures = 0
			if !next.IsZero() {
				sleep = min(sleep, max(next.Sub(q.now()), time.Millisecond))
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(sleep)
	}
}
