package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docketq/docket/internal/textfmt"
)

// cellKey names one cell's values: a metric of a measurement, one system.
type cellKey struct{ measurement, metric, system string }

// table collects every run's values and notes.
type table struct {
	systems    []System
	values     map[cellKey][]float64
	errs       map[cellKey][]error
	notes      []string
	seen       map[string]bool
	start, end time.Time
	loads      []float64 // 1-minute load, at the start and end of each measurement process
	na         []naGroup
}

// naGroup is the measurements a system does not take part in for one
// reason: one line of notes.
type naGroup struct {
	system, reason string
	measurements   []string
}

// notApplicable records that measurement does not apply to system.
func (t *table) notApplicable(measurement, system, reason string) {
	for i := range t.na {
		g := &t.na[i]
		if g.system == system && g.reason == reason {
			if !slices.Contains(g.measurements, measurement) {
				g.measurements = append(g.measurements, measurement)
			}
			return
		}
	}
	t.na = append(t.na, naGroup{system: system, reason: reason, measurements: []string{measurement}})
}

// addLoad records one measurement process's load samples.
func (t *table) addLoad(l loadSample) {
	if l.OK {
		t.loads = append(t.loads, l.Start, l.End)
	}
}

func newTable(systems []System) *table {
	return &table{systems: systems, values: map[cellKey][]float64{}, errs: map[cellKey][]error{}, seen: map[string]bool{}}
}

func (t *table) note(s string) {
	if !t.seen[s] {
		t.seen[s] = true
		t.notes = append(t.notes, s)
	}
}

