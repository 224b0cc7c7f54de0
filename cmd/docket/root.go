package main

import (
	"time"

	"github.com/spf13/cobra"
)

const rootLong = `docket inspects and operates a docket backend: the counts of every queue,
the tasks themselves, schedules and workers. It talks to the backend the
application uses, named by --url or $DOCKET_URL:

  sqlite:path/to/docket.db    a SQLite file (a bare path works too)
  redis://:password@host:6379/0
  amqp://user:password@host:5672/vhost  with --result-url (the result store)

Read commands print tables for people, or stable JSON with --json.
Commands that change many tasks at once take a filter and --all, ask for
confirmation on a terminal, and need --yes otherwise.

Exit status:
  0  success
  2  bad input, or nothing matched what was asked: an unknown task id, a bad
     flag, filter, time or JSON, a backend that cannot do it, an unknown URL
     scheme, a refused confirmation. One line on stderr; nothing was changed.
  1  any other failure, such as an unreachable backend.`

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "docket",
		Short:         "Inspect and operate a docket job queue",
		Long:          rootLong,
		SilenceErrors: true,
		SilenceUsage:  true,
		Example: `  export DOCKET_URL=sqlite:/var/lib/app/docket.db
  docket stats
  docket tasks ls --state failed --limit 20
  docket tasks show 01J9Z3Q4X8M2B7N5K6R1T0V2WY
  docket tasks retry --all --state failed --queue emails
  docket enqueue email.send '{"to":"a@b.c"}' --in 5m`,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.url, "url", "", "backend URL (default $DOCKET_URL)")
	pf.StringVar(&a.resultURL, "result-url", "", "result store URL, for RabbitMQ (default $DOCKET_RESULT_URL)")
	pf.BoolVar(&a.json, "json", false, "print JSON instead of tables")
	pf.DurationVar(&a.timeout, "timeout", time.Minute, "give up on the backend after this long (0: never; a bulk action by filter has no limit unless given)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usagef(cmd, "docket: %v", err)
	})
	root.AddCommand(
		a.statsCmd(),
		a.queuesCmd(),
		a.tasksCmd(),
		a.enqueueCmd(),
		a.schedulesCmd(),
		a.workersCmd(),
		a.serveCmd(),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef(cmd, "docket: %s takes %s (got %d arguments)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

// noArgs refuses arguments, naming the first one.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef(cmd, "docket: unexpected argument %q to %s", args[0], cmd.CommandPath())
	}
	return nil
}
