package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
)

// progressOver is the size of a bulk action from which a progress bar is
// drawn (on a terminal).
const progressOver = 2000

// actionJSON is the --json output of an action.
type actionJSON struct {
	Action  string `json:"action"`
	Changed int    `json:"changed"`
	Skipped int    `json:"skipped"`
	Missing int    `json:"missing"`
}

// verbs of each action, for messages: "retry", "Retry", "retried".
var verbs = map[docket.Action][3]string{
	docket.ActionRetry:  {"retry", "Retry", "retried"},
	docket.ActionCancel: {"cancel", "Cancel", "cancelled"},
	docket.ActionDelete: {"delete", "Delete", "deleted"},
	docket.ActionRunNow: {"run now", "Run now", "made due now"},
}

// stateOf returns the state a state name (docket.StateNames) stands for.
func stateOf(name string) docket.State {
	if name == "retrying" {
		return docket.StateScheduled
	}
	s, _ := transport.ParseState(name)
	return s
}

// applicable lists the state names action applies to.
func applicable(action docket.Action) []string {
	var out []string
	for _, n := range docket.StateNames {
		if action.Applies(stateOf(n)) {
			out = append(out, n)
		}
	}
	return out
}

// orList joins names: "a, b or c".
func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func (a *app) actionCmd(action docket.Action, short string) *cobra.Command {
	var f filterFlags
	var all, yes bool
	var attempts int
	name := action.String()
	cmd := &cobra.Command{
		Use:   name + " ID... | " + name + " --all [filter]",
		Short: short,
		Long: fmt.Sprintf(`%s.

Give task ids, or --all with a filter (the filter flags of docket tasks ls).
A filter without --all is refused, so that a forgotten flag never means
every task. Without --state, --all selects the tasks %s applies to:
%s.

Acting on a filter asks for confirmation, with the number of tasks, when
stdin is a terminal, and needs --yes otherwise; over 2,000 tasks it draws a
progress bar on a terminal. It is safe to repeat: each task's state is
checked as it is changed. It prints how many tasks were changed, skipped
(in a state the action does not apply to) and missing (unknown ids).`, short, verbs[action][0], orList(applicable(action))),
		Example: fmt.Sprintf("  docket tasks %s 01J9Z3Q4X8M2B7N5K6R1T0V2WY\n  docket tasks %s --all --state %s --queue emails --since 2h", name, name, applicable(action)[0]),
		RunE: a.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			switch {
			case len(args) > 0 && (all || f.set()):
				return usagef(cmd, "docket: give task ids or --all with a filter, not both")
			case len(args) == 0 && !all && f.set():
				return usagef(cmd, "docket: to act on every task a filter matches, add --all: docket tasks %s --all %s", name, strings.Join(filterArgs(cmd), " "))
			case len(args) == 0 && !all:
				return usagef(cmd, "docket: give task ids, or --all with a filter")
			case attempts < 1:
				return usagef(cmd, "docket: --attempts %d: want at least 1", attempts)
			}
			if len(args) > 0 {
				return a.actOnIDs(ctx, action, slices.Compact(slices.Sorted(slices.Values(args))), attempts)
			}
			filter, err := f.build(cmd, a.now())
			if err != nil {
				return err
			}
			ok := applicable(action)
			if len(filter.States) == 0 {
				filter.States = ok
			}
			for _, s := range filter.States {
				if !slices.Contains(ok, s) {
					return usagef(cmd, "docket: %s applies to %s tasks, not %s", verbs[action][0], orList(ok), s)
				}
			}
			return a.bulk(ctx, action, filter, attempts, yes)
		}),
	}
	f.register(cmd)
	fs := cmd.Flags()
	fs.BoolVar(&all, "all", false, "act on every task the filter matches")
	fs.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	fs.IntVar(&attempts, "attempts", 1, "attempts a retried task gets")
	if action != docket.ActionRetry {
		_ = fs.MarkHidden("attempts")
	}
	return cmd
}

