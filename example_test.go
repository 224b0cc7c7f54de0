package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
)

// A typed task, enqueued and run by in-process workers.
func ExampleNewTask() {
	ctx := context.Background()
	q, err := docket.Open(ctx, "memory:")
	if err != nil {
		panic(err)
	}
	defer q.Close()

	greet := docket.NewTask("greet", func(ctx context.Context, name string) (string, error) {
		return "hello, " + name, nil
	})
	q.Register(greet)

	workers, stop := context.WithCancel(ctx)
	defer stop()
	go q.Run(workers)

	res, err := greet.Enqueue(ctx, q, "world")
	if err != nil {
		panic(err)
	}
	msg, err := res.Wait(ctx)
	fmt.Println(msg, err)
	// Output: hello, world <nil>
}

// Handlers steer retries with errors: a plain error retries with backoff,
// RetryAfter picks the delay, Permanent fails at once.
func ExampleRetryAfter() {
	ctx := context.Background()
	clock := dockettest.NewClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	q, _ := docket.Open(ctx, "memory:", docket.WithClock(clock))
	defer q.Close()

	poll := docket.NewTask("poll.export", func(ctx context.Context, job string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		if tc.Attempt < 3 {
			return "", docket.RetryAfter(30 * time.Second) // not ready yet
		}
		return job + " is ready", nil
	})
	q.Register(poll)
	res, _ := poll.Enqueue(ctx, q, "export-7")

	for range 3 {
		q.Drain(ctx) // runs what is due, synchronously
		info, _ := res.Info(ctx)
		fmt.Println(info.State, "after attempt", info.Attempt)
		clock.Advance(30 * time.Second)
	}
	out, _ := res.Wait(ctx)
	fmt.Println(out)
	// Output:
	// scheduled after attempt 1
	// scheduled after attempt 2
	// succeeded after attempt 3
	// export-7 is ready
}

// Permanent failures and exhausted retries come back from Wait as a
// *TaskError.
func ExamplePermanent() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()

	parse := docket.NewTask("parse", func(ctx context.Context, s string) (int, error) {
		return 0, docket.Permanent(fmt.Errorf("%q is not a number", s))
	})
	q.Register(parse)
	res, _ := parse.Enqueue(ctx, q, "ten")
	q.Drain(ctx)

	_, err := res.Wait(ctx)
	var te *docket.TaskError
	fmt.Println(errors.Is(err, docket.ErrTaskFailed), errors.As(err, &te) && te.Attempt == 1)
	fmt.Println(te.Message)
	// Output:
	// true true
	// "ten" is not a number
}

// Unique keys keep one unfinished task per key.
func ExampleUnique() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()
	rebuild := docket.NewTask("search.rebuild", func(ctx context.Context, index string) (bool, error) { return true, nil })
	q.Register(rebuild)

	a, _ := rebuild.Enqueue(ctx, q, "products", docket.Unique("rebuild:products", docket.ReturnExisting))
	b, _ := rebuild.Enqueue(ctx, q, "products", docket.Unique("rebuild:products", docket.ReturnExisting))
	_, err := rebuild.Enqueue(ctx, q, "products", docket.Unique("rebuild:products", docket.RejectDuplicate))
	fmt.Println(a.ID() == b.ID(), errors.Is(err, docket.ErrDuplicate))
	// Output: true true
}

// Validation errors are typed and nothing is written.
func ExampleValidationError() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()
	t := docket.NewTask("report", func(ctx context.Context, _ int) (int, error) { return 0, nil })
	q.Register(t)

	_, err := t.Enqueue(ctx, q, 1, docket.Countdown(-time.Minute))
	var ve *docket.ValidationError
	fmt.Println(errors.As(err, &ve), ve.Field)
	fmt.Println(err)
	// Output:
	// true Countdown
	// docket: invalid Countdown -1m0s: countdown must be zero or positive, under 100 years
}