func (t *table) add(m Measurement, s System, res Result, err error) {
	for _, mt := range m.Metrics {
		k := cellKey{m.Name, mt.Key, s.Name()}
		if err != nil {
			t.errs[k] = append(t.errs[k], err)
			continue
		}
		if reason, ok := res.NA[mt.Key]; ok {
			t.errs[k] = append(t.errs[k], &NA{Reason: reason})
			t.notApplicable(fmt.Sprintf("%s (%s)", m.Name, mt.Key), s.Name(), (&NA{Reason: reason}).Error())
			continue
		}
		if v, ok := res.Values[mt.Key]; ok {
			t.values[k] = append(t.values[k], v*mt.Scale)
		}
	}
	for _, n := range res.Notes {
		t.note(fmt.Sprintf("%s, %s: %s", m.Name, s.Name(), n))
	}
	if err != nil {
		if errors.Is(err, ErrUnsupported) {
			t.notApplicable(m.Name, s.Name(), err.Error())
		} else {
			t.note(fmt.Sprintf("%s, %s: error: %s", m.Name, s.Name(), err))
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// cell renders "median (min–max)", or n/a or error.
func (t *table) cell(k cellKey) (string, float64, bool) {
	v := t.values[k]
	if len(v) == 0 {
		errs := t.errs[k]
		switch {
		case len(errs) == 0:
			return "—", 0, false
		case errors.Is(errs[0], ErrUnsupported):
			return "n/a", 0, false
		default:
			return "error", 0, false
		}
	}
	med := median(v)
	s := formatNum(med)
	lo, hi := slices.Min(v), slices.Max(v)
	if len(v) > 1 && formatNum(lo) != formatNum(hi) {
		s += " (" + formatNum(lo) + "–" + formatNum(hi) + ")"
	}
	if n := len(t.errs[k]); n > 0 {
		s += fmt.Sprintf(" [%d failed]", n)
	}
	return s, med, true
}

// formatNum prints v with about three significant digits, and thousands
// separators from 1,000 up.
func formatNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return commas(int(math.Round(v)))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

func commas(n int) string { return textfmt.Thousands(int64(n)) }

func printReport(w io.Writer, h *Harness, t *table, ms []Measurement, syss []System) {
	fmt.Fprintf(w, "## docket vs. peers (%s)\n\n", t.end.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "Command: `%s`\n\n", commandLine())
	fmt.Fprintf(w, "Run: %s to %s UTC (%s); every measurement of every system in a fresh process of the harness binary.\n\n",
		t.start.UTC().Format("2006-01-02 15:04:05"), t.end.UTC().Format("15:04:05"), t.end.Sub(t.start).Round(time.Second))
	if len(t.loads) > 0 {
		fmt.Fprintf(w, "Machine load (1-minute /proc/loadavg at the start and end of each of %d measurement processes): median %.2f, max %.2f.\n\n",
			len(t.loads)/2, median(t.loads), slices.Max(t.loads))
	}
	fmt.Fprintf(w, "Machine: %s\n\n", machine(h, syss))
	fmt.Fprintf(w, "Each cell: median of %d runs (min–max); ratio columns (\"A vs B\") compare medians and are oriented so that >1 means A, the docket system, did better (throughput: A/B; latency, cost, size, memory, CPU: B/A).\n\n", h.Runs)

	// Ratio columns: the first system against each other one, then the
	// ratioPairs present in the run.
	type pair struct{ a, b int }
	var pairs []pair
	for i := range syss[1:] {
		pairs = append(pairs, pair{0, i + 1})
	}
	index := func(name string) int {
		return slices.IndexFunc(syss, func(s System) bool { return s.Name() == name })
	}
	for _, rp := range ratioPairs {
		if a, b := index(rp[0]), index(rp[1]); a > 0 && b >= 0 {
			pairs = append(pairs, pair{a, b})
		}
	}
	header := []string{"measurement"}
	sep := []string{"---"}
	for _, s := range syss {
		header = append(header, s.Name())
		sep = append(sep, "---:")
	}
	for _, p := range pairs {
		header = append(header, syss[p.a].Name()+" vs "+syss[p.b].Name())
		sep = append(sep, "---:")
	}
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(header, " | "), strings.Join(sep, " | "))
	for _, m := range ms {
		for _, mt := range m.Metrics {
			row := []string{mt.Label}
			meds := make([]float64, len(syss))
			oks := make([]bool, len(syss))
			for i, s := range syss {
				var c string
				c, meds[i], oks[i] = t.cell(cellKey{m.Name, mt.Key, s.Name()})
				row = append(row, c)
			}
			for _, p := range pairs {
				switch {
				case !oks[p.a] || !oks[p.b]:
					row = append(row, "—")
				case mt.HigherBetter && meds[p.b] > 0:
					row = append(row, ratio(meds[p.a]/meds[p.b]))
				case !mt.HigherBetter && meds[p.a] > 0:
					row = append(row, ratio(meds[p.b]/meds[p.a]))
				default:
					row = append(row, "—")
				}
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
	}
	if len(t.notes)+len(t.na) > 0 {
		fmt.Fprintf(w, "\nNotes from this run:\n\n")
		for _, g := range t.na {
			fmt.Fprintf(w, "- %s: n/a in %s: %s\n", g.system, strings.Join(g.measurements, ", "), strings.TrimPrefix(g.reason, "n/a: "))
		}
		for _, n := range t.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
	fmt.Fprintf(w, "\nSettings: peers' poll interval %s (River FetchPollInterval, goqite PollInterval, asynq TaskCheckInterval); River FetchCooldown 1ms; docket defaults; steady row at %s tasks/s. See README.md.\n", h.Poll, commas(h.SteadyRate))
}

func ratio(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f×", r)
	case r >= 10:
		return fmt.Sprintf("%.1f×", r)
	default:
		return fmt.Sprintf("%.2f×", r)
	}
}

// machine describes where the run happened.
func machine(h *Harness, syss []System) string {
	parts := []string{fmt.Sprintf("%d CPUs (nproc %s, GOMAXPROCS %d)", runtime.NumCPU(), nproc(), runtime.GOMAXPROCS(0))}
	if m := cpuModel(); m != "" {
		parts = append(parts, "CPU "+m)
	}
	parts = append(parts, runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		var deps []string
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/riverqueue/river", "github.com/riverqueue/river/riverdriver/riversqlite", "maragu.dev/goqite", "github.com/hibiken/asynq", "modernc.org/sqlite", "github.com/rabbitmq/amqp091-go":
				deps = append(deps, d.Path+" "+d.Version)
			}
		}
		parts = append(parts, strings.Join(deps, ", "))
	}
	switch {
	case h.redis != nil:
		parts = append(parts, fmt.Sprintf("Redis %s: private server on port %d, no persistence (--save \"\" --appendonly no), flushed before each measurement", h.redis.version, h.redis.port))
	case h.RedisAddr != "":
		if v := redisVersion(h); v != "" {
			parts = append(parts, "Redis "+v+" at "+h.RedisAddr+" (-redis) db "+strconv.Itoa(h.RedisDB)+" and "+strconv.Itoa(h.RedisDB-1))
		}
	}
	usesAMQP := slices.ContainsFunc(syss, func(s System) bool { return strings.Contains(s.Name(), "amqp") })
	if b := (amqpBroker{url: h.AMQPURL}); usesAMQP && h.AMQPURL != "" {
		if v := b.version(); v != "" {
			parts = append(parts, "RabbitMQ "+v+" at "+b.where())
		}
	}
	return strings.Join(parts, "; ")
}

func nproc() string {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(raw)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func redisVersion(h *Harness) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := redisInfo(ctx, asynqSystem{addr: h.RedisAddr, db: h.RedisDB}, "server")
	if err != nil {
		return ""
	}
	return info["redis_version"]
}

// commandLine is the command that produced the report: "go run ." for a
// binary that go run built, otherwise the program as it was invoked, with
// its arguments quoted for a POSIX shell where needed.
func commandLine() string {
	prog := os.Args[0]
	if strings.Contains(prog, "go-build") {
		prog = "go run ."
	}
	parts := []string{prog}
	for _, a := range os.Args[1:] {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=,./:@+%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
