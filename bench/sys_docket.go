package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/docketq/docket"
)

// docketSystem runs docket on a SQLite file with its defaults (one writer
// connection with group commit, batched completion, in-process wake-ups,
// 5 ms cross-process polling).
type docketSystem struct{}

func (docketSystem) Name() string                        { return "docket" }
func (docketSystem) Available(ctx context.Context) error { return nil }
func (docketSystem) dbFile() string                      { return "docket.db" }

func (docketSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return sqliteStorage(ctx, filepath.Join(dir, docketSystem{}.dbFile()))
}

// stampArgs carries the enqueue time for latency measurements; it encodes
// as {} when zero.
type stampArgs struct {
	T int64 `json:"t,omitempty"`
}

type docketInstance struct {
	q       *docket.Queue
	task    *docket.Task[stampArgs, struct{}]
	stop    context.CancelFunc
	stopped chan error
}

// The workflow measurement's tasks (flowRunner).
var (
	flowAdd = docket.NewTask("bench.add1", func(ctx context.Context, n int) (int, error) { return n + 1, nil })
	flowSum = docket.NewTask("bench.sum", func(ctx context.Context, ns []int) (int, error) {
		s := 0
		for _, n := range ns {
			s += n
		}
		return s, nil
	})
)

func (docketSystem) Open(ctx context.Context, o Options) (Instance, error) {
	return openDocket(ctx, "sqlite:"+filepath.Join(o.Dir, docketSystem{}.dbFile()), o)
}

// openDocket opens docket on url with the harness's options, then extra.
func openDocket(ctx context.Context, url string, o Options, extra ...docket.Option) (*docketInstance, error) {
	opts := append([]docket.Option{docket.Concurrency(max(1, o.Concurrency))}, extra...)
	var taskOpts []docket.TaskOption
	if !o.Results {
		taskOpts = append(taskOpts, docket.IgnoreResult())
	}
	if o.ShortRetention {
		opts = append(opts, docket.PruneInterval(10*time.Millisecond))
		taskOpts = append(taskOpts, docket.ResultTTL(time.Millisecond))
	}
	q, err := docket.Open(ctx, url, opts...)
	if err != nil {
		return nil, err
	}
	h := o.Handler
	if h == nil {
		h = func(int64) {}
	}
	task := docket.NewTask("bench.noop", func(ctx context.Context, a stampArgs) (struct{}, error) {
		h(a.T)
		return struct{}{}, nil
	}, taskOpts...)
	if err := q.Register(task, flowAdd, flowSum); err != nil {
		q.Close()
		return nil, err
	}
	return &docketInstance{q: q, task: task}, nil
}

func (d *docketInstance) Enqueue(ctx context.Context, stamp int64) error {
	_, err := d.task.Enqueue(ctx, d.q, stampArgs{T: stamp})
	return err
}

func (d *docketInstance) EnqueueWait(ctx context.Context) error {
	r, err := d.task.Enqueue(ctx, d.q, stampArgs{})
	if err != nil {
		return err
	}
	_, err = r.Wait(ctx)
	return err
}

// Chain implements flowRunner.
func (d *docketInstance) Chain(ctx context.Context, n int) error {
	flow := docket.Step(flowAdd, 0)
	for range n - 1 {
		flow = docket.Then(flow, flowAdd)
	}
	return d.runFlow(ctx, flow, n)
}

// Independent implements flowRunner.
func (d *docketInstance) Independent(ctx context.Context, n int) error {
	rs, err := flowAdd.EnqueueMany(ctx, d.q, make([]int, n))
	if err != nil {
		return err
	}
	for _, r := range rs {
		if _, err := r.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Chord implements flowRunner.
func (d *docketInstance) Chord(ctx context.Context, n int) error {
	members := make([]docket.Flow[int], n)
	for i := range members {
		members[i] = docket.Step(flowAdd, i)
	}
	return d.runFlow(ctx, docket.Then(docket.Group(members...), flowSum), n*(n+1)/2)
}

func (d *docketInstance) runFlow(ctx context.Context, flow docket.Flow[int], want int) error {
	wf, err := docket.EnqueueFlow(ctx, d.q, flow)
	if errors.Is(err, docket.ErrUnsupported) {
		return &NA{Reason: err.Error()}
	}
	if err != nil {
		return err
	}
	got, err := wf.Wait(ctx)
	if err == nil && got != want {
		err = fmt.Errorf("workflow result %d, want %d", got, want)
	}
	return err
}

func (d *docketInstance) EnqueueBatch(ctx context.Context, n int) error {
	_, err := d.task.EnqueueMany(ctx, d.q, make([]stampArgs, n))
	return err
}

func (d *docketInstance) Start(ctx context.Context) error {
	if d.stop != nil {
		return errors.New("docket: already started")
	}
	runCtx, stop := context.WithCancel(context.Background())
	d.stop, d.stopped = stop, make(chan error, 1)
	go func() { d.stopped <- d.q.Run(runCtx) }()
	return nil
}

func (d *docketInstance) Stop(ctx context.Context) error {
	if d.stop == nil {
		return nil
	}
	d.stop()
	d.stop = nil
	select {
	case err := <-d.stopped:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *docketInstance) Unfinished(ctx context.Context) (bool, error) {
	l, err := d.q.List(ctx, docket.ListOptions{States: []docket.State{docket.StateScheduled, docket.StateReady, docket.StateRunning}, Limit: 1})
	return len(l) > 0, err
}

func (d *docketInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	poll, err := waitFor(ctx, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		l, err := d.q.List(ctx, docket.ListOptions{States: []docket.State{docket.StateSucceeded}, Limit: 1})
		return len(l) == 0, err
	})
	return "pruner: ResultTTL(1ms), PruneInterval(10ms); deletes in batches of 1000 then PRAGMA incremental_vacuum", poll, err
}

func (d *docketInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := d.Stop(ctx)
	return errors.Join(err, d.q.Close())
}