// The operations API: find the tasks that failed, read why, fix the cause
// and retry them all, in batches.
func ExampleQueue_Act() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()

	diskFull := true
	report := docket.NewTask("report", func(ctx context.Context, n int) (int, error) {
		if n%4 == 0 && diskFull {
			return 0, docket.Permanent(fmt.Errorf("report %d: disk full", n))
		}
		return n, nil
	})
	q.Register(report)
	for n := range 12 {
		report.Enqueue(ctx, q, n)
	}
	q.Drain(ctx)

	failed := docket.Filter{States: []string{"failed"}}
	page, _ := q.Search(ctx, docket.SearchOptions{Filter: failed, Limit: 2})
	for _, t := range page.Tasks {
		fmt.Println(t.State, string(t.Args), t.Error)
	}

	diskFull = false
	res, _ := q.Act(ctx, docket.ActionRetry, docket.Target{Filter: &failed})
	fmt.Println("retried:", res.Changed)
	q.Drain(ctx)

	st, _ := q.Stats(ctx)
	fmt.Println(st.Queues[0].Name, st.Queues[0].Counts["succeeded"], "succeeded,", st.Queues[0].Counts["failed"], "failed")
	// Output:
	// failed 0 report 0: disk full
	// failed 4 report 4: disk full
	// retried: 3
	// default 12 succeeded, 0 failed
}

// A handler reports its progress; Info, the docket command and the
// dashboard show it.
func ExampleProgress() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()

	resize := docket.NewTask("images.resize", func(ctx context.Context, files []string) (int, error) {
		for i := range files {
			// ... resize files[i] ...
			docket.Progress(ctx, int64(i+1), int64(len(files)))
		}
		return len(files), nil
	})
	q.Register(resize)
	res, _ := resize.Enqueue(ctx, q, []string{"a.png", "b.png", "c.png"})
	q.Drain(ctx)

	info, _ := res.Info(ctx)
	fmt.Println(info.State, string(info.Progress))
	// Output: succeeded {"done":3,"total":3}
}

// Middleware wraps every handler like net/http middleware; enqueue
// middleware adds a header on the producer side, and the worker's
// middleware reads it. OnEvent reports how each attempt ended.
func ExampleUse() {
	ctx := context.Background()
	type tenantKey struct{}
	stampTenant := func(next docket.EnqueueFunc) docket.EnqueueFunc {
		return func(ctx context.Context, e *docket.Enqueueing) error {
			e.Headers["tenant"] = "acme"
			return next(ctx, e)
		}
	}
	withTenant := func(next docket.Handler) docket.Handler {
		return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
			return next(context.WithValue(ctx, tenantKey{}, j.Headers["tenant"]), j)
		}
	}
	report := func(e docket.Event) {
		if e.Kind != docket.EventEnqueued {
			fmt.Println(e.Name, "attempt", e.Attempt, e.Kind)
		}
	}
	q, _ := docket.Open(ctx, "memory:", docket.UseEnqueue(stampTenant), docket.Use(withTenant), docket.OnEvent(report))
	defer q.Close()

	invoice := docket.NewTask("invoice.send", func(ctx context.Context, n int) (string, error) {
		if tc, _ := docket.FromContext(ctx); tc.Attempt == 1 {
			return "", docket.RetryAfter(0) // a flaky first try
		}
		return fmt.Sprintf("invoice %d for %s", n, ctx.Value(tenantKey{})), nil
	})
	q.Register(invoice)
	res, _ := invoice.Enqueue(ctx, q, 42)
	q.Drain(ctx)
	fmt.Println(res.Wait(ctx))
	// Output:
	// invoice.send attempt 1 retried
	// invoice.send attempt 2 succeeded
	// invoice 42 for acme <nil>
}

// A chord inside a chain: the group's members run side by side, the next
// step takes their results in order, and the last takes that one's. The
// compiler checks each link's types.
func ExampleEnqueueFlow() {
	ctx := context.Background()
	q, _ := docket.Open(ctx, "memory:")
	defer q.Close()

	square := docket.NewTask("math.square", func(ctx context.Context, n int) (int, error) { return n * n, nil })
	sum := docket.NewTask("math.sum", func(ctx context.Context, ns []int) (int, error) {
		s := 0
		for _, n := range ns {
			s += n
		}
		return s, nil
	})
	describe := docket.NewTask("math.describe", func(ctx context.Context, n int) (string, error) {
		return fmt.Sprintf("the squares add up to %d", n), nil
	})
	q.Register(square, sum, describe)

	flow := docket.Then(docket.Then(docket.Group(
		docket.Step(square, 1), docket.Step(square, 2), docket.Step(square, 3),
	), sum), describe)
	wf, err := docket.EnqueueFlow(ctx, q, flow)
	if err != nil {
		panic(err)
	}
	q.Drain(ctx) // or q.Run: the steps run on any worker
	fmt.Println(wf.Wait(ctx))
	// Output: the squares add up to 14 <nil>
}
