package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
)

// taskJSON is one task in docket tasks ls --json and docket tasks show
// --json. Times are UTC, null when unset; args, result and progress are
// the task's own JSON (null when absent).
type taskJSON struct {
	ID              string            `json:"id"`
	Name            string            `json:"name"`
	Queue           string            `json:"queue"`
	State           string            `json:"state"` // one of docket.StateNames
	Attempt         int               `json:"attempt"`
	MaxAttempts     int               `json:"max_attempts"`
	Priority        int               `json:"priority"`
	Enqueued        *time.Time        `json:"enqueued"`
	ScheduledFor    *time.Time        `json:"scheduled_for"`
	Started         *time.Time        `json:"started"`
	Finished        *time.Time        `json:"finished"`
	Expires         *time.Time        `json:"expires"`
	Error           string            `json:"error"`
	CancelRequested bool              `json:"cancel_requested"`
	UniqueKey       string            `json:"unique_key"`
	Headers         map[string]string `json:"headers"`
	Worker          string            `json:"worker"`
	Workflow        string            `json:"workflow,omitempty"`  // the workflow's id, for a step
	NextStep        string            `json:"next_step,omitempty"` // the step that takes its result
	Args            json.RawMessage   `json:"args"`
	Result          json.RawMessage   `json:"result"`
	Progress        json.RawMessage   `json:"progress"`
	// Attempts is filled by docket tasks show only.
	Attempts []attemptJSON `json:"attempts,omitempty"`
}

// attemptJSON is one recorded attempt.
type attemptJSON struct {
	N        int        `json:"n"`
	Worker   string     `json:"worker"`
	Started  *time.Time `json:"started"`
	Finished *time.Time `json:"finished"`
	State    string     `json:"state"`
	Error    string     `json:"error"`
}

// taskPageJSON is docket tasks ls --json.
type taskPageJSON struct {
	Tasks []taskJSON `json:"tasks"`
	// Next is the --cursor of the next page; empty at the end.
	Next string `json:"next"`
}

// rawJSON returns b as JSON: itself when valid, a string otherwise.
func rawJSON(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b))
	return s
}

func taskOut(t *docket.TaskInfo, withAttempts bool) taskJSON {
	out := taskJSON{
		ID: t.ID, Name: t.Name, Queue: t.Queue, State: stateName(t), Attempt: t.Attempt,
		MaxAttempts: t.MaxRetries + 1, Priority: t.Priority,
		Enqueued: timePtr(t.Created), ScheduledFor: timePtr(t.ETA), Started: timePtr(t.Started),
		Finished: timePtr(t.Finished), Expires: timePtr(t.Expires), Error: t.Error,
		CancelRequested: t.CancelRequested, UniqueKey: t.UniqueKey, Headers: map[string]string{},
		Worker: t.Worker, Workflow: t.Workflow, NextStep: t.Next, Args: rawJSON(t.Args), Result: rawJSON(t.Result), Progress: rawJSON(t.Progress),
	}
	for k, v := range t.Headers {
		out.Headers[k] = v
	}
	if withAttempts {
		out.Attempts = []attemptJSON{}
		for _, at := range t.Attempts {
			out.Attempts = append(out.Attempts, attemptJSON{
				N: at.N, Worker: at.Owner, Started: timePtr(at.Started), Finished: timePtr(at.Finished),
				State: attemptState(at), Error: at.Error,
			})
		}
	}
	return out
}

// attemptOutcome says how an attempt ended, for people.
func attemptOutcome(at docket.Attempt) string {
	switch at.State {
	case docket.StateScheduled:
		return "failed, retried"
	case docket.StateReady:
		return "released (given back, or its worker was lost)"
	case docket.StateRunning:
		return "running"
	}
	return at.State.String()
}

// attemptState names the state an attempt moved its task to, as
// docket.StateNames does ("released": back to ready).
func attemptState(at docket.Attempt) string {
	switch at.State {
	case docket.StateScheduled:
		return "retrying"
	case docket.StateReady:
		return "released"
	}
	return at.State.String()
}

func (a *app) tasksCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "tasks",
		Aliases: []string{"task"},
		Short:   "List, show, retry, cancel, delete or run tasks",
	}
	cmd.AddCommand(a.tasksLsCmd(), a.tasksShowCmd())
	for _, act := range []struct {
		action docket.Action
		short  string
	}{
		{docket.ActionRetry, "Make failed, cancelled or expired tasks ready again"},
		{docket.ActionCancel, "Cancel tasks that have not finished (a running one is told to stop)"},
		{docket.ActionDelete, "Delete tasks that are not running"},
		{docket.ActionRunNow, "Make scheduled or retrying tasks due now"},
	} {
		cmd.AddCommand(a.actionCmd(act.action, act.short))
	}
	return cmd
}

