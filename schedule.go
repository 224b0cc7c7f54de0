package docket

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/transport"
)

// ScheduleOption configures one schedule.
type ScheduleOption func(*scheduleOpts)

type scheduleOpts struct {
	zone          string
	catchUp       bool
	catchUpWindow time.Duration
	grace         time.Duration
	graceSet      bool
	skipIfRunning bool
	replace       bool
	enqueue       []TaskOption
}

// TimeZone evaluates a Cron schedule in the named IANA zone (default UTC).
// A CRON_TZ= prefix in the spec takes precedence only if it names the same
// zone; naming two different zones is an error.
func TimeZone(name string) ScheduleOption { return func(o *scheduleOpts) { o.zone = name } }

// CatchUp sets the misfire policy to run once to catch up: when slots were
// missed (the schedulers were down, or late by more than the misfire grace)
// and the latest missed slot is within window of now, it runs once — never
// once per missed slot. window zero means no limit. The default policy
// skips missed slots.
func CatchUp(window time.Duration) ScheduleOption {
	return func(o *scheduleOpts) { o.catchUp, o.catchUpWindow = true, window }
}

// MisfireGrace is how late a slot may still fire as on time; a later slot
// counts as missed. The default is one minute, or half the gap to the
// following slot if that is shorter, so that at most one slot is ever on
// time. A larger grace lets every slot of a fast schedule fire through a
// scheduler's pause, at the price of firing several at once after it.
func MisfireGrace(d time.Duration) ScheduleOption {
	return func(o *scheduleOpts) { o.grace, o.graceSet = d, true }
}

// SkipIfRunning skips a slot while the task fired for the previous slot has
// not finished (the overlap policy; the default allows overlap).
func SkipIfRunning() ScheduleOption { return func(o *scheduleOpts) { o.skipIfRunning = true } }

// Replace lets Schedule replace an existing schedule of the same name in
// this process instead of failing.
func Replace() ScheduleOption { return func(o *scheduleOpts) { o.replace = true } }

// EnqueueWith applies task options to every task the schedule fires (for
// example Expires, so a run that could not start in time is dropped).
func EnqueueWith(opts ...TaskOption) ScheduleOption {
	return func(o *scheduleOpts) { o.enqueue = append(o.enqueue, opts...) }
}

// scheduleEntry is one schedule registered in this process.
type scheduleEntry struct {
	name    string
	sched   Schedule
	spec    string // describes the definition; a change resets the cursor
	task    Registrable
	payload []byte
	opts    scheduleOpts
	// inited: this process stored the schedule's definition (its spec and
	// task template) with ScheduleInit, once per start, so the store's
	// template follows a redeploy that changed the arguments.
	inited atomic.Bool
}

// Schedule registers a periodic run of t on q: every slot of when enqueues
// t with args. name identifies the schedule across restarts and processes.
// Every process that calls Run with the same schedule takes part in firing
// it, and each slot fires once in all: the slot is recorded in the store,
// unique forever, in the same transaction that enqueues the task. The next
// slot is persisted, so a restart neither skips nor repeats one.
//
// Schedule only records the definition; Run (and Drain) fire it. Invalid
// specs, zones, names and options are reported here, and a backend that
// keeps no schedule state shared by every process (RabbitMQ without a
// result store) fails with an error wrapping ErrUnsupported.
func (t *Task[A, R]) Schedule(q *Queue, name string, when Schedule, args A, opts ...ScheduleOption) error {
	if err := t.err; err != nil {
		return err
	}
	payload, err := encodeArgs(args, q.cfg.maxPayload)
	if err != nil {
		return err
	}
	return q.schedule(name, when, t, payload, opts)
}

func (q *Queue) schedule(name string, sched Schedule, task Registrable, payload []byte, opts []ScheduleOption) error {
	if err := validName("schedule name", name); err != nil {
		return err
	}
	if sched == nil {
		return invalid("schedule", name, "is nil")
	}
	if e, ok := sched.(interface{ scheduleErr() error }); ok && e.scheduleErr() != nil {
		return e.scheduleErr()
	}
	if q.ss == nil {
		return fmt.Errorf("docket: schedule %q: %w: %s keeps no schedule state shared by every process (a broker needs a result store)", name, ErrUnsupported, q)
	}
	var o scheduleOpts
	for _, opt := range opts {
		opt(&o)
	}
	sched, err := o.check(sched)
	if err != nil {
		return err
	}
	// Check the fired task's options now, not at every slot.
	if _, err := buildMessages(q.now(), task.taskName(), task.taskOptions(), [][]byte{payload}, o.enqueue); err != nil {
		return err
	}
	e := &scheduleEntry{name: name, sched: sched, spec: fingerprint(sched) + " task:" + task.taskName() + " args:" + string(payload), task: task, payload: payload, opts: o}

	q.mu.Lock()
	defer q.mu.Unlock()
	if q.schedules == nil {
		q.schedules = map[string]*scheduleEntry{}
	}
	if _, dup := q.schedules[name]; dup && !o.replace {
		return invalid("schedule name", name, "is already scheduled (pass docket.Replace() to replace it)")
	}
	q.schedules[name] = e
	q.queues[task.taskOptions().queue] = true
	signal(q.beatWake)
	return nil
}

