package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
)

// filterFlags are the flags that select tasks, shared by docket tasks ls
// and the bulk actions.
type filterFlags struct {
	states                        []string
	queue, name, search, idPrefix string
	since, until                  string
}

func (f *filterFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringSliceVar(&f.states, "state", nil, "only tasks in this state: "+strings.Join(docket.StateNames, ", ")+" (repeat, or separate with commas)")
	fs.StringVar(&f.queue, "queue", "", "only tasks of this queue")
	fs.StringVar(&f.name, "name", "", "only tasks of this name")
	fs.StringVar(&f.search, "search", "", "only tasks whose arguments, error or headers contain this text")
	fs.StringVar(&f.idPrefix, "id-prefix", "", "only tasks whose id starts with this")
	fs.StringVar(&f.since, "since", "", "only tasks enqueued at or after this: a duration back from now (90m, 2h, 3d) or a time (RFC 3339, 2006-01-02 15:04)")
	fs.StringVar(&f.until, "until", "", "only tasks enqueued before this (as --since)")
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return docket.StateNames, cobra.ShellCompDirectiveNoFileComp
	})
}

// set reports whether any filter flag was given.
func (f *filterFlags) set() bool {
	return len(f.states) > 0 || f.queue != "" || f.name != "" || f.search != "" || f.idPrefix != "" || f.since != "" || f.until != ""
}

// build validates the flags and returns the filter.
func (f *filterFlags) build(cmd *cobra.Command, now time.Time) (*docket.Filter, error) {
	out := &docket.Filter{Queue: f.queue, Name: f.name, Search: f.search, IDPrefix: f.idPrefix}
	for _, s := range f.states {
		s = strings.ToLower(strings.TrimSpace(s))
		if s == "" {
			continue
		}
		if !slices.Contains(docket.StateNames, s) {
			return nil, usagef(cmd, "docket: unknown state %q: want one of %s", s, strings.Join(docket.StateNames, ", "))
		}
		if !slices.Contains(out.States, s) {
			out.States = append(out.States, s)
		}
	}
	var err error
	if out.Since, err = parseTime(f.since, now); err != nil {
		return nil, usagef(cmd, "docket: --since: %v", err)
	}
	if out.Until, err = parseTime(f.until, now); err != nil {
		return nil, usagef(cmd, "docket: --until: %v", err)
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && !out.Until.After(out.Since) {
		return nil, usagef(cmd, "docket: --until (%s) must be after --since (%s)", out.Until.Local().Format(timeFormat), out.Since.Local().Format(timeFormat))
	}
	return out, nil
}

// timeLayouts are the absolute times --since, --until and --at accept;
// those without a zone are local.
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"}

// parseTime reads a time: empty for none, a duration back from now
// ("90m", "3d"), or an absolute time.
func parseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := parseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration back from now must not be negative", s)
		}
		return now.Add(-d), nil
	}
	for _, l := range timeLayouts {
		if t, err := time.ParseInLocation(l, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (90m, 2h, 3d) nor a time (2006-01-02T15:04:05Z07:00, 2006-01-02 15:04, 2006-01-02)", s)
}

// parseDuration is time.ParseDuration with days: "3d", "1d12h".
func parseDuration(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		var n int
		if _, err := fmt.Sscanf(s[:i], "%d", &n); err != nil || fmt.Sprint(n) != s[:i] {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return days + d, nil
}

// describe renders a filter for a confirmation or a message:
// "state failed, queue emails".
func describe(f *docket.Filter) string {
	var parts []string
	switch len(f.States) {
	case 0:
	case 1:
		parts = append(parts, "state "+f.States[0])
	default:
		parts = append(parts, "states "+orList(f.States))
	}
	if f.Queue != "" {
		parts = append(parts, "queue "+f.Queue)
	}
	if f.Name != "" {
		parts = append(parts, "name "+f.Name)
	}
	if f.Search != "" {
		parts = append(parts, fmt.Sprintf("containing %q", f.Search))
	}
	if f.IDPrefix != "" {
		parts = append(parts, "id "+f.IDPrefix+"…")
	}
	if !f.Since.IsZero() {
		parts = append(parts, "enqueued since "+f.Since.Local().Format(timeFormat))
	}
	if !f.Until.IsZero() {
		parts = append(parts, "enqueued before "+f.Until.Local().Format(timeFormat))
	}
	if len(parts) == 0 {
		return "every task"
	}
	return strings.Join(parts, ", ")
}
