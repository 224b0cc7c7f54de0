package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/docketq/docket"
)

// The fixture command, for the scripts in testdata: it plays the
// application whose tasks the docket command operates on.
//
//	fixture seed [--n N] [--fail F] [--panic P] [--queue Q]
//	    enqueue N "report" tasks, F of them (spread evenly) failing when
//	    run, the first P of those by panicking
//	fixture work [--fixed] [--until-idle] [--concurrency C] [--queues Q,...] [--max D]
//	    run a worker; --fixed: the cause is fixed and failing tasks succeed;
//	    --until-idle: stop once nothing is scheduled, ready or running
//	fixture flow [--n N] [--fail F]
//	    enqueue a chord: N "report" tasks (the first F failing) whose
//	    results "report.total" adds up
//	fixture schedule --name NAME [--every D]
//	    define a schedule of "report" and record it in the backend
//	fixture with-worker -- ARGS...
//	    run the docket command with ARGS while a worker runs
//	fixture json FILE PATH WANT
//	    check that FILE holds JSON whose value at PATH (a.0.b) is WANT
//	fixture exits CODE -- ARGS...
//	    run the docket command with ARGS (in this process, on this
//	    process's streams) and check that it exits with CODE
//
// Every subcommand takes --url and --result-url, defaulting to
// $DOCKET_URL and $DOCKET_RESULT_URL.

// reportArgs are the arguments of the fixture's "report" task.
type reportArgs struct {
	N     int  `json:"n"`
	Fail  bool `json:"fail,omitempty"`
	Panic bool `json:"panic,omitempty"`
}

type reportResult struct {
	Rows int `json:"rows"`
}

// reportTask is the "report" task; fixed says whether its failures were
// fixed.
func reportTask(fixed bool) *docket.Task[reportArgs, reportResult] {
	return docket.NewTask("report", func(ctx context.Context, a reportArgs) (reportResult, error) {
		if a.Fail && !fixed {
			if a.Panic {
				panic(fmt.Sprintf("report %d: nil map write in the exporter", a.N))
			}
			return reportResult{}, fmt.Errorf("report %d: upstream returned 503 Service Unavailable\nretry-after: 30", a.N)
		}
		return reportResult{Rows: a.N * 10}, nil
	}, docket.MaxRetries(0))
}

// totalTask adds up the rows of the reports of a fixture flow.
var totalTask = docket.NewTask("report.total", func(ctx context.Context, rs []reportResult) (int, error) {
	n := 0
	for _, r := range rs {
		n += r.Rows
	}
	return n, nil
})

func fixtureFlow(ctx context.Context, args []string) error {
	var n, fail int
	_, u, r, err := fixtureFlags("flow", args, func(fs *flag.FlagSet) {
		fs.IntVar(&n, "n", 3, "members")
		fs.IntVar(&fail, "fail", 0, "of which fail")
	})
	if err != nil {
		return err
	}
	q, err := openFixture(ctx, u, r)
	if err != nil {
		return err
	}
	defer q.Close()
	members := make([]docket.Flow[reportResult], n)
	for i := range members {
		members[i] = docket.Step(reportTask(false), reportArgs{N: i + 1, Fail: i < fail})
	}
	wf, err := docket.EnqueueFlow(ctx, q, docket.Then(docket.Group(members...), totalTask))
	if err != nil {
		return err
	}
	fmt.Println("workflow", wf.ID())
	return nil
}

func fixtureMain() int {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fixture seed|work|schedule|with-worker|json ...")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	sub, args := os.Args[1], os.Args[2:]
	var err error
	switch sub {
	case "seed":
		err = fixtureSeed(ctx, args)
	case "work":
		err = fixtureWork(ctx, args)
	case "flow":
		err = fixtureFlow(ctx, args)
	case "schedule":
		err = fixtureSchedule(ctx, args)
	case "with-worker":
		var code int
		code, err = fixtureWithWorker(ctx, args)
		if err == nil {
			return code
		}
	case "json":
		err = fixtureJSON(args)
	case "exits":
		err = fixtureExits(args)
	default:
		err = fmt.Errorf("unknown subcommand %q", sub)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fixture "+sub+":", err)
		return 1
	}
	return 0
}

// fixtureFlags parses args with the shared --url and --result-url.
func fixtureFlags(name string, args []string, def func(*flag.FlagSet)) (*flag.FlagSet, string, string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	u := fs.String("url", os.Getenv("DOCKET_URL"), "backend URL")
	r := fs.String("result-url", os.Getenv("DOCKET_RESULT_URL"), "result store URL")
	if def != nil {
		def(fs)
	}
	err := fs.Parse(args)
	return fs, *u, *r, err
}

func openFixture(ctx context.Context, u, r string, opts ...docket.Option) (*docket.Queue, error) {
	opts = append([]docket.Option{docket.ResultStore(r), docket.Logger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))}, opts...)
	return docket.Open(ctx, u, opts...)
}