func (a *app) tasksLsCmd() *cobra.Command {
	var f filterFlags
	var limit int
	var newest bool
	var cursor string
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List tasks matching a filter, a page at a time",
		Long: `List tasks matching a filter, oldest first (--newest for newest first), a
page at a time. When there are more, the --cursor of the next page is printed
on stderr. A state is one of ` + strings.Join(docket.StateNames, ", ") + `;
"retrying" is a task waiting for its next attempt.`,
		Example: `  docket tasks ls --state failed --queue emails --since 2h
  docket tasks ls --name report --search '"customer": 42' --newest --limit 10`,
		Args: noArgs,
		RunE: a.action(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			filter, err := f.build(cmd, a.now())
			if err != nil {
				return err
			}
			if limit < 1 || limit > 1000 {
				return usagef(cmd, "docket: --limit %d: want 1 to 1000", limit)
			}
			q, err := a.open(ctx, false)
			if err != nil {
				return err
			}
			defer q.Close()
			ctx, cancel := a.bounded(ctx)
			defer cancel()
			page, err := q.Search(ctx, docket.SearchOptions{Filter: *filter, Newest: newest, Cursor: cursor, Limit: limit})
			if err != nil {
				return err
			}
			return a.printPage(page)
		}),
	}
	f.register(cmd)
	fs := cmd.Flags()
	fs.IntVar(&limit, "limit", 50, "tasks per page, at most 1000")
	fs.BoolVar(&newest, "newest", false, "newest first")
	fs.StringVar(&cursor, "cursor", "", "continue where the previous page ended")
	return cmd
}

func (a *app) printPage(page *docket.TaskPage) error {
	if a.json {
		out := taskPageJSON{Tasks: []taskJSON{}, Next: page.Next}
		for _, t := range page.Tasks {
			out.Tasks = append(out.Tasks, taskOut(t, false))
		}
		return writeJSON(a.stdout, out)
	}
	if len(page.Tasks) == 0 {
		if page.Next == "" {
			fmt.Fprintln(a.stderr, "no tasks match")
		} else {
			fmt.Fprintf(a.stderr, "no tasks match among those examined; more remain: --cursor %s\n", page.Next)
		}
		return nil
	}
	now := a.now()
	t := newTable(a.stdout, "ID", "NAME", "QUEUE", "STATE", "ATTEMPT", "ENQUEUED", "ERROR")
	for _, task := range page.Tasks {
		t.row(task.ID, task.Name, task.Queue, stateName(task), fmt.Sprintf("%d/%d", task.Attempt, task.MaxRetries+1), ago(task.Created, now), firstLine(task.Error, 60))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(a.stderr, "more tasks: add --cursor %s for the next page\n", page.Next)
	}
	return nil
}

func (a *app) tasksShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show everything about a task: arguments, result, times, attempts and errors",
		Long: `Show everything about a task: arguments, result, headers, times (absolute
and relative), worker, progress, and each attempt with its error. ID may be
shortened to any prefix that names one task.`,
		Example: "  docket tasks show 01J9Z3Q4X8M2B7N5K6R1T0V2WY\n  docket tasks show 01J9Z3Q4X8M2B7 --json",
		Args:    exactArgs(1, "one task id"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			q, err := a.open(ctx, false)
			if err != nil {
				return err
			}
			defer q.Close()
			ctx, cancel := a.bounded(ctx)
			defer cancel()
			t, err := a.lookup(ctx, q, args[0])
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, taskOut(t, true))
			}
			return a.printTask(t)
		}),
	}
}

// lookup returns the task id names: by its id, or else by an id prefix
// that names exactly one task.
func (a *app) lookup(ctx context.Context, q *docket.Queue, id string) (*docket.TaskInfo, error) {
	t, err := q.Info(ctx, id)
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, docket.ErrNotFound) {
		return nil, err
	}
	page, serr := q.Search(ctx, docket.SearchOptions{Filter: docket.Filter{IDPrefix: id}, Limit: 2})
	switch {
	case errors.Is(serr, docket.ErrUnsupported):
		// RabbitMQ without a result store: the task may well exist.
		return nil, serr
	case serr != nil:
	case len(page.Tasks) == 1 && page.Next == "" && page.Tasks[0].ID != id:
		return q.Info(ctx, page.Tasks[0].ID)
	case len(page.Tasks) > 1:
		return nil, inputf(docket.ErrInvalid, "docket: %q names several tasks (%s, %s, ...): give more of the id", id, page.Tasks[0].ID, page.Tasks[1].ID)
	}
	return nil, inputf(docket.ErrNotFound, "docket: no task %q (it never existed, or was deleted after its result TTL)", id)
}

