package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// scheduleJSON is one schedule in docket schedules --json.
type scheduleJSON struct {
	Name          string     `json:"name"`
	Spec          string     `json:"spec"`
	Task          string     `json:"task"`
	Queue         string     `json:"queue"`
	Paused        bool       `json:"paused"`
	NextAt        *time.Time `json:"next_at"`
	LastSlot      *time.Time `json:"last_slot"`
	LastFiredAt   *time.Time `json:"last_fired_at"`
	LastTaskID    string     `json:"last_task_id"`
	LastTaskState string     `json:"last_task_state"` // empty when pruned or none
}

// specOf returns a schedule's description without the task and arguments
// its fingerprint carries.
func specOf(s string) string {
	if i := strings.Index(s, " task:"); i >= 0 {
		return s[:i]
	}
	return s
}

func (a *app) schedulesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "schedules",
		Aliases: []string{"schedule"},
		Short:   "List schedules; pause, resume or run one now",
		Long: `List the schedules the workers keep in the backend: what each enqueues,
when it fires next, and its last run (the same as docket schedules ls).`,
		Args: noArgs,
		RunE: a.action(a.schedulesLs),
	}
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the schedules",
		Args:    noArgs,
		RunE:    a.action(a.schedulesLs),
	}
	pause := &cobra.Command{
		Use:   "pause NAME",
		Short: "Skip the schedule's slots, in every process, until resumed",
		Args:  exactArgs(1, "one schedule name"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return a.pauseSchedule(ctx, args[0], true)
		}),
	}
	resume := &cobra.Command{
		Use:   "resume NAME",
		Short: "Let a paused schedule fire again from its next slot",
		Args:  exactArgs(1, "one schedule name"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return a.pauseSchedule(ctx, args[0], false)
		}),
	}
	runNow := &cobra.Command{
		Use:   "run NAME",
		Short: "Enqueue the schedule's task now, as a one-off, and print its id",
		Long: `Enqueue the schedule's task now, with the arguments its scheduler stored,
as a one-off: the schedule's next slot stays as it was. Prints the task id.`,
		Args: exactArgs(1, "one schedule name"),
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, args []string) error {
			q, err := a.open(ctx, false)
			if err != nil {
				return err
			}
			defer q.Close()
			ctx, cancel := a.bounded(ctx)
			defer cancel()
			id, err := q.TriggerSchedule(ctx, args[0])
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]string{"schedule": args[0], "id": id})
			}
			_, err = fmt.Fprintln(a.stdout, id)
			return err
		}),
	}
	cmd.AddCommand(ls, pause, resume, runNow)
	return cmd
}

func (a *app) schedulesLs(ctx context.Context, _ *cobra.Command, _ []string) error {
	q, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer q.Close()
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	ss, err := q.Schedules(ctx)
	if err != nil {
		return err
	}
	if a.json {
		out := []scheduleJSON{}
		for _, s := range ss {
			st := ""
			if s.LastTaskState != 0 {
				st = s.LastTaskState.String()
			}
			out = append(out, scheduleJSON{
				Name: s.Name, Spec: specOf(s.Spec), Task: s.Task, Queue: s.Queue, Paused: s.Paused,
				NextAt: timePtr(s.NextAt), LastSlot: timePtr(s.LastSlot), LastFiredAt: timePtr(s.LastFiredAt),
				LastTaskID: s.LastTaskID, LastTaskState: st,
			})
		}
		return writeJSON(a.stdout, out)
	}
	if len(ss) == 0 {
		fmt.Fprintln(a.stdout, "no schedules (a worker records each schedule when it starts)")
		return nil
	}
	now := a.now()
	t := newTable(a.stdout, "NAME", "TASK", "QUEUE", "SPEC", "NEXT", "LAST FIRED", "LAST TASK", "PAUSED")
	for _, s := range ss {
		next := ago(s.NextAt, now)
		if s.Paused {
			next = "(paused)"
		}
		last := "-"
		if s.LastTaskID != "" {
			last = s.LastTaskID
			if s.LastTaskState != 0 {
				last += " " + s.LastTaskState.String()
			}
		}
		t.row(s.Name, dash(s.Task), dash(s.Queue), dash(specOf(s.Spec)), next, ago(s.LastFiredAt, now), last, yesNo(s.Paused))
	}
	return t.flush()
}

func (a *app) pauseSchedule(ctx context.Context, name string, pause bool) error {
	q, err := a.open(ctx, false)
	if err != nil {
		return err
	}
	defer q.Close()
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	if pause {
		err = q.PauseSchedule(ctx, name)
	} else {
		err = q.ResumeSchedule(ctx, name)
	}
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.stdout, map[string]any{"schedule": name, "paused": pause})
	}
	if pause {
		fmt.Fprintf(a.stdout, "paused schedule %s: its slots are skipped until 'docket schedules resume %s'\n", name, name)
	} else {
		fmt.Fprintf(a.stdout, "resumed schedule %s\n", name)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// workerJSON is one worker in docket workers --json.
type workerJSON struct {
	ID          string     `json:"id"`
	Host        string     `json:"host"`
	PID         int        `json:"pid"`
	Queues      []string   `json:"queues"` // empty: every queue with a registered task
	Concurrency int        `json:"concurrency"`
	Busy        int        `json:"busy"`
	Started     *time.Time `json:"started"`
	Heartbeat   *time.Time `json:"heartbeat"`
	Expires     *time.Time `json:"expires"`
	Version     string     `json:"version"`
}

func (a *app) workersCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "workers",
		Aliases: []string{"worker"},
		Short:   "List the running worker processes",
		Long: `List the worker processes (Queue.Run) whose heartbeat is current: host,
pid, queues, busy handlers of its concurrency, when it started, its last
heartbeat (every few seconds) and docket's version. A process that stopped
without saying so leaves the list about half a minute after its last
heartbeat.`,
		Args: noArgs,
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			q, err := a.open(ctx, false)
			if err != nil {
				return err
			}
			defer q.Close()
			ctx, cancel := a.bounded(ctx)
			defer cancel()
			ws, err := q.Workers(ctx)
			if err != nil {
				return err
			}
			if a.json {
				out := []workerJSON{}
				for _, w := range ws {
					qs := append([]string{}, w.Queues...)
					out = append(out, workerJSON{
						ID: w.ID, Host: w.Host, PID: w.PID, Queues: qs, Concurrency: w.Concurrency, Busy: w.Busy,
						Started: timePtr(w.Started), Heartbeat: timePtr(w.Heartbeat), Expires: timePtr(w.Expires), Version: w.Version,
					})
				}
				return writeJSON(a.stdout, out)
			}
			if len(ws) == 0 {
				fmt.Fprintln(a.stdout, "no workers running")
				return nil
			}
			now := a.now()
			t := newTable(a.stdout, "HOST", "PID", "QUEUES", "BUSY", "STARTED", "HEARTBEAT", "VERSION", "ID")
			for _, w := range ws {
				qs := strings.Join(w.Queues, ",")
				if qs == "" {
					qs = "(registered)"
				}
				t.row(w.Host, fmt.Sprint(w.PID), qs, fmt.Sprintf("%d/%d", w.Busy, w.Concurrency),
					ago(w.Started, now), ago(w.Heartbeat, now), w.Version, w.ID)
			}
			return t.flush()
		}),
	}
}
