// Command periodic runs two schedules: a cron spec in a named time zone and
// a fixed interval. Start it twice against the same file and watch each
// slot run once, whichever process fires it:
//
//	go run ./examples/periodic &   # terminal 1
//	go run ./examples/periodic     # terminal 2 (same ./periodic.db)
//
// Stop either with Ctrl-C; the other carries on, and a restart neither
// skips nor repeats a slot. -for 30s exits after that long.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/all" // DOCKET_URL may name Redis
)

var (
	// heartbeat prints which process ran which slot.
	heartbeat = docket.NewTask("periodic.heartbeat", func(ctx context.Context, label string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		fmt.Printf("pid %-7d ran %-18s slot %s\n", os.Getpid(), label, tc.Headers["docket.slot"])
		return "ok", nil
	}, docket.IgnoreResult())
)

func main() {
	url := flag.String("url", "sqlite:periodic.db", "docket URL (DOCKET_URL overrides)")
	runFor := flag.Duration("for", 0, "exit after this long (0: until Ctrl-C)")
	flag.Parse()
	if env := os.Getenv("DOCKET_URL"); env != "" {
		*url = env
	}
	if err := run(*url, *runFor); err != nil {
		fmt.Fprintln(os.Stderr, "periodic:", err)
		os.Exit(1)
	}
}

func run(url string, runFor time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if runFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, runFor)
		defer cancel()
	}
	// On RabbitMQ, schedules need a result store; DOCKET_RESULT_URL names one.
	q, err := docket.Open(ctx, url, docket.ResultStore(os.Getenv("DOCKET_RESULT_URL")))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(heartbeat); err != nil {
		return err
	}
	// Every minute at second 0, on New York wall-clock time (DST-correct),
	// and every five seconds, aligned to the epoch so both processes agree.
	if err := heartbeat.Schedule(q, "ny-minutely", docket.Cron("0 * * * * *"), "new-york-minute",
		docket.TimeZone("America/New_York"), docket.CatchUp(10*time.Minute)); err != nil {
		return err
	}
	if err := heartbeat.Schedule(q, "every-5s", docket.Every(5*time.Second), "every-5s",
		docket.EnqueueWith(docket.Expires(time.Minute))); err != nil {
		return err
	}
	fmt.Printf("pid %d: scheduling on %s (Ctrl-C to stop)\n", os.Getpid(), q)
	err = q.Run(ctx)
	infos, _ := q.Schedules(context.Background())
	for _, in := range infos {
		last := "never fired"
		if !in.LastSlot.IsZero() {
			last = fmt.Sprintf("last slot %s (task %s, %s)", in.LastSlot.Format(time.TimeOnly), in.LastTaskID, in.LastTaskState)
		}
		fmt.Printf("%-12s next %s, %s\n", in.Name, in.NextAt.Format(time.TimeOnly), last)
	}
	return err
}
