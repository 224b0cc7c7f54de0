package docket

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/docketq/docket/transport"
)

// Schedule tells when a periodic task runs: Next returns the first slot
// strictly after t, or the zero time for "never". Use Cron or Every, or any
// type with such a method. Next must be deterministic, since every process
// running the scheduler must agree on the slots.
type Schedule interface {
	Next(t time.Time) time.Time
}

// Cron parses a cron spec with github.com/robfig/cron/v3 syntax: five
// fields (minute hour day-of-month month day-of-week), or six with a leading
// seconds field; descriptors such as @daily, @hourly and @every 90s; and an
// optional CRON_TZ=Zone (or TZ=Zone) prefix. Without a zone the spec runs in
// UTC (or the zone given by the TimeZone schedule option), never in the
// host's local zone.
//
// Slots are wall-clock times in the zone. A slot that falls in a
// spring-forward gap (02:30 on the night clocks jump from 02:00 to 03:00)
// runs once, at the end of the gap; slots that map to the same instant run
// once. A slot in a fall-back repeat (01:30 when 01:00–02:00 happens twice)
// runs once, at its first occurrence. @every intervals are aligned to the
// Unix epoch, so every process computes the same slots.
//
// An invalid spec is reported by Queue.Schedule, never by a panic.
func Cron(spec string) Schedule {
	c := &cronSchedule{spec: spec}
	c.err = c.parse()
	return c
}

type cronSchedule struct {
	spec  string
	zone  string // from the CRON_TZ= prefix
	loc   *time.Location
	inner *cron.SpecSchedule // evaluated on wall-clock times expressed in UTC
	every *everySchedule     // @every
	err   error
}

var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func (c *cronSchedule) parse() (err error) {
	defer func() {
		if r := recover(); r != nil { // the parser must never take the process down
			err = invalid("cron spec", c.spec, fmt.Sprint(r))
		}
	}()
	spec := strings.TrimSpace(c.spec)
	if spec == "" {
		return invalid("cron spec", c.spec, "is empty")
	}
	if len(spec) > 256 {
		return invalid("cron spec", c.spec, "longer than 256 bytes")
	}
	for _, prefix := range []string{"CRON_TZ=", "TZ="} {
		if rest, ok := strings.CutPrefix(spec, prefix); ok {
			zone, body, found := strings.Cut(rest, " ")
			if !found || strings.TrimSpace(body) == "" {
				return invalid("cron spec", c.spec, "has a time zone but no schedule")
			}
			c.zone, spec = zone, strings.TrimSpace(body)
			break
		}
	}
	if c.zone != "" {
		loc, err := loadZone(c.zone)
		if err != nil {
			return err
		}
		c.loc = loc
	}
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		dur, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil {
			return invalid("cron spec", c.spec, "bad @every duration: "+err.Error())
		}
		e := Every(dur).(*everySchedule)
		if e.err != nil {
			return e.err
		}
		c.every = e
		return nil
	}
	s, err := cronParser.Parse(spec)
	if err != nil {
		return invalid("cron spec", c.spec, err.Error())
	}
	inner, ok := s.(*cron.SpecSchedule)
	if !ok {
		return invalid("cron spec", c.spec, "unsupported schedule form")
	}
	inner.Location = time.UTC // wall-clock arithmetic; the zone is applied by Next
	c.inner = inner
	if c.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return invalid("cron spec", c.spec, "never fires")
	}
	return nil
}

func loadZone(name string) (*time.Location, error) {
	if name == "" || name == "Local" {
		return nil, invalid("time zone", name, "name an IANA zone such as Europe/London; the host's local zone is not allowed")
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, invalid("time zone", name, "unknown: "+err.Error())
	}
	return loc, nil
}

// Err reports why the spec is invalid.
func (c *cronSchedule) Err() error { return c.err }

// String returns the spec.
func (c *cronSchedule) String() string { return "cron:" + c.spec }

func (c *cronSchedule) location() *time.Location {
	if c.loc != nil {
		return c.loc
	}
	return time.UTC
}

// Next implements Schedule.
func (c *cronSchedule) Next(t time.Time) time.Time {
	switch {
	case c.err != nil:
		return time.Time{}
	case c.every != nil:
		return c.every.Next(t)
	}
	loc := c.location()
	w := wallClock(t, loc)
	// Walk wall-clock slots; map each to an instant; the first instant after
	// t is the answer. Several wall slots can map to one instant (in a gap),
	// and a repeated wall hour maps to its first occurrence, which may be
	// before t: both are skipped.
	for range 10_000 {
		w = c.inner.Next(w)
		if w.IsZero() {
			return w
		}
		if at := instantOf(w, loc); at.After(t) {
			return at
		}
	}
	return time.Time{}
}