// filterArgs repeats the filter flags the user gave, for a hint.
func filterArgs(cmd *cobra.Command) []string {
	var out []string
	for _, n := range []string{"state", "queue", "name", "search", "id-prefix", "since", "until"} {
		if fl := cmd.Flags().Lookup(n); fl != nil && fl.Changed {
			v := fl.Value.String()
			if n == "state" {
				v = strings.Trim(v, "[]")
			}
			out = append(out, "--"+n+" "+shellQuote(v))
		}
	}
	return out
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,:/") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// actOnIDs applies action to the tasks named. Every id must name a task,
// and the action must apply to at least one of them; otherwise nothing
// is changed.
func (a *app) actOnIDs(ctx context.Context, action docket.Action, ids []string, attempts int) error {
	q, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer q.Close()
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	var missing []string
	var skip []*docket.TaskInfo
	for _, id := range ids {
		t, err := q.Info(ctx, id)
		switch {
		case errors.Is(err, docket.ErrNotFound):
			missing = append(missing, id)
		case err != nil:
			return err
		case !action.Applies(t.State):
			skip = append(skip, t)
		}
	}
	if len(missing) > 0 {
		more := ""
		if len(missing) > 1 {
			more = fmt.Sprintf(" (and %d more)", len(missing)-1)
		}
		return inputf(docket.ErrNotFound, "docket: no task %q%s; nothing changed", missing[0], more)
	}
	if len(skip) == len(ids) {
		return inputf(docket.ErrInvalid, "docket: %s applies to %s tasks; %s is %s; nothing changed", verbs[action][0], orList(applicable(action)), skip[0].ID, stateName(skip[0]))
	}
	for _, t := range skip {
		fmt.Fprintf(a.stderr, "skipping %s: it is %s\n", t.ID, stateName(t))
	}
	bar := a.newBar(verbs[action][0], len(ids))
	res, err := q.Act(ctx, action, docket.Target{IDs: ids, Attempts: attempts, Progress: bar.update})
	bar.done()
	switch {
	case err == nil:
		return a.printResult(action, res)
	case res == docket.ActionResult{}:
		return err
	}
	_ = a.printResult(action, res)
	return fmt.Errorf("docket: %s stopped after changing %s: %w", verbs[action][0], plural(res.Changed, "task"), err)
}

// bulk applies action to every task filter matches, after confirmation.
func (a *app) bulk(ctx context.Context, action docket.Action, filter *docket.Filter, attempts int, yes bool) error {
	what := describe(filter)
	if !yes && !a.stdinTTY {
		return inputf(docket.ErrInvalid, "docket: %s of the tasks matching %s needs confirmation: pass --yes (stdin is not a terminal); nothing changed", verbs[action][0], what)
	}
	q, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer q.Close()
	// A walk over a filter has no time limit unless --timeout was given:
	// stopping half-way by default would be worse than finishing.
	bounded := func() (context.Context, context.CancelFunc) {
		if a.timeoutSet && a.timeout > 0 {
			return context.WithTimeout(ctx, a.timeout)
		}
		return context.WithCancel(ctx)
	}
	n := -1
	if !yes || a.stderrTTY {
		cctx, cancel := bounded()
		n, err = a.count(cctx, q, action, filter)
		cancel()
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintf(a.stderr, "no tasks match (%s): nothing to %s\n", what, verbs[action][0])
			return a.printResult(action, docket.ActionResult{})
		}
	}
	if !yes {
		fmt.Fprintf(a.stderr, "%s %s (%s)? [y/N] ", verbs[action][1], plural(n, "task"), what)
		if !confirmed(a.stdin) {
			return inputf(docket.ErrInvalid, "docket: not confirmed; nothing changed")
		}
	}
	actx, cancel := bounded()
	defer cancel()
	bar := a.newBar(verbs[action][0], n)
	res, err := q.Act(actx, action, docket.Target{Filter: filter, Attempts: attempts, Progress: bar.update})
	bar.done()
	switch {
	case err == nil:
		return a.printResult(action, res)
	case res == docket.ActionResult{}:
		return err
	}
	// Stopped part of the way: say what was done.
	_ = a.printResult(action, res)
	return fmt.Errorf("docket: %s stopped after changing %s (run the same command again to go on): %w", verbs[action][0], plural(res.Changed, "task"), err)
}

