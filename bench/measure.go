package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Metric is one row of the table.
type Metric struct {
	// Key names the value in Result.Values.
	Key string
	// Label says what was measured, with the unit.
	Label string
	// HigherBetter orients the ratio column: docket/peer when true,
	// peer/docket when false, so that >1 always means docket did better.
	HigherBetter bool
	// Scale converts the raw value to the unit shown.
	Scale float64
}

// Result is what one measurement of one system produced.
type Result struct {
	// Values holds the raw value of each metric, by Metric.Key.
	Values map[string]float64
	// Notes are printed under the table (e.g. a drain that was cut off).
	Notes []string
}

// note adds s to the notes unless it is empty.
func (r *Result) note(s string) {
	if s != "" {
		r.Notes = append(r.Notes, s)
	}
}

// Measurement is one named thing the harness measures on every system.
type Measurement struct {
	// Name is what -only selects.
	Name string
	// Metrics are the table rows this measurement fills.
	Metrics []Metric
	// Runs overrides the harness's repeat count (e.g. 1 for a deterministic
	// size); 0 means the -runs flag.
	Runs int
	// Run measures one system once.
	Run func(ctx context.Context, h *Harness, s System) (Result, error)
}

// Scale holds the sizes and durations of one harness run (-quick shrinks
// them).
type Scale struct {
	EnqueueFor   time.Duration // per enqueue-rate measurement
	DrainN       int           // tasks drained
	DrainCap     time.Duration // a drain that takes longer is cut off
	LatencyRate  int           // tasks/s
	LatencyFor   time.Duration // duration of the steady stream
	ClaimTasks   int           // tasks claimed at each depth
	RSSN         int           // tasks drained in the RSS child
	SizeN        int           // pending tasks for the size rows
	IdleFor      time.Duration // idle CPU window
	SettleBefore time.Duration // after Start, before a latency stream
}

func fullScale() Scale {
	return Scale{
		EnqueueFor: 2 * time.Second, DrainN: 50_000, DrainCap: 60 * time.Second,
		LatencyRate: 500, LatencyFor: 5 * time.Second,
		ClaimTasks: 1_000, RSSN: 50_000, SizeN: 100_000, IdleFor: 10 * time.Second, SettleBefore: 300 * time.Millisecond,
	}
}

func quickScale() Scale {
	return Scale{
		EnqueueFor: 500 * time.Millisecond, DrainN: 5_000, DrainCap: 20 * time.Second,
		LatencyRate: 500, LatencyFor: time.Second,
		ClaimTasks: 1_000, RSSN: 5_000, SizeN: 5_000, IdleFor: 2 * time.Second, SettleBefore: 200 * time.Millisecond,
	}
}

