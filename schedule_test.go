package docket_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones below, whatever the host has

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/longtest"
)

var dstZones = []string{"America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC"}

// minuteSpec is a cron spec over minutes and hours only, for the oracle.
type minuteSpec struct {
	spec  string
	match func(h, m int) bool
}

var dstSpecs = []minuteSpec{
	{"30 2 * * *", func(h, m int) bool { return h == 2 && m == 30 }},
	{"0 * * * *", func(h, m int) bool { return m == 0 }},
	{"*/15 * * * *", func(h, m int) bool { return m%15 == 0 }},
}

// oracleRuns derives the run instants of a spec over [from, to) from first
// principles, minute by minute: a wall-clock slot runs at the first instant
// the zone's clocks show it; slots the clocks skip (a spring-forward gap)
// run at the instant the gap ends; each instant runs once.
func oracleRuns(loc *time.Location, s minuteSpec, from, to time.Time) []time.Time {
	var runs []time.Time
	seen := map[[2]int64]bool{} // wall readings already shown
	wallKey := func(t time.Time) [2]int64 {
		l := t.In(loc)
		y, mo, d := l.Date()
		return [2]int64{int64(y*10000 + int(mo)*100 + d), int64(l.Hour()*60 + l.Minute())}
	}
	add := func(t time.Time) {
		if len(runs) == 0 || !runs[len(runs)-1].Equal(t) {
			runs = append(runs, t)
		}
	}
	prev := from.Add(-time.Minute).In(loc)
	for t := from; t.Before(to); t = t.Add(time.Minute) {
		l := t.In(loc)
		// Wall minutes strictly between prev and l were skipped (a gap).
		gapStart := time.Date(prev.Year(), prev.Month(), prev.Day(), prev.Hour(), prev.Minute(), 0, 0, time.UTC).Add(time.Minute)
		gapEnd := time.Date(l.Year(), l.Month(), l.Day(), l.Hour(), l.Minute(), 0, 0, time.UTC)
		for w := gapStart; w.Before(gapEnd); w = w.Add(time.Minute) {
			if s.match(w.Hour(), w.Minute()) {
				add(t)
			}
		}
		k := wallKey(t)
		if !seen[k] {
			seen[k] = true
			if s.match(l.Hour(), l.Minute()) {
				add(t)
			}
		}
		prev = l
	}
	return runs
}

func scheduleRuns(s docket.Schedule, from, to time.Time) []time.Time {
	var runs []time.Time
	for t := s.Next(from.Add(-time.Nanosecond)); !t.IsZero() && t.Before(to); t = s.Next(t) {
		runs = append(runs, t)
	}
	return runs
}

func perLocalDay(loc *time.Location, runs []time.Time) map[string]int {
	out := map[string]int{}
	for _, r := range runs {
		out[r.In(loc).Format("2006-01-02")]++
	}
	return out
}

// dstWindows returns the spans of 2027 the DST tests cover in loc: the
// first week and three days either side of each transition, or the whole
// year with DOCKET_TEST_LONG=1.
func dstWindows(loc *time.Location) [][2]time.Time {
	from := time.Date(2027, 1, 1, 0, 0, 0, 0, loc)
	if longtest.Enabled() {
		return [][2]time.Time{{from, time.Date(2028, 1, 1, 0, 0, 0, 0, loc)}}
	}
	windows := [][2]time.Time{{from, from.AddDate(0, 0, 7)}}
	for _, tr := range transitions(loc, 2027) {
		windows = append(windows, [2]time.Time{tr.Add(-72 * time.Hour), tr.Add(72 * time.Hour)})
	}
	return windows
}