// count counts the tasks filter matches that action applies to, by paging
// through them.
func (a *app) count(ctx context.Context, q *docket.Queue, action docket.Action, filter *docket.Filter) (int, error) {
	if a.stderrTTY {
		fmt.Fprint(a.stderr, "counting matching tasks…")
		defer fmt.Fprint(a.stderr, "\r\033[K")
	}
	n := 0
	for cursor := ""; ; {
		page, err := q.Search(ctx, docket.SearchOptions{Filter: *filter, Limit: 1000, Cursor: cursor})
		if err != nil {
			return 0, err
		}
		for _, t := range page.Tasks {
			if action.Applies(t.State) {
				n++
			}
		}
		if page.Next == "" {
			return n, nil
		}
		cursor = page.Next
	}
}

// confirmed reads one line and reports whether it says yes.
func confirmed(r io.Reader) bool {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		return false
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

func (a *app) printResult(action docket.Action, res docket.ActionResult) error {
	if a.json {
		return writeJSON(a.stdout, actionJSON{Action: action.String(), Changed: res.Changed, Skipped: res.Skipped, Missing: res.Missing})
	}
	_, err := fmt.Fprintf(a.stdout, "%s: changed %d, skipped %d, missing %d\n", verbs[action][0], res.Changed, res.Skipped, res.Missing)
	return err
}

// bar draws a progress bar on a terminal's stderr; a nil *bar draws
// nothing.
type bar struct {
	w                 io.Writer
	label             string
	total             int
	examined, changed int
	last              time.Time
}

// newBar returns a progress bar for total tasks, or nil when stderr is
// not a terminal or the action is small.
func (a *app) newBar(label string, total int) *bar {
	if !a.stderrTTY || total <= progressOver {
		return nil
	}
	return &bar{w: a.stderr, label: label, total: total}
}

// update is the Target.Progress callback; it redraws at most ten times a
// second.
func (b *bar) update(examined, changed int) {
	if b == nil {
		return
	}
	b.examined, b.changed = examined, changed
	if time.Since(b.last) >= 100*time.Millisecond {
		b.last = time.Now()
		b.draw()
	}
}

func (b *bar) draw() {
	const width = 30
	frac := min(float64(b.examined)/float64(b.total), 1)
	fill := int(frac * width)
	fmt.Fprintf(b.w, "\r%s [%s%s] %s/%s examined, %s changed %3.0f%%\033[K", b.label,
		strings.Repeat("#", fill), strings.Repeat(".", width-fill),
		count(int64(b.examined)), count(int64(b.total)), count(int64(b.changed)), frac*100)
}

// done draws the final state and ends the line.
func (b *bar) done() {
	if b == nil {
		return
	}
	b.draw()
	fmt.Fprintln(b.w)
}

// terminalStates are the states docket queues purge deletes by default.
var terminalStates = []string{"succeeded", "failed", "cancelled", "expired"}

func (a *app) purgeCmd() *cobra.Command {
	var states []string
	var yes bool
	cmd := &cobra.Command{
		Use:   "purge QUEUE",
		Short: "Delete a queue's finished tasks (or its tasks in the states given)",
		Long: `Delete a queue's tasks in the given states; by default the finished ones
(` + orList(terminalStates) + `), which frees space and loses only their results
and history. To drop work that has not run, name its states:
--state ready,scheduled,retrying. Running tasks are never deleted. Asks for
confirmation on a terminal, and needs --yes otherwise.`,
		Example: `  docket queues purge emails
  docket queues purge emails --state failed --yes
  docket queues purge imports --state ready,scheduled,retrying`,
		Args: exactArgs(1, "one queue name"),
		RunE: a.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			ff := filterFlags{states: states, queue: args[0]}
			if len(ff.states) == 0 {
				ff.states = terminalStates
			}
			filter, err := ff.build(cmd, a.now())
			if err != nil {
				return err
			}
			ok := applicable(docket.ActionDelete)
			for _, s := range filter.States {
				if !slices.Contains(ok, s) {
					return usagef(cmd, "docket: purge deletes %s tasks, not %s", orList(ok), s)
				}
			}
			return a.bulk(ctx, docket.ActionDelete, filter, 1, yes)
		}),
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&states, "state", nil, "delete the tasks in this state (repeat, or separate with commas; default "+strings.Join(terminalStates, ",")+")")
	fs.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return applicable(docket.ActionDelete), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