// fill enqueues n no-op tasks untimed: in batches of 1,000 where the system
// has a batch call, otherwise from 16 goroutines.
func fill(ctx context.Context, inst Instance, n int) error {
	const batch = 1000
	err := inst.EnqueueBatch(ctx, min(batch, n))
	switch {
	case err == nil:
		for left := n - min(batch, n); left > 0; left -= batch {
			if err := inst.EnqueueBatch(ctx, min(batch, left)); err != nil {
				return err
			}
		}
		return nil
	case !errors.Is(err, ErrUnsupported):
		return err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for g := range errs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := inst.Enqueue(ctx, 0); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func tasksPerSec(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// openFresh opens s with a fresh store in a new directory.
func (h *Harness) openFresh(ctx context.Context, s System, o Options) (Instance, string, error) {
	dir, err := h.newDir()
	if err != nil {
		return nil, "", err
	}
	o.Dir, o.Poll, o.Fresh = dir, h.Poll, true
	inst, err := s.Open(ctx, o)
	return inst, dir, err
}

// measureEnqueue runs goroutines, each calling one until the time is up.
func measureEnqueue(ctx context.Context, h *Harness, s System, goroutines, perCall int) (Result, error) {
	inst, _, err := h.openFresh(ctx, s, Options{Concurrency: 1})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	call := func() error { return inst.Enqueue(ctx, 0) }
	if perCall > 1 {
		call = func() error { return inst.EnqueueBatch(ctx, perCall) }
	}
	// Warm up (prepared statements, connection setup), untimed.
	for range 10 {
		if err := call(); err != nil {
			return Result{}, err
		}
	}
	var calls atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, goroutines)
	t0 := time.Now()
	deadline := t0.Add(h.Scale.EnqueueFor)
	for g := range goroutines {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if err := call(); err != nil {
					errs[g] = err
					return
				}
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}
	return Result{Values: map[string]float64{"rate": tasksPerSec(int(calls.Load())*perCall, elapsed)}}, nil
}

// measureDrain enqueues n tasks, starts workers at conc and times until all
// n ran and the system reports none unfinished.
func measureDrain(ctx context.Context, h *Harness, s System, conc int) (Result, error) {
	n := h.Scale.DrainN
	dir, err := h.newDir()
	if err != nil {
		return Result{}, err
	}
	var ran atomic.Int64
	done := make(chan struct{})
	inst, err := s.Open(ctx, Options{Dir: dir, Concurrency: conc, Poll: h.Poll, Fresh: true, Handler: func(int64) {
		if ran.Add(1) == int64(n) {
			close(done)
		}
	}})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := fill(ctx, inst, n); err != nil {
		return Result{}, fmt.Errorf("fill: %w", err)
	}
	var res Result
	t0 := time.Now()
	if err := inst.Start(ctx); err != nil {
		return Result{}, err
	}
	select {
	case <-done:
		poll, err := waitDone(ctx, inst, time.Millisecond)
		if err != nil {
			return Result{}, err
		}
		res.Values = map[string]float64{"rate": tasksPerSec(n, time.Since(t0))}
		res.note(poll.Note("checking that all are recorded done"))
	case <-time.After(h.Scale.DrainCap):
		k := int(ran.Load())
		res.Values = map[string]float64{"rate": tasksPerSec(k, time.Since(t0))}
		res.Notes = append(res.Notes, fmt.Sprintf("cut off after %s with %d of %d run; the rate shown is over those", h.Scale.DrainCap, k, n))
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return res, inst.Stop(stopCtx)
}

// latencyRecorder collects enqueue-to-start latencies.
type latencyRecorder struct {
	mu   sync.Mutex
	lats []time.Duration
	want int
	done chan struct{}
}

func newLatencyRecorder(want int) *latencyRecorder {
	return &latencyRecorder{want: want, done: make(chan struct{}), lats: make([]time.Duration, 0, want)}
}

func (l *latencyRecorder) handle(stamp int64) {
	if stamp == 0 {
		return
	}
	d := time.Duration(time.Now().UnixNano() - stamp)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lats = append(l.lats, d)
	if len(l.lats) == l.want {
		close(l.done)
	}
}

// percentiles returns p50 and p99 in milliseconds, and the count.
func (l *latencyRecorder) percentiles() (p50, p99 float64, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.lats)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		return float64(s[max(0, min(i, len(s)-1))]) / float64(time.Millisecond)
	}
	return q(0.50), q(0.99), len(s)
}

// produceSteady enqueues n stamped tasks at rate per second. A pacer hands
// out slots on schedule and 8 producer goroutines take them, so one slow
// enqueue does not delay the next arrival; each stamp is taken just before
// its Enqueue call. It returns a note if the producers fell behind.
func produceSteady(ctx context.Context, inst Instance, n, rate int) (string, error) {
	slots := make(chan struct{}, n)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for g := range errs {
		wg.Go(func() {
			for range slots {
				if errs[g] != nil {
					continue
				}
				errs[g] = inst.Enqueue(ctx, time.Now().UnixNano())
			}
		})
	}
	interval := time.Second / time.Duration(rate)
	t0 := time.Now()
	for i := range n {
		if d := time.Until(t0.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		slots <- struct{}{}
	}
	close(slots)
	wg.Wait()
	var note string
	if got := tasksPerSec(n, time.Since(t0)); got < 0.95*float64(rate) {
		note = fmt.Sprintf("the producers fell behind: %.0f tasks/s enqueued instead of %d", got, rate)
	}
	return note, errors.Join(errs...)
}

const latencyConcurrency = 8

// measureLatency streams stamped tasks at a steady rate into workers in the
// same process.
func measureLatency(ctx context.Context, h *Harness, s System) (Result, error) {
	n := h.Scale.LatencyRate * int(h.Scale.LatencyFor/time.Second)
	n = max(n, h.Scale.LatencyRate)
	rec := newLatencyRecorder(n)
	inst, _, err := h.openFresh(ctx, s, Options{Concurrency: latencyConcurrency, Handler: rec.handle})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := inst.Start(ctx); err != nil {
		return Result{}, err
	}
	time.Sleep(h.Scale.SettleBefore)
	note, err := produceSteady(ctx, inst, n, h.Scale.LatencyRate)
	if err != nil {
		return Result{}, err
	}
	res := Result{Values: map[string]float64{}}
	res.note(note)
	select {
	case <-rec.done:
	case <-time.After(30 * time.Second):
	}
	p50, p99, got := rec.percentiles()
	if got < n {
		return Result{}, fmt.Errorf("only %d of %d tasks started within 30s of the last enqueue", got, n)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res.Values["p50"], res.Values["p99"] = p50, p99
	return res, inst.Stop(stopCtx)
}

// measureLatency2P is measureLatency with the workers in a child process on
// the same store: this process only enqueues.
func measureLatency2P(ctx context.Context, h *Harness, s System) (Result, error) {
	n := h.Scale.LatencyRate * int(h.Scale.LatencyFor/time.Second)
	n = max(n, h.Scale.LatencyRate)
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: 1})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	child, err := h.startChild(ctx, ChildSpec{Role: roleLatency, System: s.Name(), Dir: dir, Concurrency: latencyConcurrency, N: n})
	if err != nil {
		return Result{}, err
	}
	defer child.kill()
	if err := child.waitLine("ready", time.Minute); err != nil {
		return Result{}, err
	}
	time.Sleep(h.Scale.SettleBefore)
	note, err := produceSteady(ctx, inst, n, h.Scale.LatencyRate)
	if err != nil {
		return Result{}, err
	}
	v, err := child.result(time.Minute)
	if err != nil {
		return Result{}, err
	}
	res := Result{Values: v}
	res.note(note)
	return res, nil
}

// measureClaim times claiming and completing tasks from the head of a
// queue that holds depth pending tasks: from the start of the first task to
// the start of task ClaimTasks, at concurrency 8, per task.
func measureClaim(ctx context.Context, h *Harness, s System, depth int) (Result, error) {
	k := min(h.Scale.ClaimTasks, depth)
	dir, err := h.newDir()
	if err != nil {
		return Result{}, err
	}
	var ran atomic.Int64
	var first, last atomic.Int64
	done := make(chan struct{})
	inst, err := s.Open(ctx, Options{Dir: dir, Concurrency: 8, Poll: h.Poll, Fresh: true, Handler: func(int64) {
		switch ran.Add(1) {
		case 1:
			first.Store(time.Now().UnixNano())
		case int64(k):
			last.Store(time.Now().UnixNano())
			close(done)
		}
	}})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := fill(ctx, inst, depth); err != nil {
		return Result{}, fmt.Errorf("fill: %w", err)
	}
	if err := inst.Start(ctx); err != nil {
		return Result{}, err
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		return Result{}, fmt.Errorf("only %d of %d tasks ran in 5 minutes", ran.Load(), k)
	}
	per := time.Duration(last.Load()-first.Load()) / time.Duration(k-1)
	stopCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return Result{Values: map[string]float64{"per": float64(per) / float64(time.Microsecond)}}, inst.Stop(stopCtx)
}

// measureRSS drains in a child process and reports its peak RSS.
func measureRSS(ctx context.Context, h *Harness, s System) (Result, error) {
	n := h.Scale.RSSN
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: 1})
	if err != nil {
		return Result{}, err
	}
	err = fill(ctx, inst, n)
	if err := errors.Join(err, inst.Close()); err != nil {
		return Result{}, err
	}
	child, err := h.startChild(ctx, ChildSpec{Role: roleRSS, System: s.Name(), Dir: dir, Concurrency: 64, N: n})
	if err != nil {
		return Result{}, err
	}
	defer child.kill()
	v, err := child.result(h.Scale.DrainCap + time.Minute)
	if err != nil {
		return Result{}, err
	}
	return Result{Values: v}, nil
}