// Slots in four zones, for specs that hit the DST gaps and repeats, match
// the minute-by-minute oracle exactly: around every transition of 2027 (a
// full year with DOCKET_TEST_LONG=1).
func TestCronDSTFullYear(t *testing.T) {
	t.Parallel()
	for _, zone := range dstZones {
		loc, _ := time.LoadLocation(zone)
		for _, w := range dstWindows(loc) {
			from, to := w[0], w[1]
			for _, s := range dstSpecs {
				got := scheduleRuns(docket.Cron("CRON_TZ="+zone+" "+s.spec), from, to)
				want := oracleRuns(loc, s, from, to)
				if !slices.EqualFunc(got, want, time.Time.Equal) {
					i := 0
					for i < len(got) && i < len(want) && got[i].Equal(want[i]) {
						i++
					}
					t.Errorf("%s %q from %v: %d runs, oracle %d; first difference at #%d: got %v want %v", zone, s.spec, at([]time.Time{from}, 0, loc), len(got), len(want), i, at(got, i, loc), at(want, i, loc))
				}
			}
		}
	}
}

func at(ts []time.Time, i int, loc *time.Location) string {
	if i < len(ts) {
		return ts[i].In(loc).Format(time.RFC3339)
	}
	return "none"
}

// The policy, day by day, on the transition days of 2027.
func TestCronDSTTransitionDays(t *testing.T) {
	t.Parallel()
	cases := []struct {
		zone, day string
		runs      [3]int // 30 2 * * *, 0 * * * *, */15 * * * *
		first     string // when the 02:30 slot runs
	}{
		{"America/New_York", "2027-03-14", [3]int{1, 23, 92}, "03:00"}, // 02:00→03:00: 02:30 runs at 03:00
		{"America/New_York", "2027-11-07", [3]int{1, 24, 96}, "02:30"}, // 01:00–02:00 twice: once each
		{"Europe/London", "2027-03-28", [3]int{1, 23, 92}, "02:30"},    // 01:00→02:00
		{"Europe/London", "2027-10-31", [3]int{1, 24, 96}, "02:30"},
		{"Australia/Lord_Howe", "2027-10-03", [3]int{1, 24, 94}, "02:30"}, // 02:00→02:30
		{"Australia/Lord_Howe", "2027-04-04", [3]int{1, 24, 96}, "02:30"}, // 02:00→01:30
		{"UTC", "2027-03-14", [3]int{1, 24, 96}, "02:30"},
	}
	for _, c := range cases {
		loc, _ := time.LoadLocation(c.zone)
		day, _ := time.ParseInLocation("2006-01-02", c.day, loc)
		end := day.AddDate(0, 0, 1)
		for i, s := range dstSpecs {
			runs := scheduleRuns(docket.Cron("CRON_TZ="+c.zone+" "+s.spec), day, end)
			if len(runs) != c.runs[i] {
				t.Errorf("%s %s %q: %d runs, want %d", c.zone, c.day, s.spec, len(runs), c.runs[i])
			}
			if i == 0 && len(runs) == 1 {
				if got := runs[0].In(loc).Format("15:04"); got != c.first {
					t.Errorf("%s %s: 02:30 ran at %s, want %s", c.zone, c.day, got, c.first)
				}
			}
		}
	}
}

// The durable path, end to end: "30 2 * * *" in each zone around every
// transition (a whole year with DOCKET_TEST_LONG=1) and the hourly and
// quarter-hourly specs across each transition (±6 hours; ±36 with
// DOCKET_TEST_LONG=1), fired by the scheduler into the store and run by
// Drain, give the oracle's slots.
func TestBeatThroughStoreMatchesOracle(t *testing.T) {
	t.Parallel()
	around := longtest.Pick(6*time.Hour, 36*time.Hour)
	for _, zone := range dstZones {
		loc, _ := time.LoadLocation(zone)
		type window struct {
			spec     minuteSpec
			from, to time.Time
		}
		var windows []window
		for _, w := range dstWindows(loc) {
			windows = append(windows, window{dstSpecs[0], w[0], w[1]})
		}
		for _, tr := range transitions(loc, 2027) {
			for _, s := range dstSpecs[1:] {
				windows = append(windows, window{s, tr.Add(-around), tr.Add(around)})
			}
		}
		for _, w := range windows {
			got := fireThrough(t, "CRON_TZ="+zone+" "+w.spec.spec, w.from, w.to)
			want := oracleRuns(loc, w.spec, w.from, w.to)
			if !slices.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("%s %q from %v: %d slots fired, oracle %d", zone, w.spec.spec, w.from, len(got), len(want))
			}
		}
	}
}

