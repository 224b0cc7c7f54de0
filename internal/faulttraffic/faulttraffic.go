// Package faulttraffic is the traffic of docket's fault tests: through
// docket's public API, a producer enqueues tasks continuously and a worker
// runs them while a fault (a killed server, cut connections, a stalled
// network) comes and goes. Afterwards it checks that every task whose
// enqueue was acknowledged completed with its own result and that the
// worker recovered by itself, and it counts the tasks that ran more than
// once. It is used only by tests.
package faulttraffic

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// Config describes one run.
type Config struct {
	// URL and Options open the Queue, with docket.Open.
	URL     string
	Options []docket.Option
	// Settle is how long traffic flows before the fault starts.
	Settle time.Duration
	// Wait bounds the wait for the acknowledged tasks after the fault.
	Wait time.Duration
	// Strict fails the test when a handler started after its task's
	// completion was recorded, which a backend that keeps its own task
	// state never allows. Runs of a task before its completion (after a
	// lost lease) are allowed in every mode: delivery is at least once.
	Strict bool
	// AllowLoss counts the acknowledged tasks that no longer exist
	// afterwards (Report.Lost) instead of failing the test: for a backend
	// whose documented guarantee allows losing acknowledged writes (Redis
	// failing over to an asynchronous replica).
	AllowLoss bool
}

// Report is what a run saw.
type Report struct {
	Acked    int // enqueues acknowledged; each of those tasks completed
	Failures int // enqueues that returned an error during the fault
	Repeated int // acknowledged tasks whose handler ran more than once
	Late     int // handler runs that started after their task completed
	Lost     int // acknowledged tasks gone afterwards (with AllowLoss)
}

type item struct {
	N int `json:"n"`
}

// sent is an acknowledged enqueue.
type sent struct {
	n int
	r *docket.Result[int]
}

// traffic is the state of one run.
type traffic struct {
	t    testing.TB
	q    *docket.Queue
	task *docket.Task[item, int]

	mu     sync.Mutex
	starts map[int][]time.Time // handler starts, by item

	acked    []sent // written by the producer until it stops
	failures int
	lost     map[int]bool // acknowledged tasks gone (AllowLoss)
	allow    bool
}

// Run opens a Queue from cfg, runs a worker and a producer, calls fault
// once traffic has settled, then stops the producer and checks the
// outcome, failing t on a lost task, a wrong result, a worker that did not
// stop cleanly or (with cfg.Strict) a run after completion.
func Run(t testing.TB, cfg Config, fault func()) Report {
	t.Helper()
	ctx := context.Background()
	q, err := docket.Open(ctx, cfg.URL, cfg.Options...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	tr := &traffic{t: t, q: q, starts: map[int][]time.Time{}, lost: map[int]bool{}, allow: cfg.AllowLoss}
	tr.task = docket.NewTask("fault.item", func(ctx context.Context, it item) (int, error) {
		tr.mu.Lock()
		tr.starts[it.N] = append(tr.starts[it.N], time.Now())
		tr.mu.Unlock()
		return it.N, nil
	})
	if err := q.Register(tr.task); err != nil {
		t.Fatal(err)
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	workersDone := make(chan error, 1)
	go func() { workersDone <- q.Run(wctx) }()

	stop := make(chan struct{})
	produced := make(chan struct{})
	go tr.produce(ctx, stop, produced)
	time.Sleep(cfg.Settle)
	fault()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-produced

	tr.waitAll(ctx, cfg.Wait)
	stopWorkers()
	if err := <-workersDone; err != nil {
		t.Errorf("Run: %v", err)
	}
	rep := tr.report(ctx)
	t.Logf("%d acknowledged, %d lost, %d enqueue errors during the fault, %d run more than once, %d runs after completion",
		rep.Acked, rep.Lost, rep.Failures, rep.Repeated, rep.Late)
	if rep.Acked == 0 {
		t.Fatal("nothing was acknowledged")
	}
	if cfg.Strict && rep.Late > 0 {
		t.Errorf("%d handler runs started after their task's completion was recorded", rep.Late)
	}
	return rep
}

// produce enqueues items until stop is closed, each with a 3s deadline.
// A failed enqueue is a definite error the caller would retry; it is
// counted, not retried.
func (tr *traffic) produce(ctx context.Context, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		r, err := tr.task.Enqueue(cctx, tr.q, item{n})
		cancel()
		if err != nil {
			if tr.failures == 0 {
				tr.t.Logf("first enqueue error: %v", err)
			}
			tr.failures++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		tr.acked = append(tr.acked, sent{n, r})
		time.Sleep(2 * time.Millisecond)
	}
}

// waitAll waits, up to wait in all, for every acknowledged task to
// succeed with its own number.
func (tr *traffic) waitAll(ctx context.Context, wait time.Duration) {
	tr.t.Helper()
	deadline, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for _, a := range tr.acked {
		v, err := a.r.Wait(deadline)
		if tr.allow && errors.Is(err, docket.ErrNotFound) {
			tr.lost[a.n] = true
			continue
		}
		if err != nil || v != a.n {
			in, ierr := a.r.Info(context.Background())
			if ierr == nil {
				tr.t.Fatalf("acknowledged task %s: %v, %v; it is %s after %d attempts (error %q, created %s, started %s, worker %q)",
					a.r.ID(), v, err, in.State, in.Attempt, in.Error, in.Created.Format(time.RFC3339Nano), in.Started.Format(time.RFC3339Nano), in.Worker)
			}
			tr.t.Fatalf("acknowledged task %s: %v, %v (info: %v)", a.r.ID(), v, err, ierr)
		}
	}
}

// report counts the repeated and late runs of the acknowledged tasks.
func (tr *traffic) report(ctx context.Context) Report {
	tr.t.Helper()
	rep := Report{Acked: len(tr.acked), Failures: tr.failures, Lost: len(tr.lost)}
	for _, a := range tr.acked {
		if tr.lost[a.n] {
			continue
		}
		info, err := a.r.Info(ctx)
		if err != nil {
			tr.t.Fatal(err)
		}
		tr.mu.Lock()
		runs := tr.starts[a.n]
		tr.mu.Unlock()
		if len(runs) > 1 {
			rep.Repeated++
		}
		for _, s := range runs {
			if s.After(info.Finished.Add(50 * time.Millisecond)) {
				rep.Late++
			}
		}
	}
	return rep
}