// measureSize fills SizeN tasks and measures the store, then drains them,
// lets the system's retention remove them and measures again.
func measureSize(ctx context.Context, h *Harness, s System) (Result, error) {
	n := h.Scale.SizeN
	dir, err := h.newDir()
	if err != nil {
		return Result{}, err
	}
	var ran atomic.Int64
	done := make(chan struct{})
	o := Options{Dir: dir, Concurrency: 64, Poll: h.Poll, Fresh: true, ShortRetention: true, Handler: func(int64) {
		if ran.Add(1) == int64(n) {
			close(done)
		}
	}}
	inst, err := s.Open(ctx, o)
	if err != nil {
		return Result{}, err
	}
	err = fill(ctx, inst, n)
	if err := errors.Join(err, inst.Close()); err != nil {
		return Result{}, err
	}
	full, err := s.Storage(ctx, dir)
	if err != nil {
		return Result{}, err
	}
	o.Fresh = false
	if inst, err = s.Open(ctx, o); err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := inst.Start(ctx); err != nil {
		return Result{}, err
	}
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		return Result{}, fmt.Errorf("only %d of %d tasks ran in 10 minutes", ran.Load(), n)
	}
	var res Result
	poll, err := waitDone(ctx, inst, 5*time.Millisecond)
	if err != nil {
		return Result{}, err
	}
	res.note(poll.Note("checking that all are recorded done"))
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	how, poll, err := inst.Cleanup(cctx)
	if err != nil {
		return Result{}, fmt.Errorf("cleanup (%s): %w", how, err)
	}
	res.note("retention: " + how)
	res.note(poll.Note("waiting for retention"))
	if err := inst.Close(); err != nil {
		return Result{}, err
	}
	after, err := s.Storage(ctx, dir)
	if err != nil {
		return Result{}, err
	}
	res.Values = map[string]float64{"per": float64(full) / float64(n), "after": float64(after)}
	return res, nil
}

