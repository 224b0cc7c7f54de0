package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
)

func (a *app) enqueueCmd() *cobra.Command {
	var in time.Duration
	var at, queue, unique string
	var priority, retries int
	var headers []string
	cmd := &cobra.Command{
		Use:   "enqueue NAME JSON",
		Short: "Enqueue a task by name with JSON arguments, and print its id",
		Long: `Enqueue a task by name, with its arguments as JSON ("-" reads them from
stdin), for the workers that registered it. The arguments are not checked
against the task here: a worker that cannot decode them fails the task.`,
		Example: `  docket enqueue email.send '{"to":"a@b.c"}'
  docket enqueue report '{"day":"2024-05-01"}' --queue reports --in 10m --unique report-2024-05-01
  docket enqueue import - < payload.json`,
		Args: exactArgs(2, "a task name and its JSON arguments"),
		RunE: a.action(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			name, raw := args[0], []byte(args[1])
			if args[1] == "-" {
				b, err := io.ReadAll(io.LimitReader(a.stdin, 64<<20))
				if err != nil {
					return fmt.Errorf("docket: read arguments from stdin: %w", err)
				}
				raw = b
			}
			if err := checkJSON(raw); err != nil {
				return usagef(cmd, "docket: arguments are not valid JSON: %v", err)
			}
			var opts []docket.TaskOption
			fl := cmd.Flags()
			switch {
			case fl.Changed("in") && fl.Changed("at"):
				return usagef(cmd, "docket: give --in or --at, not both")
			case fl.Changed("in"):
				if in < 0 {
					return usagef(cmd, "docket: --in %s: want a delay of zero or more", in)
				}
				opts = append(opts, docket.Countdown(in))
			case fl.Changed("at"):
				t, err := parseAt(at)
				if err != nil {
					return usagef(cmd, "docket: --at: %v", err)
				}
				opts = append(opts, docket.ETA(t))
			}
			if queue != "" {
				opts = append(opts, docket.OnQueue(queue))
			}
			if fl.Changed("priority") {
				opts = append(opts, docket.Priority(priority))
			}
			if fl.Changed("retries") {
				if retries < 0 {
					return usagef(cmd, "docket: --retries %d: want 0 or more", retries)
				}
				opts = append(opts, docket.MaxRetries(retries))
			}
			if unique != "" {
				opts = append(opts, docket.Unique(unique, docket.RejectDuplicate))
			}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok || k == "" {
					return usagef(cmd, "docket: --header %q: want KEY=VALUE", h)
				}
				opts = append(opts, docket.Header(k, v))
			}
			q, err := a.open(ctx, true)
			if err != nil {
				return err
			}
			defer q.Close()
			ctx, cancel := a.bounded(ctx)
			defer cancel()
			id, err := q.EnqueueJSON(ctx, name, json.RawMessage(raw), opts...)
			if err != nil {
				var dup *docket.DuplicateError
				if errors.As(err, &dup) && dup.UniqueKey != "" {
					return inputf(docket.ErrDuplicate, "docket: unique key %q is held by task %s; nothing enqueued", dup.UniqueKey, dup.ExistingID)
				}
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]string{"id": id})
			}
			_, err = fmt.Fprintln(a.stdout, id)
			return err
		}),
	}
	fs := cmd.Flags()
	fs.DurationVar(&in, "in", 0, "run no earlier than this long from now (Countdown)")
	fs.StringVar(&at, "at", "", "run no earlier than this time: RFC 3339, or 2006-01-02 15:04 local (ETA)")
	fs.StringVar(&queue, "queue", "", `the queue (default "default")`)
	fs.IntVar(&priority, "priority", 0, "0 (lowest, the default) to 9 (highest)")
	fs.StringVar(&unique, "unique", "", "refuse the task while another unfinished task holds this key")
	fs.IntVar(&retries, "retries", 3, "retries after a failed attempt (0: one attempt only)")
	fs.StringArrayVar(&headers, "header", nil, "a header KEY=VALUE (repeat for more)")
	return cmd
}

// checkJSON reports why raw is not one JSON value, with the offset.
func checkJSON(raw []byte) error {
	if len(strings.TrimSpace(string(raw))) == 0 {
		return errors.New("empty (give {} for no arguments)")
	}
	var v json.RawMessage
	if err := json.Unmarshal(raw, &v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("%v at byte %d", err, se.Offset)
		}
		return err
	}
	return nil
}

// parseAt reads an absolute time for --at.
func parseAt(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.ParseInLocation(l, strings.TrimSpace(s), time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2006-01-02T15:04:05Z07:00, 2006-01-02 15:04, 2006-01-02); for a delay use --in", s)
}
