package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
	// NA holds, by Metric.Key, why a metric of an otherwise measured
	// system does not apply; its cell shows n/a.
	NA map[string]string
}

// notApplicable marks the metric key as n/a for the reason.
func (r *Result) notApplicable(key, reason string) {
	if r.NA == nil {
		r.NA = map[string]string{}
	}
	r.NA[key] = reason
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
	SizeN        int           // pending tasks for the size rows
	IdleFor      time.Duration // idle CPU window
	SettleBefore time.Duration // after Start, before a latency stream
	SteadyFor    time.Duration // window of the steady row
	ProducerN    int           // tasks a producer enqueues, nobody waiting
	WaitN        int           // tasks a producer enqueues, waiting for each
	ChainN       int           // steps of the chain
	ChordN       []int         // members of the chords
}

func fullScale() Scale {
	return Scale{
		EnqueueFor: 2 * time.Second, DrainN: 50_000, DrainCap: 60 * time.Second,
		LatencyRate: 500, LatencyFor: 5 * time.Second,
		ClaimTasks: 1_000, SizeN: 100_000, IdleFor: 10 * time.Second, SettleBefore: 300 * time.Millisecond,
		SteadyFor: 60 * time.Second, ProducerN: 200_000, WaitN: 50_000,
		ChainN: 1_000, ChordN: []int{1_000, 10_000},
	}
}