// transitions returns the instants in year where loc's offset changes.
func transitions(loc *time.Location, year int) []time.Time {
	var out []time.Time
	t := time.Date(year, 1, 1, 0, 0, 0, 0, loc)
	_, off := t.Zone()
	for end := t.AddDate(1, 0, 0); t.Before(end); t = t.Add(time.Hour) {
		if _, o := t.Zone(); o != off {
			out = append(out, t)
			off = o
		}
	}
	return out
}

// fireThrough runs a schedule from `from` to `to` on a fake clock that jumps
// to each next slot, and returns the slots whose tasks ran.
func fireThrough(t *testing.T, spec string, from, to time.Time) []time.Time {
	t.Helper()
	q, clock := dockettest.Open(t)
	var slots []time.Time
	tick := docket.NewTask("tick", func(ctx context.Context, _ struct{}) (struct{}, error) {
		tc, _ := docket.FromContext(ctx)
		slot, err := time.Parse(time.RFC3339Nano, tc.Headers["docket.slot"])
		slots = append(slots, slot)
		return struct{}{}, err
	}, docket.IgnoreResult(), docket.ResultTTL(0))
	q.Register(tick)
	clock.Set(from.Add(-time.Second))
	if err := tick.Schedule(q, "tick", docket.Cron(spec), struct{}{}); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)
	for {
		infos, err := q.Schedules(bg)
		if err != nil || len(infos) != 1 {
			t.Fatalf("Schedules = %v, %v", infos, err)
		}
		next := infos[0].NextAt
		if !next.Before(to) {
			return slots
		}
		clock.Set(next)
		dockettest.Drain(t, q)
	}
}

// A restart after downtime spanning five slots: the skip policy runs none
// of them, CatchUp runs exactly one.
func TestScheduleRestartAfterDowntime(t *testing.T) {
	t.Parallel()
	for _, catchUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("catchUp=%v", catchUp), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "beat.db")
			clock := dockettest.NewClock(time.Date(2030, 5, 1, 9, 59, 0, 0, time.UTC))
			var opts []docket.ScheduleOption
			if catchUp {
				opts = append(opts, docket.CatchUp(24*time.Hour))
			}
			open := func() (*docket.Queue, *[]string) {
				q, err := docket.Open(bg, "sqlite:"+path, docket.WithClock(clock))
				if err != nil {
					t.Fatal(err)
				}
				var ran []string
				task := docket.NewTask("report", func(ctx context.Context, _ string) (string, error) {
					tc, _ := docket.FromContext(ctx)
					ran = append(ran, tc.Headers["docket.slot"])
					return "", nil
				})
				q.Register(task)
				if err := task.Schedule(q, "hourly-report", docket.Cron("0 * * * *"), "r", opts...); err != nil {
					t.Fatal(err)
				}
				return q, &ran
			}
			q, ran := open()
			dockettest.Drain(t, q)
			clock.Set(time.Date(2030, 5, 1, 10, 0, 5, 0, time.UTC))
			dockettest.Drain(t, q)
			if len(*ran) != 1 {
				t.Fatalf("before the downtime: %d runs", len(*ran))
			}
			q.Close()

			// Down from just after 10:00 until 15:20: slots 11:00–15:00 missed.
			clock.Set(time.Date(2030, 5, 1, 15, 20, 0, 0, time.UTC))
			q, ran = open()
			defer q.Close()
			dockettest.Drain(t, q)
			want := 0
			if catchUp {
				want = 1
			}
			if len(*ran) != want {
				t.Fatalf("after the downtime: %d runs %v, want %d", len(*ran), *ran, want)
			}
			if catchUp && (*ran)[0] != "2030-05-01T15:00:00Z" {
				t.Fatalf("caught up slot %s, want the latest missed one", (*ran)[0])
			}
			// And the schedule goes on normally.
			clock.Set(time.Date(2030, 5, 1, 16, 0, 1, 0, time.UTC))
			dockettest.Drain(t, q)
			if len(*ran) != want+1 || (*ran)[want] != "2030-05-01T16:00:00Z" {
				t.Fatalf("next slot: %v", *ran)
			}
		})
	}
}