// check validates the options and returns sched in the TimeZone option's
// zone, if one was given.
func (o *scheduleOpts) check(sched Schedule) (Schedule, error) {
	if o.grace < 0 {
		return nil, invalid("MisfireGrace", o.grace, "must not be negative")
	}
	if o.catchUpWindow < 0 {
		return nil, invalid("CatchUp", o.catchUpWindow, "window must not be negative")
	}
	if o.zone == "" {
		return sched, nil
	}
	loc, err := loadZone(o.zone)
	if err != nil {
		return nil, err
	}
	c, ok := sched.(*cronSchedule)
	if !ok {
		return nil, invalid("TimeZone", o.zone, "applies to Cron schedules only")
	}
	if c.loc != nil && c.loc.String() != loc.String() {
		return nil, invalid("TimeZone", o.zone, "conflicts with the spec's "+c.zone)
	}
	cc := *c
	cc.loc, cc.zone = loc, o.zone
	return &cc, nil
}

// fingerprint describes a schedule's definition: a change resets the
// persisted cursor.
func fingerprint(sched Schedule) string {
	desc := fmt.Sprintf("%T", sched)
	if s, ok := sched.(fmt.Stringer); ok {
		desc = s.String()
	}
	if c, ok := sched.(*cronSchedule); ok && c.loc != nil {
		desc += " tz:" + c.loc.String()
	}
	return desc
}

// Unschedule removes a schedule from this process and deletes its durable
// state. Other processes that still define it keep firing it.
func (q *Queue) Unschedule(ctx context.Context, name string) error {
	q.mu.Lock()
	_, ok := q.schedules[name]
	delete(q.schedules, name)
	q.mu.Unlock()
	if !ok {
		return invalid("schedule name", name, "is not scheduled")
	}
	return q.ss.ScheduleDelete(ctx, transport.ScheduleDeleteParams{Now: q.now(), Name: name})
}

// ScheduleInfo describes one schedule: its definition in this process (if
// any) and its durable state.
type ScheduleInfo struct {
	Name string
	Spec string // the definition's description
	// Task and Queue are what each slot enqueues: from this process's
	// definition, or else as a scheduler stored them ("" if none did).
	Task, Queue   string
	NextAt        time.Time
	LastSlot      time.Time
	LastFiredAt   time.Time
	LastTaskID    string
	LastTaskState State // 0 when that task was pruned
	Defined       bool  // registered by this process
	Paused        bool  // slots are skipped (PauseSchedule)
}

// Schedules lists the schedules this process defined and those in the
// store, by name. It fails with ErrUnsupported on a backend that keeps no
// schedule state (RabbitMQ alone), where no schedule can be defined.
func (q *Queue) Schedules(ctx context.Context) ([]ScheduleInfo, error) {
	if q.ss == nil {
		return nil, fmt.Errorf("docket: schedules: %w: this backend keeps no shared schedule state (RabbitMQ needs a result store)", ErrUnsupported)
	}
	byName := map[string]*ScheduleInfo{}
	q.mu.RLock()
	for name, e := range q.schedules {
		byName[name] = &ScheduleInfo{Name: name, Spec: e.spec, Task: e.task.taskName(), Queue: e.queue(), Defined: true, NextAt: e.sched.Next(q.now())}
	}
	q.mu.RUnlock()
	if ss := q.ss; ss != nil {
		states, err := ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: q.now()})
		if err != nil {
			return nil, err
		}
		for _, st := range states {
			in := byName[st.Name]
			if in == nil {
				in = &ScheduleInfo{Name: st.Name, Spec: st.Spec}
				byName[st.Name] = in
			}
			in.NextAt, in.LastSlot, in.LastFiredAt = st.NextAt, st.LastSlot, st.LastFiredAt
			in.LastTaskID, in.LastTaskState, in.Paused = st.LastTaskID, st.LastTaskState, st.Paused
			if in.Task == "" && st.Template != nil {
				in.Task, in.Queue = st.Template.Name, st.Template.Queue
			}
		}
	}
	out := make([]ScheduleInfo, 0, len(byName))
	for _, in := range byName {
		out = append(out, *in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (q *Queue) scheduleEntries() []*scheduleEntry {
	q.mu.RLock()
	defer q.mu.RUnlock()
	out := make([]*scheduleEntry, 0, len(q.schedules))
	for _, e := range q.schedules {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
