// Command quickstart shows docket's single-binary story: one SQLite file,
// typed tasks, in-process workers, a countdown, a retry and a failure, and
// results waited on.
//
//	go run ./examples/quickstart                    # ./docket.db
//	DOCKET_URL=memory: go run ./examples/quickstart # nothing on disk
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/all" // DOCKET_URL may name Redis
)

// Email is the argument of the email.send task.
type Email struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
}

var (
	add = docket.NewTask("math.add", func(ctx context.Context, xy [2]int) (int, error) {
		return xy[0] + xy[1], nil
	})

	sendEmail = docket.NewTask("email.send", func(ctx context.Context, e Email) (string, error) {
		return "queued for " + e.To, nil
	}, docket.MaxRetries(5), docket.Timeout(30*time.Second))

	flakyCalls atomic.Int32
	// flaky fails twice, then succeeds: retries with backoff.
	flaky = docket.NewTask("report.flaky", func(ctx context.Context, name string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		if flakyCalls.Add(1) <= 2 {
			return "", fmt.Errorf("upstream timeout (attempt %d)", tc.Attempt)
		}
		return fmt.Sprintf("report %q ready after %d attempts", name, tc.Attempt), nil
	}, docket.RetryBackoff(docket.Exponential{Base: 100 * time.Millisecond, Max: time.Second}))

	// broken refuses its input: a permanent failure, not retried.
	broken = docket.NewTask("import.csv", func(ctx context.Context, path string) (int, error) {
		return 0, docket.Permanent(fmt.Errorf("%s: not a CSV file", path))
	})
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The environment names the backend; "" means ./docket.db.
	q, err := docket.Open(ctx, os.Getenv("DOCKET_URL"), docket.Concurrency(4),
		docket.ResultStore(os.Getenv("DOCKET_RESULT_URL"))) // RabbitMQ's result store, if any
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(add, sendEmail, flaky, broken); err != nil {
		return err
	}
	fmt.Println("docket quickstart on", q)

	workers, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	stopped := make(chan error, 1)
	go func() { stopped <- q.Run(workers) }()

	sum, err := add.Enqueue(ctx, q, [2]int{2, 3})
	if err != nil {
		return err
	}
	mail, err := sendEmail.Enqueue(ctx, q, Email{To: "ann@example.com", Subject: "Welcome"}, docket.Countdown(time.Second))
	if err != nil {
		return err
	}
	report, err := flaky.Enqueue(ctx, q, "weekly")
	if err != nil {
		return err
	}
	imp, err := broken.Enqueue(ctx, q, "/tmp/photo.png")
	if err != nil {
		return err
	}

	start := time.Now()
	v, err := sum.Wait(ctx)
	fmt.Printf("math.add(2, 3)         = %d (err: %v)\n", v, err)
	s, err := mail.Wait(ctx)
	fmt.Printf("email.send in 1s       = %q after %s (err: %v)\n", s, time.Since(start).Round(100*time.Millisecond), err)
	s, err = report.Wait(ctx)
	fmt.Printf("report.flaky           = %q (err: %v)\n", s, err)
	_, err = imp.Wait(ctx)
	fmt.Printf("import.csv failed      = %v (is ErrTaskFailed: %v)\n", firstLine(err), errors.Is(err, docket.ErrTaskFailed))

	unexpected, err := finalStates(ctx, q, []string{sum.ID(), mail.ID(), report.ID(), imp.ID()},
		[]docket.State{docket.StateSucceeded, docket.StateSucceeded, docket.StateSucceeded, docket.StateFailed})
	if err != nil {
		return err
	}

	stopWorkers()
	if err := <-stopped; err != nil {
		return err
	}
	if len(unexpected) > 0 || v != 5 {
		return fmt.Errorf("unexpected outcome: sum=%d %s", v, strings.Join(unexpected, "; "))
	}
	return nil
}

// finalStates prints each task's final state and lists those that differ
// from what was expected.
func finalStates(ctx context.Context, q *docket.Queue, ids []string, want []docket.State) ([]string, error) {
	fmt.Println("final states:")
	var unexpected []string
	for i, id := range ids {
		info, err := q.Info(ctx, id)
		if err != nil {
			return nil, err
		}
		fmt.Printf("  %-13s %-9s attempts=%d\n", info.Name, info.State, info.Attempt)
		if info.State != want[i] {
			unexpected = append(unexpected, fmt.Sprintf("%s is %s, want %s", info.Name, info.State, want[i]))
		}
	}
	return unexpected, nil
}

func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
