package transport

import (
	"context"
	"time"
)

// ScheduleStore is implemented by transports that keep periodic-task state
// durably, so that any number of processes can run the scheduler and each
// slot fires once.
//
// Each schedule has a cursor (NextAt): the instant of its next slot. Firing
// is one atomic step: check that the cursor is still where the caller read
// it, record the slot as (schedule, slot) — unique forever — enqueue the
// task, and move the cursor. A caller that lost a race learns it from
// Advanced=false and re-reads.
type ScheduleStore interface {
	// ScheduleInit creates the schedule's row with p.NextAt unless it
	// exists with the same Spec; when Spec changed, the cursor is reset to
	// p.NextAt. It returns the state after the call.
	ScheduleInit(ctx context.Context, p ScheduleInitParams) (ScheduleState, error)
	// ScheduleStates reads the state of the named schedules (all when Names
	// is empty), with the state of each one's last task.
	ScheduleStates(ctx context.Context, p ScheduleStatesParams) ([]ScheduleState, error)
	// ScheduleFire moves the cursor from p.Cursor to p.NextAt, and, when
	// p.Slot is set, records the slot and enqueues p.Message, all or nothing.
	ScheduleFire(ctx context.Context, p ScheduleFireParams) (ScheduleFireResult, error)
	// ScheduleDelete removes the schedule's state (its run history stays
	// until it ages out).
	ScheduleDelete(ctx context.Context, p ScheduleDeleteParams) error
}

// ScheduleState is the durable state of one schedule.
type ScheduleState struct {
	Name          string
	Spec          string    // the schedule's description, to notice a changed definition
	NextAt        time.Time // the cursor: the next slot
	LastSlot      time.Time // the latest slot that fired (zero: never)
	LastFiredAt   time.Time // when it fired
	LastTaskID    string
	LastTaskState State // 0 when the task is gone (pruned)
	Updated       time.Time
	Paused        bool     // slots are skipped (ScheduleAdmin)
	Template      *Message // the task each slot enqueues, as the scheduler stored it; nil if none
}

// ScheduleInitParams are the arguments of ScheduleInit.
type ScheduleInitParams struct {
	Now    time.Time
	Name   string
	Spec   string
	NextAt time.Time
	// Template is the message each slot enqueues (without ID, ETA or
	// Created), stored so that ScheduleAdmin.ScheduleTrigger can fire the
	// schedule from a process that does not define it. It is replaced on
	// every ScheduleInit; the cursor is reset only when Spec changed.
	Template *Message
}

// ScheduleStatesParams are the arguments of ScheduleStates.
type ScheduleStatesParams struct {
	Now   time.Time
	Names []string
}

// ScheduleFireParams are the arguments of ScheduleFire.
type ScheduleFireParams struct {
	Now    time.Time
	Name   string
	Cursor time.Time // the NextAt the caller read; the fire applies only if unchanged
	NextAt time.Time // the new cursor
	// Slot, when not zero, is the slot to fire: recorded as unique and
	// enqueued as Message. Zero moves the cursor only (a skipped slot).
	Slot    time.Time
	Message *Message
	// SkipIfRunning skips the slot (moving the cursor) when the schedule's
	// last task has not reached a terminal state.
	SkipIfRunning bool
	// A paused schedule (ScheduleAdmin) skips the slot the same way,
	// reporting Skipped "paused".
}

// ScheduleFireResult is the outcome of ScheduleFire.
type ScheduleFireResult struct {
	Advanced bool   // the cursor moved: this caller won
	Fired    bool   // the slot was recorded and its task enqueued
	TaskID   string // the enqueued task
	Skipped  string // why a slot was not fired ("running", "duplicate", "paused")
}

// ScheduleDeleteParams are the arguments of ScheduleDelete.
type ScheduleDeleteParams struct {
	Now  time.Time
	Name string
}