// The clock jumping forward fires at most one slot; jumping back repeats
// none.
func TestScheduleClockJumps(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	var slots []string
	task := docket.NewTask("jumpy", func(ctx context.Context, _ int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		slots = append(slots, tc.Headers["docket.slot"])
		return 0, nil
	})
	q.Register(task)
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock.Set(start.Add(-time.Second))
	task.Schedule(q, "minutely", docket.Cron("* * * * *"), 1)
	dockettest.Drain(t, q)
	for i := range 3 {
		clock.Set(start.Add(time.Duration(i)*time.Minute + 10*time.Second))
		dockettest.Drain(t, q)
	}
	if len(slots) != 3 {
		t.Fatalf("%d runs in three minutes", len(slots))
	}
	clock.Set(start.Add(24*time.Hour + 20*time.Second)) // a day forward
	dockettest.Drain(t, q)
	if len(slots) != 4 || slots[3] != "2030-01-02T00:00:00Z" {
		t.Fatalf("after jumping a day: %v", slots)
	}
	clock.Set(start.Add(90 * time.Second)) // back to the first day
	dockettest.Drain(t, q)
	for i := range 4 {
		clock.Set(start.Add(time.Duration(i)*time.Minute + 30*time.Second))
		dockettest.Drain(t, q)
	}
	// 00:02 and 00:03 of the first day: 00:02 already ran, 00:03 is new.
	if want := []string{"2030-01-01T00:00:00Z", "2030-01-01T00:01:00Z", "2030-01-01T00:02:00Z", "2030-01-02T00:00:00Z", "2030-01-01T00:03:00Z"}; !slices.Equal(slots, want) {
		t.Fatalf("after jumping back: %v, want %v", slots, want)
	}
}

func TestScheduleSkipIfRunning(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	runs := 0
	task := docket.NewTask("long.job", func(ctx context.Context, _ int) (int, error) {
		runs++
		return 0, docket.RetryAfter(90 * time.Minute) // still unfinished at the next slot
	})
	q.Register(task)
	clock.Set(time.Date(2030, 1, 1, 0, 59, 0, 0, time.UTC))
	task.Schedule(q, "hourly", docket.Every(time.Hour), 1, docket.SkipIfRunning())
	dockettest.Drain(t, q)
	clock.Set(time.Date(2030, 1, 1, 1, 0, 0, 0, time.UTC))
	dockettest.Drain(t, q) // fires 01:00
	clock.Set(time.Date(2030, 1, 1, 2, 0, 0, 0, time.UTC))
	dockettest.Drain(t, q) // 02:00 skipped: 01:00's task is waiting to retry
	infos, _ := q.Schedules(bg)
	if runs != 1 || infos[0].LastSlot != time.Date(2030, 1, 1, 1, 0, 0, 0, time.UTC) || infos[0].LastTaskState != docket.StateScheduled {
		t.Fatalf("runs %d, %+v", runs, infos[0])
	}
}