func quickScale() Scale {
	return Scale{
		EnqueueFor: 500 * time.Millisecond, DrainN: 5_000, DrainCap: 20 * time.Second,
		LatencyRate: 500, LatencyFor: time.Second,
		ClaimTasks: 1_000, SizeN: 5_000, IdleFor: 2 * time.Second, SettleBefore: 200 * time.Millisecond,
		SteadyFor: 5 * time.Second, ProducerN: 20_000, WaitN: 5_000,
		ChainN: 200, ChordN: []int{100, 1_000},
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

// count is how many stamped tasks have started so far.
func (l *latencyRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lats)
}

// percentileOfAll returns the p-quantile in milliseconds over all the
// recorder's want tasks, the ones that never started counted as slower
// than any that did; ok is false when the quantile falls among those.
func (l *latencyRecorder) percentileOfAll(p float64) (ms float64, ok bool) {
	l.mu.Lock()
	s := slices.Clone(l.lats)
	l.mu.Unlock()
	slices.Sort(s)
	i := max(0, int(p*float64(l.want)+0.5)-1)
	if i >= len(s) {
		return 0, false
	}
	return float64(s[i]) / float64(time.Millisecond), true
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

// produceSteady enqueues n stamped tasks at rate per second, the first at
// t0. A pacer hands out slots on schedule and 8 producer goroutines take
// them, so one slow enqueue does not delay the next arrival; each stamp is
// taken just before its Enqueue call. It returns a note if the producers
// fell behind.
func produceSteady(ctx context.Context, inst Instance, n, rate int, t0 time.Time) (string, error) {
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
	note, err := produceSteady(ctx, inst, n, h.Scale.LatencyRate, time.Now())
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
	note, err := produceSteady(ctx, inst, n, h.Scale.LatencyRate, time.Now())
	if err != nil {
		return Result{}, err
	}
	v, err := child.values(time.Minute)
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

// measureDrain2P is the production layout: this process enqueues the
// tasks and stays open as their producer, and a worker process opens the
// store and drains them at conc. The worker times itself from its start
// until all ran and it finds none unfinished; with results, this process
// then checks that it learned every task's outcome, and the time it took
// after the worker finished counts too. The worker's peak RSS is reported.
func measureDrain2P(ctx context.Context, h *Harness, s System, conc int, results bool) (Result, error) {
	n := h.Scale.DrainN
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: 1, Results: results})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := fill(ctx, inst, n); err != nil {
		return Result{}, fmt.Errorf("fill: %w", err)
	}
	server0, serverErr := serverCPU(ctx, s)
	child, err := h.startChild(ctx, ChildSpec{Role: roleDrain, System: s.Name(), Dir: dir, Concurrency: conc, N: n, Results: results})
	if err != nil {
		return Result{}, err
	}
	defer child.kill()
	// The worker prints "ran" once all ran, before it stops: from then
	// on, what the producer still lacks is its lag.
	if err := child.waitLine("ran", h.Scale.DrainCap+10*time.Minute); err != nil {
		return Result{}, err
	}
	ran := time.Now()
	var res Result
	var lag time.Duration
	if results {
		poll, err := waitDone(ctx, inst, time.Millisecond)
		if err != nil {
			return Result{}, fmt.Errorf("producer: %w", err)
		}
		res.note(poll.Note("the producer checking that it knows every outcome"))
		lag = time.Since(ran)
	}
	v, err := child.values(time.Minute)
	if err != nil {
		return Result{}, err
	}
	if serverErr == nil {
		var server1 float64
		server1, serverErr = serverCPU(ctx, s)
		v["server"] = (server1 - server0) * 1e6 / float64(n)
	}
	elapsed := time.Duration(float64(n)/v["rate"]*float64(time.Second)) + lag
	v["lag"] = float64(lag) / float64(time.Millisecond)
	res.Values = map[string]float64{"rate": tasksPerSec(n, elapsed), "hwm": v["hwm"], "anon": v["anon"], "file": v["file"], "cpu": v["cpu"], "lag": v["lag"]}
	if serverErr != nil {
		res.notApplicable("server", serverErr.Error())
	} else {
		res.Values["server"] = v["server"]
	}
	return res, nil
}

// serverCPU is the CPU time, in seconds, the server of s (Redis, or a
// RabbitMQ on this machine) has used so far, or an *NA.
func serverCPU(ctx context.Context, s System) (float64, error) {
	switch s := s.(type) {
	case redisUser:
		return redisCPU(ctx, s)
	case interface{ brokerCPU() (float64, error) }:
		return s.brokerCPU()
	}
	return 0, &NA{Reason: s.Name() + " has no server"}
}

// measureProducer is a producer process in the production layout: it
// enqueues Scale.ProducerN tasks from 8 goroutines while a worker process
// drains them at concurrency 64, nobody waiting for any (wait false); or
// each goroutine enqueues a task and waits for its result before the next,
// Scale.WaitN tasks in all. It reports its own peak RSS and its rate.
func measureProducer(ctx context.Context, h *Harness, s System, wait bool) (Result, error) {
	n := h.Scale.ProducerN
	if wait {
		n = h.Scale.WaitN
	}
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: 1, Results: true, Untracked: true})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	call := func() error { return inst.Enqueue(ctx, 0) }
	if wait {
		w, ok := inst.(resultWaiter)
		if !ok {
			return Result{}, &NA{Reason: s.Name() + " has no result to wait for"}
		}
		call = func() error { return w.EnqueueWait(ctx) }
	}
	// Warm up (connections, declarations), untimed; the worker runs these
	// too.
	const warm = 10
	for range warm {
		if err := inst.Enqueue(ctx, 0); err != nil {
			return Result{}, err
		}
	}
	child, err := h.startChild(ctx, ChildSpec{Role: roleDrain, System: s.Name(), Dir: dir, Concurrency: 64, N: n + warm, Results: true})
	if err != nil {
		return Result{}, err
	}
	defer child.kill()
	if err := child.waitLine("started", time.Minute); err != nil {
		return Result{}, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 8)
	t0 := time.Now()
	for g := range errs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := call(); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}
	if _, err := child.values(h.Scale.DrainCap + 10*time.Minute); err != nil {
		return Result{}, fmt.Errorf("worker: %w", err)
	}
	hwm, err := procStatusKiB("VmHWM")
	if err != nil {
		return Result{}, err
	}
	return Result{Values: map[string]float64{"hwm": float64(hwm) * 1024, "rate": tasksPerSec(n, elapsed)}}, nil
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
	// A Redis system's server works for it too: its CPU over the same
	// window is a row of its own.
	var redis0 float64
	ru, isRedis := s.(redisUser)
	if isRedis {
		if redis0, err = redisCPU(ctx, ru); err != nil {
			return Result{}, err
		}
	}
	v, err := child.values(h.Scale.IdleFor + time.Minute)
	if err != nil {
		return Result{}, err
	}
	if isRedis {
		redis1, err := redisCPU(ctx, ru)
		if err != nil {
			return Result{}, err
		}
		v["redis"] = 100 * (redis1 - redis0) / h.Scale.IdleFor.Seconds()
	}
	return Result{Values: v}, nil
}

