// Command docket inspects and operates a docket backend: queue and task
// counts, the tasks themselves (list, show, retry, cancel, delete, run
// now), enqueueing by name, schedules and the running workers. It talks to
// the backend named by --url or $DOCKET_URL, the same URL the application
// opens.
//
//	go install github.com/docketq/docket/cmd/docket@latest
//	export DOCKET_URL=sqlite:/var/lib/app/docket.db
//	docket stats
//	docket tasks ls --state failed
//	docket tasks retry --all --state failed
//
// Exit status: 0 on success; 2 for bad input or a request that matched
// nothing (an unknown task id, a bad flag or filter, malformed JSON, a
// backend that cannot do what was asked, a refused confirmation), in which
// case nothing was changed; 1 for any other failure, such as an unreachable
// backend. See docs/cli.md.
package main

import (
	"context"
	"io"
	"os"

	goredis "github.com/redis/go-redis/v9"
)

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

// run runs the command line args and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// go-redis logs connection errors through its global logger, on
	// stderr; the command reports each failure once, in its own words.
	goredis.SetLogger(quietLogger{})
	return newApp(stdin, stdout, stderr, os.Getenv).main(args)
}

// quietLogger discards go-redis's log lines.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
