package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/textfmt"
)

// table writes aligned columns for people.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline in a cell would break the columns.
		cells[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON prints v indented, the format of every --json output.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// timeFormat is how absolute times print: local time, to the second.
const timeFormat = "2006-01-02 15:04:05 MST"

// ago describes t relative to now in one unit: "3m ago", "in 2h", "now".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d > -time.Second && d < time.Second:
		return "now"
	case d > 0:
		return short(d) + " ago"
	default:
		return "in " + short(-d)
	}
}

// agoLong is ago with two units ("3m12s ago"), for tasks show.
func agoLong(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d > -time.Second && d < time.Second:
		return "now"
	case d > 0:
		return long(d) + " ago"
	default:
		return "in " + long(-d)
	}
}

// short renders d in its largest unit: 45s, 3m, 2h, 4d.
func short(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// long renders d in two units: 45s, 3m12s, 2h5m, 4d3h.
func long(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// duration renders an elapsed time for people: 850ms, 1.2s, 3m12s.
func duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Millisecond:
		return d.String()
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	}
	return long(d)
}

// when renders t absolutely and relatively: "2024-05-01 03:12:09 UTC (3m ago)".
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(timeFormat) + " (" + agoLong(t, now) + ")"
}

// firstLine returns s's first non-empty line, cut to n runes.
func firstLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return truncate(s, n)
}

// truncate cuts s to n runes, ending in "…" when cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// stateName names a task's state as Filter.States does: "retrying" for a
// scheduled task waiting for another attempt.
func stateName(t *docket.TaskInfo) string {
	if t.State == docket.StateScheduled && t.Attempt > 0 {
		return "retrying"
	}
	return t.State.String()
}

// count renders an int64 with thousands separators: 12,345.
func count(n int64) string { return textfmt.Thousands(n) }

// plural returns "1 task" or "3 tasks".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return count(int64(n)) + " " + noun + "s"
}

var sparks = []rune("▁▂▃▄▅▆▇█")

// sparkline draws one character per value, scaled to the largest; a zero
// is the lowest bar, any other value at least the second.
func sparkline(vals []int64) string {
	var top int64
	for _, v := range vals {
		top = max(top, v)
	}
	hi := int64(len(sparks) - 1)
	var b strings.Builder
	for _, v := range vals {
		var i int64
		if v > 0 {
			i = min(max((v*hi+top-1)/top, 1), hi)
		}
		b.WriteRune(sparks[i])
	}
	return b.String()
}
