package docket

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
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
// Cron is for a spec written in the program: an invalid one is reported
// by Task.Schedule, never by a panic. Use ParseCron for a spec read at run
// time, to report its error where it is read.
func Cron(spec string) Schedule {
	c := &cronSchedule{spec: spec}
	c.err = c.parse()
	return c
}

// ParseCron parses spec as Cron does and returns its error, which wraps
// ErrInvalid.
func ParseCron(spec string) (Schedule, error) {
	c := &cronSchedule{spec: spec}
	if c.err = c.parse(); c.err != nil {
		return nil, c.err
	}
	return c, nil
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

// scheduleErr reports why the spec is invalid.
func (c *cronSchedule) scheduleErr() error { return c.err }

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
// and :45 UTC — so every process computes the same slots. An invalid
// interval is reported by Task.Schedule.
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

// scheduleErr reports an invalid interval.
func (e *everySchedule) scheduleErr() error { return e.err }

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