// measureIdle runs an idle worker in a child process and reports its CPU;
// with peerDefaults the peers use their default poll intervals.
func measureIdle(ctx context.Context, h *Harness, s System, peerDefaults bool) (Result, error) {
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: 1})
	if err != nil {
		return Result{}, err
	}
	if err := inst.Close(); err != nil {
		return Result{}, err
	}
	child, err := h.startChild(ctx, ChildSpec{Role: roleIdle, System: s.Name(), Dir: dir, Concurrency: 8, Duration: h.Scale.IdleFor, PeerDefaults: peerDefaults})
	if err != nil {
		return Result{}, err
	}
	defer child.kill()
	if err := child.waitLine("measuring", time.Minute); err != nil {
		return Result{}, err
	}
	var redis0 float64
	a, isAsynq := s.(asynqSystem)
	if isAsynq {
		if redis0, err = redisCPU(ctx, a); err != nil {
			return Result{}, err
		}
	}
	v, err := child.result(h.Scale.IdleFor + time.Minute)
	if err != nil {
		return Result{}, err
	}
	if isAsynq {
		redis1, err := redisCPU(ctx, a)
		if err != nil {
			return Result{}, err
		}
		v["redis"] = 100 * (redis1 - redis0) / h.Scale.IdleFor.Seconds()
	}
	return Result{Values: v}, nil
}
