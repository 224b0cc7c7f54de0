package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
)

// countsJSON holds one queue's counts by state, in lifecycle order; null
// when the backend does not know the count (RabbitMQ without a result
// store knows only "ready").
type countsJSON struct {
	Scheduled *int64 `json:"scheduled"`
	Retrying  *int64 `json:"retrying"`
	Ready     *int64 `json:"ready"`
	Running   *int64 `json:"running"`
	Succeeded *int64 `json:"succeeded"`
	Failed    *int64 `json:"failed"`
	Cancelled *int64 `json:"cancelled"`
	Expired   *int64 `json:"expired"`
}

// minuteJSON counts the attempts that ended in one minute.
type minuteJSON struct {
	Minute    time.Time `json:"minute"`
	Succeeded int64     `json:"succeeded"`
	Failed    int64     `json:"failed"`
}

// hourJSON sums a queue's last hour: every attempt that ended, and per
// minute (60 entries, oldest first).
type hourJSON struct {
	Processed int64        `json:"processed"`
	Succeeded int64        `json:"succeeded"`
	Failed    int64        `json:"failed"`
	PerMinute []minuteJSON `json:"per_minute"`
}

// queueJSON is one queue in docket stats --json and docket queues --json.
type queueJSON struct {
	Name        string     `json:"name"`
	Counts      countsJSON `json:"counts"`
	LagSeconds  float64    `json:"lag_seconds"`
	OldestReady *time.Time `json:"oldest_ready"`
	// Paused is null when the backend keeps no pauses (RabbitMQ without a
	// result store).
	Paused      *bool      `json:"paused"`
	PausedSince *time.Time `json:"paused_since"`
	// LastHour is null when the backend keeps no history.
	LastHour *hourJSON `json:"last_hour"`
}