// measureSteady holds a paced stream of SteadyRate stamped tasks/s for
// SteadyFor into latencyConcurrency workers in this process. At the end of
// the window it counts the tasks that ran and takes the store's size and
// this process's RSS; the producer is never cut short, and the latency
// p99 is over every task of the stream.
func measureSteady(ctx context.Context, h *Harness, s System) (Result, error) {
	rate, window := h.SteadyRate, h.Scale.SteadyFor
	n := max(1, int(float64(rate)*window.Seconds()))
	rec := newLatencyRecorder(n)
	inst, dir, err := h.openFresh(ctx, s, Options{Concurrency: latencyConcurrency, Handler: rec.handle})
	if err != nil {
		return Result{}, err
	}
	defer inst.Close()
	if err := inst.Start(ctx); err != nil {
		return Result{}, err
	}
	time.Sleep(h.Scale.SettleBefore)
	type produced struct {
		note string
		err  error
	}
	prod := make(chan produced, 1)
	t0 := time.Now()
	go func() {
		note, err := produceSteady(ctx, inst, n, rate, t0)
		prod <- produced{note, err}
	}()
	select {
	case <-time.After(time.Until(t0.Add(window))):
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	ran := rec.count()
	elapsed := time.Since(t0)
	res := Result{Values: map[string]float64{"rate": tasksPerSec(ran, elapsed)}}
	rss, err := procStatusKiB("VmRSS")
	if err != nil {
		return Result{}, err
	}
	res.Values["rss"] = float64(rss) * 1024
	switch size, err := liveSize(ctx, s, dir); {
	case errors.Is(err, ErrUnsupported):
		var na *NA
		errors.As(err, &na)
		res.notApplicable("store", na.Reason)
	case err != nil:
		return Result{}, fmt.Errorf("store size: %w", err)
	default:
		res.Values["store"] = float64(size)
	}
	var p produced
	select {
	case p = <-prod:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	if p.err != nil {
		return Result{}, p.err
	}
	res.note(p.note)
	// A system that fell behind works off its backlog: wait while tasks
	// keep starting (the p99 counts every task of the stream).
	const stall, longest = 30 * time.Second, 15 * time.Minute
	last, lastChange, waitFrom := rec.count(), time.Now(), time.Now()
	for last < n && time.Since(lastChange) < stall && time.Since(waitFrom) < longest {
		select {
		case <-rec.done:
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		if c := rec.count(); c != last {
			last, lastChange = c, time.Now()
		}
	}
	if last < n {
		res.note(fmt.Sprintf("%d of %d tasks had not started %s after the last enqueue", n-last, n, time.Since(waitFrom).Round(time.Second)))
	} else if d := time.Since(waitFrom); d > time.Second {
		res.note(fmt.Sprintf("the last task started %s after the last enqueue", d.Round(100*time.Millisecond)))
	}
	if p99, ok := rec.percentileOfAll(0.99); ok {
		res.Values["p99"] = p99
	} else {
		res.note("p99 not shown: more than 1% of the tasks never started")
	}
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return res, inst.Stop(stopCtx)
}

// dbFiler is a System whose store is one SQLite file in its directory.
type dbFiler interface {
	dbFile() string
}

// liveSize is the size of s's store in dir as it is now: for SQLite, the
// main file plus its WAL, not checkpointed; for Redis, the server's
// used_memory.
func liveSize(ctx context.Context, s System, dir string) (int64, error) {
	switch s := s.(type) {
	case dbFiler:
		return fileAndWAL(filepath.Join(dir, s.dbFile()))
	case redisUser:
		return redisUsedMemory(ctx, s)
	case unsupporter:
		if err := s.Unsupported("size"); err != nil {
			return 0, err
		}
	}
	return 0, &NA{Reason: s.Name() + "'s store size is not visible to the harness"}
}

// measureFlows times a chain of ChainN steps against ChainN independent
// tasks of the same step, both on one worker slot (a chain runs one step
// at a time), and chords of ChordN members on eight slots, per member.
func measureFlows(ctx context.Context, h *Harness, s System) (Result, error) {
	res := Result{Values: map[string]float64{}}
	run := func(conc int, fn func(fr flowRunner) error) error {
		inst, _, err := h.openFresh(ctx, s, Options{Concurrency: conc, Results: true})
		if err != nil {
			return err
		}
		defer inst.Close()
		fr, ok := inst.(flowRunner)
		if !ok {
			return &NA{Reason: s.Name() + " has no workflows"}
		}
		if err := inst.Start(ctx); err != nil {
			return err
		}
		return fn(fr)
	}
	timed := func(fn func() error) (time.Duration, error) {
		t0 := time.Now()
		err := fn()
		return time.Since(t0), err
	}
	n := h.Scale.ChainN
	err := run(1, func(fr flowRunner) error {
		// Warm up (connections, statements), untimed.
		if err := fr.Chain(ctx, 10); err != nil {
			return err
		}
		chain, err := timed(func() error { return fr.Chain(ctx, n) })
		if err != nil {
			return err
		}
		ind, err := timed(func() error { return fr.Independent(ctx, n) })
		if err != nil {
			return err
		}
		res.Values["chain"] = chain.Seconds() * 1000
		res.Values["independent"] = ind.Seconds() * 1000
		res.Values["ratio"] = chain.Seconds() / ind.Seconds()
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	for i, m := range h.Scale.ChordN {
		err := run(8, func(fr flowRunner) error {
			d, err := timed(func() error { return fr.Chord(ctx, m) })
			res.Values[fmt.Sprintf("chord%d", i)] = float64(d.Microseconds()) / float64(m)
			return err
		})
		if err != nil {
			return Result{}, err
		}
	}
	return res, nil
}