// wallClock returns t's wall-clock reading in loc, as a UTC time.
func wallClock(t time.Time, loc *time.Location) time.Time {
	l := t.In(loc)
	y, m, d := l.Date()
	h, mi, s := l.Clock()
	return time.Date(y, m, d, h, mi, s, l.Nanosecond(), time.UTC)
}

// instantOf returns the instant at which loc's clocks read the wall time w
// (a UTC time holding the wall reading): the first such instant if the
// reading happens twice, and the end of the gap if it never happens.
func instantOf(w time.Time, loc *time.Location) time.Time {
	if loc == time.UTC {
		return w
	}
	naive := w.Unix()
	var offsets [3]int
	for i, probe := range []int64{naive - 2*86400, naive, naive + 2*86400} {
		_, offsets[i] = time.Unix(probe, 0).In(loc).Zone()
	}
	var best time.Time
	lo, hi := int64(0), int64(0)
	for i, off := range offsets {
		at := time.Unix(naive-int64(off), int64(w.Nanosecond())).UTC()
		if wallClock(at, loc).Equal(w) {
			if best.IsZero() || at.Before(best) {
				best = at
			}
		}
		if i == 0 || naive-int64(off) < lo {
			lo = naive - int64(off)
		}
		if i == 0 || naive-int64(off) > hi {
			hi = naive - int64(off)
		}
	}
	if !best.IsZero() {
		return best
	}
	// A gap: the clocks jump over w somewhere in [lo, hi]. Find the first
	// second whose reading is past w: the end of the gap.
	for lo < hi {
		mid := lo + (hi-lo)/2
		if wallClock(time.Unix(mid, 0), loc).After(w) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return time.Unix(lo, 0).UTC()
}

// Every runs a task every d (at least 10ms, whole milliseconds). Slots are
// aligned to the Unix epoch — Every(15*time.Minute) fires at :00, :15, :30
// and :45 UTC — so every process computes the same slots.
func Every(d time.Duration) Schedule {
	e := &everySchedule{d: d}
	switch {
	case d < 10*time.Millisecond:
		e.err = invalid("Every", d, "interval must be at least 10ms")
	case d%time.Millisecond != 0:
		e.err = invalid("Every", d, "interval must be whole milliseconds")
	case d > maxDelay:
		e.err = invalid("Every", d, "interval must be under 100 years")
	}
	return e
}

type everySchedule struct {
	d   time.Duration
	err error
}

// Err reports an invalid interval.
func (e *everySchedule) Err() error { return e.err }

// String describes the interval.
func (e *everySchedule) String() string { return "every:" + e.d.String() }

// Next implements Schedule.
func (e *everySchedule) Next(t time.Time) time.Time {
	if e.err != nil {
		return time.Time{}
	}
	step := e.d.Milliseconds()
	ms := t.UnixMilli()
	next := (ms/step + 1) * step
	if ms < 0 && ms%step != 0 {
		next = (ms / step) * step
	}
	return time.UnixMilli(next).UTC()
}

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
}

// Schedule registers a periodic task: every slot of sched enqueues task
// with args (which must have the task's argument type). name identifies the
// schedule across restarts and processes. Every process that calls Run with
// the same schedule takes part in firing it, and each slot fires once in
// all: the slot is recorded in the store, unique forever, in the same
// transaction that enqueues the task. The next slot is persisted, so a
// restart neither skips nor repeats one.
//
// Schedule only records the definition; Run (and Drain) fire it. Invalid
// specs, zones, names and arguments are reported here.
func (q *Queue) Schedule(name string, sched Schedule, task Registrable, args any, opts ...ScheduleOption) error {
	if err := validName("schedule name", name); err != nil {
		return err
	}
	if sched == nil {
		return invalid("schedule", name, "is nil")
	}
	if e, ok := sched.(interface{ Err() error }); ok && e.Err() != nil {
		return e.Err()
	}
	if task == nil {
		return invalid("task", name, "is nil")
	}
	if err := task.taskErr(); err != nil {
		return err
	}
	if _, ok := q.t.(transport.ScheduleStore); !ok {
		hint := ""
		if _, broker := q.t.(transport.ResultStorer); broker {
			hint = "; give it a result store (the ResultStore option or $DOCKET_RESULT_URL)"
		}
		return fmt.Errorf("docket: schedule %q: %w: %s keeps no schedule state shared by every process%s", name, ErrUnsupported, q, hint)
	}
	var o scheduleOpts
	for _, opt := range opts {
		opt(&o)
	}
	if o.grace < 0 {
		return invalid("MisfireGrace", o.grace, "must not be negative")
	}
	if o.catchUpWindow < 0 {
		return invalid("CatchUp", o.catchUpWindow, "window must not be negative")
	}
	if o.zone != "" {
		loc, err := loadZone(o.zone)
		if err != nil {
			return err
		}
		c, ok := sched.(*cronSchedule)
		if !ok {
			return invalid("TimeZone", o.zone, "applies to Cron schedules only")
		}
		if c.loc != nil && c.loc.String() != loc.String() {
			return invalid("TimeZone", o.zone, "conflicts with the spec's "+c.zone)
		}
		cc := *c
		cc.loc, cc.zone = loc, o.zone
		sched = &cc
	}
	payload, err := task.encodeAny(args, q.cfg.maxPayload)
	if err != nil {
		return err
	}
	// The definition's fingerprint: a change resets the persisted cursor.
	desc := fmt.Sprintf("%T", sched)
	if s, ok := sched.(fmt.Stringer); ok {
		desc = s.String()
	}
	if c, ok := sched.(*cronSchedule); ok && c.loc != nil {
		desc += " tz:" + c.loc.String()
	}
	// Check the fired task's options now, not at every slot.
	if _, err := buildMessages(q.now(), task.taskName(), task.taskOptions(), [][]byte{payload}, o.enqueue); err != nil {
		return err
	}
	e := &scheduleEntry{name: name, sched: sched, spec: desc + " task:" + task.taskName() + " args:" + string(payload), task: task, payload: payload, opts: o}

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
	ss, isSS := q.t.(transport.ScheduleStore)
	if !isSS {
		return nil
	}
	return ss.ScheduleDelete(ctx, transport.ScheduleDeleteParams{Now: q.now(), Name: name})
}