func TestScheduleValidation(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	task := docket.NewTask("s.task", func(ctx context.Context, n int) (int, error) { return n, nil })
	for _, spec := range []string{
		"", "   ", "* * *", "61 * * * *", "* 25 * * *", "*/0 * * * *", "@every 0s", "@every 5ms",
		"@every banana", "@nope", "CRON_TZ=Mars/Olympus * * * * *", "CRON_TZ=UTC", "TZ=", "TZ=Local * * * * *",
		"0 0 30 2 *", "* * * * * * *", "x y z a b", strings.Repeat("1,", 200) + "1 * * * *",
	} {
		if err := task.Schedule(q, "bad", docket.Cron(spec), 1); !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("Cron(%q): %v", spec, err)
		}
	}
	for _, d := range []time.Duration{0, -time.Second, time.Millisecond, 1500 * time.Microsecond} {
		if err := task.Schedule(q, "bad", docket.Every(d), 1); !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("Every(%v): %v", d, err)
		}
	}
	ok := docket.Cron("*/5 * * * *")
	for name, err := range map[string]error{
		"empty name":      task.Schedule(q, "", ok, 1),
		"bad name":        task.Schedule(q, "a b", ok, 1),
		"unknown zone":    task.Schedule(q, "z", ok, 1, docket.TimeZone("Nowhere/City")),
		"local zone":      task.Schedule(q, "z", ok, 1, docket.TimeZone("Local")),
		"zone on Every":   task.Schedule(q, "z", docket.Every(time.Minute), 1, docket.TimeZone("UTC")),
		"zone conflict":   task.Schedule(q, "z", docket.Cron("CRON_TZ=Europe/Paris 0 * * * *"), 1, docket.TimeZone("Asia/Tokyo")),
		"nil schedule":    task.Schedule(q, "z", nil, 1),
		"bad task option": task.Schedule(q, "z", ok, 1, docket.EnqueueWith(docket.Priority(12))),
	} {
		if !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := task.Schedule(q, "dup", ok, 1); err != nil {
		t.Fatal(err)
	}
	if err := task.Schedule(q, "dup", ok, 2); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("duplicate name: %v", err)
	}
	if err := task.Schedule(q, "dup", docket.Cron("0 * * * *"), 2, docket.Replace()); err != nil {
		t.Errorf("Replace: %v", err)
	}
	for _, spec := range []string{"@daily", "@hourly", "@every 90s", "0 30 9 * * MON-FRI", "TZ=Asia/Kolkata 0 9 * * *", "CRON_TZ=America/St_Johns 30 2 * * *"} {
		if err := task.Schedule(q, "good", docket.Cron(spec), 1, docket.Replace()); err != nil {
			t.Errorf("Cron(%q): %v", spec, err)
		}
	}
	if err := q.Unschedule(bg, "nope"); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("Unschedule unknown: %v", err)
	}
	if err := q.Unschedule(bg, "dup"); err != nil {
		t.Errorf("Unschedule: %v", err)
	}
}

// Every slots are aligned to the epoch, so processes agree on them; @every
// is the same.
func TestEveryIsAligned(t *testing.T) {
	t.Parallel()
	at := time.Date(2030, 1, 1, 10, 7, 31, 0, time.UTC)
	if got := docket.Every(15 * time.Minute).Next(at); !got.Equal(time.Date(2030, 1, 1, 10, 15, 0, 0, time.UTC)) {
		t.Fatalf("Every(15m).Next = %v", got)
	}
	if got := docket.Cron("@every 90s").Next(at); !got.Equal(time.Date(2030, 1, 1, 10, 7, 30, 0, time.UTC).Add(90 * time.Second)) {
		t.Fatalf("@every 90s Next = %v", got)
	}
}

// A non-UTC host gets the same slots: specs never use the local zone.
func TestCronIgnoresHostZone(t *testing.T) {
	orig := time.Local
	defer func() { time.Local = orig }()
	at := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	var want []time.Time
	for i, zone := range []string{"UTC", "Asia/Kolkata", "America/St_Johns"} {
		loc, _ := time.LoadLocation(zone)
		time.Local = loc
		got := scheduleRuns(docket.Cron("30 2 * * *"), at, at.AddDate(0, 0, 3))
		if i == 0 {
			want = got
		} else if !slices.EqualFunc(got, want, time.Time.Equal) {
			t.Fatalf("host zone %s changed the slots: %v vs %v", zone, got, want)
		}
	}
}

func FuzzCronSpec(f *testing.F) {
	for _, s := range []string{"* * * * *", "@every 1m", "CRON_TZ=UTC 0 0 * * *", "TZ=", "0 0 30 2 *", "*/0 * * * *", "1-2-3 * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := docket.ParseCron(spec) // must not panic
		if err != nil && !errors.Is(err, docket.ErrInvalid) {
			t.Fatalf("ParseCron(%q): %v does not wrap ErrInvalid", spec, err)
		}
		if err == nil {
			if n := s.Next(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)); n.IsZero() {
				t.Fatalf("valid spec %q never fires", spec)
			}
		}
	})
}