func fixtureSeed(ctx context.Context, args []string) error {
	var n, fail, panics int
	var queue string
	_, u, r, err := fixtureFlags("seed", args, func(fs *flag.FlagSet) {
		fs.IntVar(&n, "n", 10, "tasks")
		fs.IntVar(&fail, "fail", 0, "of which fail")
		fs.IntVar(&panics, "panic", 0, "of the failing, panic")
		fs.StringVar(&queue, "queue", "default", "queue")
	})
	if err != nil {
		return err
	}
	if fail > n || panics > fail {
		return fmt.Errorf("want panic <= fail <= n")
	}
	q, err := openFixture(ctx, u, r)
	if err != nil {
		return err
	}
	defer q.Close()
	task := reportTask(false)
	batch := make([]reportArgs, 0, 1000)
	failed := 0
	for i := range n {
		a := reportArgs{N: i}
		// Exactly fail of the n tasks, spread evenly.
		if fail > 0 && i*fail/n != (i+1)*fail/n {
			a.Fail = true
			a.Panic = failed < panics
			failed++
		}
		batch = append(batch, a)
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := task.EnqueueMany(ctx, q, batch, docket.OnQueue(queue)); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	fmt.Printf("seeded %d tasks, %d failing\n", n, failed)
	return nil
}

// idle reports whether no task of the queues is scheduled, retrying,
// ready or running.
func idle(ctx context.Context, q *docket.Queue, queues map[string]int) (bool, error) {
	st, err := q.Stats(ctx)
	if err != nil {
		return false, err
	}
	for _, qs := range st.Queues {
		if _, ok := queues[qs.Name]; !ok {
			continue
		}
		for _, s := range []string{"scheduled", "retrying", "ready", "running"} {
			if qs.Counts[s] > 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

func fixtureWork(ctx context.Context, args []string) error {
	var fixed, untilIdle bool
	var conc int
	var limit time.Duration
	var queues string
	_, u, r, err := fixtureFlags("work", args, func(fs *flag.FlagSet) {
		fs.StringVar(&queues, "queues", "default", "queues to work on, comma-separated")
		fs.BoolVar(&fixed, "fixed", false, "failing tasks succeed")
		fs.BoolVar(&untilIdle, "until-idle", false, "stop when idle")
		fs.IntVar(&conc, "concurrency", 16, "handlers")
		fs.DurationVar(&limit, "max", 5*time.Minute, "give up after")
	})
	if err != nil {
		return err
	}
	weights := map[string]int{}
	for _, q := range strings.Split(queues, ",") {
		weights[q] = 1
	}
	q, err := openFixture(ctx, u, r, docket.Concurrency(conc), docket.ShutdownGrace(5*time.Second), docket.Queues(weights))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(reportTask(fixed), totalTask); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- q.Run(runCtx) }()
	if !untilIdle {
		<-ctx.Done()
		stopRun()
		return <-done
	}
	// Stats counts every task: under the race detector a call costs tens
	// of milliseconds, so the check is not made too often.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil { // Run ended because the time ran out
				return fmt.Errorf("not idle after %s", limit)
			}
			return fmt.Errorf("worker stopped: %v", err)
		case <-ctx.Done():
			stopRun()
			<-done
			return fmt.Errorf("not idle after %s", limit)
		case <-tick.C:
		}
		ok, err := idle(ctx, q, weights)
		if ctx.Err() != nil {
			continue // reported by the select
		}
		if err != nil {
			stopRun()
			<-done
			return err
		}
		if ok {
			stopRun()
			if err := <-done; err != nil {
				return err
			}
			fmt.Printf("idle after %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		}
	}
}

func fixtureSchedule(ctx context.Context, args []string) error {
	var name string
	var every time.Duration
	_, u, r, err := fixtureFlags("schedule", args, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "nightly-report", "schedule name")
		fs.DurationVar(&every, "every", time.Hour, "interval")
	})
	if err != nil {
		return err
	}
	q, err := openFixture(ctx, u, r)
	if err != nil {
		return err
	}
	defer q.Close()
	task := reportTask(false)
	if err := q.Register(task); err != nil {
		return err
	}
	if err := task.Schedule(q, name, docket.Every(every), reportArgs{N: 7}); err != nil {
		return err
	}
	// Drain brings the schedule up to now, which records it (and the task
	// it enqueues) in the backend.
	_, err = q.Drain(ctx)
	return err
}

// fixtureWithWorker runs the docket command while a worker of the
// fixture runs and is listed by Queue.Workers.
func fixtureWithWorker(ctx context.Context, args []string) (int, error) {
	fs, u, r, err := fixtureFlags("with-worker", args, nil)
	if err != nil {
		return 0, err
	}
	q, err := openFixture(ctx, u, r, docket.Concurrency(3))
	if err != nil {
		return 0, err
	}
	defer q.Close()
	if err := q.Register(reportTask(false)); err != nil {
		return 0, err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(runCtx) }()
	defer func() { stopRun(); <-done }()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for listed := false; !listed; {
		ws, err := q.Workers(wctx)
		if err != nil {
			return 0, err
		}
		for _, w := range ws {
			listed = listed || w.PID == os.Getpid()
		}
		if !listed {
			select {
			case <-wctx.Done():
				return 0, errors.New("the worker was never listed")
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return run(fs.Args(), strings.NewReader(""), os.Stdout, os.Stderr), nil
}

func fixtureJSON(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: fixture json FILE PATH WANT")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("%s does not parse: %v", args[0], err)
	}
	for _, key := range strings.Split(args[1], ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[key]; !ok {
				return fmt.Errorf("%s: no key %q", args[1], key)
			}
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(x) {
				return fmt.Errorf("%s: no index %q in an array of %d", args[1], key, len(x))
			}
			v = x[i]
		default:
			return fmt.Errorf("%s: %q indexes a %T", args[1], key, v)
		}
	}
	got := fmt.Sprint(v)
	if v == nil {
		got = "null"
	}
	if got != args[2] {
		return fmt.Errorf("%s = %s, want %s", args[1], got, args[2])
	}
	return nil
}

func fixtureExits(args []string) error {
	if len(args) < 2 || args[1] != "--" {
		return errors.New("usage: fixture exits CODE -- ARGS...")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	if got := run(args[2:], os.Stdin, os.Stdout, os.Stderr); got != want {
		return fmt.Errorf("docket exited %d, want %d", got, want)
	}
	return nil
}