// ScheduleInfo describes one schedule: its definition in this process (if
// any) and its durable state.
type ScheduleInfo struct {
	Name          string
	Spec          string // the definition's description
	Task          string // the task name ("" if not defined in this process)
	NextAt        time.Time
	LastSlot      time.Time
	LastFiredAt   time.Time
	LastTaskID    string
	LastTaskState State // 0 when that task was pruned
	Defined       bool  // registered by this process
}

// Schedules lists the schedules this process defined and those in the
// store, by name.
func (q *Queue) Schedules(ctx context.Context) ([]ScheduleInfo, error) {
	byName := map[string]*ScheduleInfo{}
	q.mu.RLock()
	for name, e := range q.schedules {
		byName[name] = &ScheduleInfo{Name: name, Spec: e.spec, Task: e.task.taskName(), Defined: true, NextAt: e.sched.Next(q.now())}
	}
	q.mu.RUnlock()
	if ss, ok := q.t.(transport.ScheduleStore); ok {
		states, err := ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: q.now()})
		if err != nil && !errors.Is(err, transport.ErrUnsupported) {
			return nil, err
		}
		for _, st := range states {
			in := byName[st.Name]
			if in == nil {
				in = &ScheduleInfo{Name: st.Name, Spec: st.Spec}
				byName[st.Name] = in
			}
			in.NextAt, in.LastSlot, in.LastFiredAt = st.NextAt, st.LastSlot, st.LastFiredAt
			in.LastTaskID, in.LastTaskState = st.LastTaskID, st.LastTaskState
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
	ss, ok := q.t.(transport.ScheduleStore)
	if !ok {
		return time.Time{}, fmt.Errorf("docket: schedules: %w", ErrUnsupported)
	}
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

// fireOne brings one schedule up to now and returns its next slot.
func (q *Queue) fireOne(ctx context.Context, ss transport.ScheduleStore, e *scheduleEntry, st transport.ScheduleState, now time.Time) (time.Time, error) {
	var err error
	if st.Name == "" || st.Spec != e.spec {
		st, err = ss.ScheduleInit(ctx, transport.ScheduleInitParams{Now: now, Name: e.name, Spec: e.spec, NextAt: e.sched.Next(now)})
		if err != nil {
			return time.Time{}, err
		}
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
			opts := append([]TaskOption{
				Header("docket.schedule", e.name),
				Header("docket.slot", plan.slot.UTC().Format(time.RFC3339Nano)),
			}, e.opts.enqueue...)
			msgs, err := buildMessages(now, e.task.taskName(), e.task.taskOptions(), [][]byte{e.payload}, opts)
			if err != nil {
				return time.Time{}, err
			}
			p.Slot, p.Message = plan.slot, &msgs[0]
		}
		res, err := q.fire(ctx, ss, p)
		if err != nil {
			return time.Time{}, err
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
			return time.Time{}, fmt.Errorf("docket: schedule %s: state vanished", e.name)
		}
		st = sts[0]
	}
	return st.NextAt, nil
}

// beatLoop fires schedules while the worker runs.
func (w *worker) beatLoop() {
	defer w.loops.Done()
	q := w.q
	ctx := context.Background()
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
		next, err := q.fireDue(ctx)
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