func (a *app) printTask(t *docket.TaskInfo) error {
	now := a.now()
	w := &bytes.Buffer{}
	kv := newTable(w)
	state := stateName(t)
	if t.CancelRequested && t.State == docket.StateRunning {
		state += " (cancel requested)"
	}
	kv.row("ID", t.ID)
	kv.row("Name", t.Name)
	kv.row("Queue", t.Queue)
	kv.row("State", state)
	kv.row("Attempt", fmt.Sprintf("%d of %d", t.Attempt, t.MaxRetries+1))
	kv.row("Priority", fmt.Sprint(t.Priority))
	kv.row("Enqueued", when(t.Created, now))
	if !t.ETA.IsZero() {
		kv.row("Scheduled for", when(t.ETA, now))
	}
	kv.row("Started", when(t.Started, now))
	fin := when(t.Finished, now)
	if !t.Finished.IsZero() && !t.Started.IsZero() {
		fin += ", ran " + duration(t.Finished.Sub(t.Started))
	}
	kv.row("Finished", fin)
	if !t.Expires.IsZero() {
		kv.row("Expires", when(t.Expires, now))
	}
	if t.Workflow != "" {
		kv.row("Workflow", t.Workflow)
	}
	if t.Next != "" {
		kv.row("Next step", t.Next)
	}
	if t.Worker != "" {
		kv.row("Worker", t.Worker)
	}
	if t.UniqueKey != "" {
		kv.row("Unique key", t.UniqueKey)
	}
	if len(t.Headers) > 0 {
		keys := make([]string, 0, len(t.Headers))
		for k := range t.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			label := ""
			if i == 0 {
				label = "Headers"
			}
			kv.row(label, k+": "+t.Headers[k])
		}
	}
	if len(t.Progress) > 0 {
		kv.row("Progress", string(compact(t.Progress)))
	}
	if err := kv.flush(); err != nil {
		return err
	}
	section(w, "Args", pretty(t.Args))
	if len(t.Result) > 0 {
		section(w, "Result", pretty(t.Result))
	}
	if t.Error != "" {
		section(w, "Error", t.Error)
	}
	if len(t.Attempts) > 0 {
		fmt.Fprintln(w, "\nAttempts")
		// An error printed already (the task's, or an earlier attempt's)
		// is referred to rather than repeated: stacks are long.
		seen := map[string]string{t.Error: "the error above"}
		for _, at := range t.Attempts {
			line := fmt.Sprintf("  #%d  %s", at.N, attemptOutcome(at))
			if !at.Started.IsZero() {
				line += "  started " + when(at.Started, now)
			}
			if !at.Finished.IsZero() && !at.Started.IsZero() {
				line += ", ran " + duration(at.Finished.Sub(at.Started))
			}
			if at.Owner != "" {
				line += "  on " + at.Owner
			}
			fmt.Fprintln(w, line)
			switch prev, ok := seen[at.Error]; {
			case at.Error == "":
			case ok:
				fmt.Fprintf(w, "      (%s)\n", prev)
			default:
				fmt.Fprintln(w, indent(strings.TrimRight(at.Error, "\n"), "      "))
				seen[at.Error] = fmt.Sprintf("the error of #%d", at.N)
			}
		}
	}
	_, err := a.stdout.Write(w.Bytes())
	return err
}

func section(w *bytes.Buffer, title, body string) {
	fmt.Fprintf(w, "\n%s\n%s\n", title, indent(strings.TrimRight(body, "\n"), "  "))
}

// indent prefixes each line of s, expanding tabs (a stack's file lines
// start with one) and leaving blank lines empty.
func indent(s, prefix string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		l = strings.TrimRight(strings.ReplaceAll(l, "\t", "    "), " ")
		if l != "" {
			l = prefix + l
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

// pretty indents JSON for reading; anything else prints as it is.
func pretty(raw []byte) string {
	if len(raw) == 0 {
		return "(none)"
	}
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return string(raw)
	}
	return b.String()
}

func compact(raw []byte) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}