// statsJSON is docket stats --json.
type statsJSON struct {
	At     time.Time   `json:"at"`
	Queues []queueJSON `json:"queues"`
	// LastHour sums every queue; null when the backend keeps no history.
	LastHour *hourJSON `json:"last_hour"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// hours folds the history into 60 minutes per queue (and "" for all),
// oldest first, ending with the minute of at.
func hours(st *docket.Stats) map[string]*hourJSON {
	if st.History == nil {
		return nil
	}
	end := st.At.UTC().Truncate(time.Minute)
	start := end.Add(-59 * time.Minute)
	out := map[string]*hourJSON{}
	get := func(q string) *hourJSON {
		h := out[q]
		if h == nil {
			h = &hourJSON{PerMinute: make([]minuteJSON, 60)}
			for i := range h.PerMinute {
				h.PerMinute[i].Minute = start.Add(time.Duration(i) * time.Minute)
			}
			out[q] = h
		}
		return h
	}
	get("")
	for _, q := range st.Queues {
		get(q.Name)
	}
	for _, m := range st.History {
		i := int(m.Minute.UTC().Sub(start) / time.Minute)
		if i < 0 || i >= 60 {
			continue
		}
		for _, h := range []*hourJSON{get(m.Queue), get("")} {
			h.PerMinute[i].Succeeded += m.Succeeded
			h.PerMinute[i].Failed += m.Failed
			h.Succeeded += m.Succeeded
			h.Failed += m.Failed
			h.Processed += m.Succeeded + m.Failed
		}
	}
	return out
}

func queueOut(q *docket.QueueStats, hour map[string]*hourJSON) queueJSON {
	c := func(state string) *int64 {
		if n, ok := q.Counts[state]; ok {
			return &n
		}
		return nil
	}
	var p *bool
	if pausedKnown(q) {
		p = &q.Paused
	}
	return queueJSON{
		Name: q.Name,
		Counts: countsJSON{
			Scheduled: c("scheduled"), Retrying: c("retrying"), Ready: c("ready"), Running: c("running"),
			Succeeded: c("succeeded"), Failed: c("failed"), Cancelled: c("cancelled"), Expired: c("expired"),
		},
		LagSeconds:  q.Lag.Seconds(),
		OldestReady: timePtr(q.OldestReady),
		Paused:      p,
		PausedSince: timePtr(q.PausedSince),
		LastHour:    hour[q.Name],
	}
}

func (a *app) statsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Count every queue's tasks by state, with lag and the last hour",
		Long: `Count every queue's tasks by state, with each queue's lag (how long its
oldest ready task has waited) and whether it is paused, then the last hour:
attempts that ended (processed) and failed, with one bar per minute, oldest
first. A count the backend does not know prints as "-" (RabbitMQ without a
result store knows only the ready depth, and only of the queues it is told:
the default queue and those given with --queue).`,
		Args: noArgs,
		RunE: a.action(a.stats),
	}
	a.queueFlag(cmd)
	return cmd
}

// queueFlag adds --queue to a command that reads stats.
func (a *app) queueFlag(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&a.queues, "queue", nil, "only these queues (repeat, or separate with commas); RabbitMQ without a result store counts only the queues named")
}

// loadStats reads the stats, of the --queue queues if any were given.
func (a *app) loadStats(ctx context.Context) (*docket.Stats, error) {
	var opts []docket.Option
	if len(a.queues) > 0 {
		weights := map[string]int{}
		for _, q := range a.queues {
			weights[q] = 1
		}
		// Queues tells a broker without a result store which queues to
		// count; this process runs no worker.
		opts = append(opts, docket.Queues(weights))
	}
	q, err := a.open(ctx, false, opts...)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	st, err := q.Stats(ctx)
	if err != nil || len(a.queues) == 0 {
		return st, err
	}
	kept := st.Queues[:0]
	for _, qs := range st.Queues {
		if slices.Contains(a.queues, qs.Name) {
			kept = append(kept, qs)
		}
	}
	st.Queues = kept
	kept2 := st.History[:0]
	for _, m := range st.History {
		if slices.Contains(a.queues, m.Queue) {
			kept2 = append(kept2, m)
		}
	}
	if st.History != nil {
		st.History = kept2
	}
	return st, nil
}

// pausedKnown reports whether the backend keeps queue pauses: those that
// do also count every state.
func pausedKnown(q *docket.QueueStats) bool {
	_, ok := q.Counts["succeeded"]
	return ok
}

func (a *app) stats(ctx context.Context, _ *cobra.Command, _ []string) error {
	st, err := a.loadStats(ctx)
	if err != nil {
		return err
	}
	hour := hours(st)
	if a.json {
		out := statsJSON{At: st.At.UTC(), Queues: []queueJSON{}, LastHour: hour[""]}
		for i := range st.Queues {
			out.Queues = append(out.Queues, queueOut(&st.Queues[i], hour))
		}
		return writeJSON(a.stdout, out)
	}
	if len(st.Queues) == 0 {
		fmt.Fprintln(a.stdout, "no tasks stored yet")
		return nil
	}
	// Workflow steps that wait get a column only while some do.
	states := slices.DeleteFunc(slices.Clone(docket.StateNames), func(s string) bool {
		return s == "waiting" && !slices.ContainsFunc(st.Queues, func(q docket.QueueStats) bool { return q.Counts[s] > 0 })
	})
	header := []string{"QUEUE"}
	for _, s := range states {
		header = append(header, upper(s))
	}
	t := newTable(a.stdout, append(header, "LAG", "PAUSED")...)
	total := map[string]int64{}
	known := map[string]bool{}
	for _, q := range st.Queues {
		row := []string{q.Name}
		for _, s := range states {
			n, ok := q.Counts[s]
			row = append(row, countOrDash(n, ok))
			total[s] += n
			known[s] = known[s] || ok
		}
		row = append(row, lag(q), paused(&q, st.At))
		t.row(row...)
	}
	if len(st.Queues) > 1 {
		row := []string{"(all)"}
		for _, s := range states {
			row = append(row, countOrDash(total[s], known[s]))
		}
		t.row(append(row, "", "")...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if hour == nil {
		return nil
	}
	fmt.Fprintln(a.stdout)
	t = newTable(a.stdout, "LAST HOUR", "PROCESSED", "FAILED", "PROCESSED PER MINUTE, OLDEST FIRST")
	names := []string{}
	for _, q := range st.Queues {
		names = append(names, q.Name)
	}
	if len(names) > 1 {
		names = append(names, "")
	}
	for _, n := range names {
		h := hour[n]
		vals := make([]int64, len(h.PerMinute))
		for i, m := range h.PerMinute {
			vals[i] = m.Succeeded + m.Failed
		}
		label := n
		if n == "" {
			label = "(all)"
		}
		t.row(label, count(h.Processed), count(h.Failed), sparkline(vals))
	}
	return t.flush()
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func countOrDash(n int64, ok bool) string {
	if !ok {
		return "-"
	}
	return count(n)
}

// lag renders how long the oldest ready task has waited.
func lag(q docket.QueueStats) string {
	if q.OldestReady.IsZero() {
		return "-"
	}
	return duration(q.Lag.Round(time.Millisecond))
}

// paused says whether a queue is paused: "no", "since 3m ago", or "-"
// when the backend keeps no pauses.
func paused(q *docket.QueueStats, now time.Time) string {
	switch {
	case !pausedKnown(q):
		return "-"
	case !q.Paused:
		return "no"
	case q.PausedSince.IsZero():
		return "yes"
	case now.Sub(q.PausedSince) < time.Second:
		return "since just now"
	}
	return "since " + ago(q.PausedSince, now)
}

// queuesCmd is docket queues: list, pause, resume, purge.
func (a *app) queuesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "queues",
		Aliases: []string{"queue"},
		Short:   "List queues; pause, resume or purge one",
		Long: `List the queues with their waiting and running tasks, lag and pause state
(the same as docket queues ls). A paused queue keeps accepting tasks, but no
worker in any process starts one until it is resumed.`,
		Args: noArgs,
		RunE: a.action(a.queuesLs),
	}
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the queues",
		Args:    noArgs,
		RunE:    a.action(a.queuesLs),
	}
	a.queueFlag(cmd)
	a.queueFlag(ls)
	pause := &cobra.Command{
		Use:   "pause QUEUE",
		Short: "Stop every worker from starting the queue's tasks (within a second)",
		Args:  exactArgs(1, "one queue name"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return a.setPaused(ctx, args[0], true)
		}),
	}
	resume := &cobra.Command{
		Use:   "resume QUEUE",
		Short: "Let workers start the queue's tasks again",
		Args:  exactArgs(1, "one queue name"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return a.setPaused(ctx, args[0], false)
		}),
	}
	cmd.AddCommand(ls, pause, resume, a.purgeCmd())
	return cmd
}

func (a *app) queuesLs(ctx context.Context, _ *cobra.Command, _ []string) error {
	st, err := a.loadStats(ctx)
	if err != nil {
		return err
	}
	if a.json {
		out := []queueJSON{}
		hour := hours(st)
		for i := range st.Queues {
			out = append(out, queueOut(&st.Queues[i], hour))
		}
		return writeJSON(a.stdout, out)
	}
	if len(st.Queues) == 0 {
		fmt.Fprintln(a.stdout, "no queues yet")
		return nil
	}
	t := newTable(a.stdout, "QUEUE", "WAITING", "READY", "RUNNING", "LAG", "PAUSED")
	for _, q := range st.Queues {
		sched, ok1 := q.Counts["scheduled"]
		retry, ok2 := q.Counts["retrying"]
		ready, ok3 := q.Counts["ready"]
		running, ok4 := q.Counts["running"]
		t.row(q.Name, countOrDash(sched+retry, ok1 && ok2), countOrDash(ready, ok3), countOrDash(running, ok4), lag(q), paused(&q, st.At))
	}
	return t.flush()
}

func (a *app) setPaused(ctx context.Context, name string, pause bool) error {
	q, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer q.Close()
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	if pause {
		err = q.PauseQueue(ctx, name)
	} else {
		err = q.ResumeQueue(ctx, name)
	}
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.stdout, map[string]any{"queue": name, "paused": pause})
	}
	if pause {
		fmt.Fprintf(a.stdout, "paused queue %s: workers start none of its tasks until 'docket queues resume %s'\n", name, name)
	} else {
		fmt.Fprintf(a.stdout, "resumed queue %s\n", name)
	}
	return nil
}
