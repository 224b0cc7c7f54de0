// Package transporttest is the conformance suite every transport passes,
// end to end through docket's public API: the same program on SQLite,
// Redis or RabbitMQ must behave the same.
//
// A transport's test calls Run with a function returning the URL of a
// fresh, empty backend (its own file, key prefix or vhost):
//
//	transporttest.Run(t, transporttest.Backend{NewURL: func(t *testing.T) string { ... }})
//
// The persistence contract below the Transport interface (leases, fencing,
// rescue, ordering) is checked by store/storetest, which any Transport also
// satisfies.
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// Backend describes the backend under test.
type Backend struct {
	// NewURL returns the URL of a fresh, empty backend.
	NewURL func(t *testing.T) string
	// Options, if set, returns the options every Queue of a test opens the
	// URL with (a result store, say).
	Options func(t *testing.T, url string) []docket.Option
	// NoSchedules skips the beat tests (a backend without a schedule store).
	NoSchedules bool
	// NoSharedState skips what needs task state shared by every process:
	// unique keys and duplicate ids (RabbitMQ without a result store).
	NoSharedState bool
	// NoPriority skips the priority test (RabbitMQ quorum queues).
	NoPriority bool
}

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b Backend)
	}{
		{"EnqueueRunWait", testEnqueueRunWait},
		{"WaitFromAnotherQueue", testWaitFromAnotherQueue},
		{"ETA", testETA},
		{"Retries", testRetries},
		{"Expiry", testExpiry},
		{"Priority", testPriority},
		{"Unique", testUnique},
		{"BatchIsAtomic", testBatch},
		{"CancelQueued", testCancelQueued},
		{"CancelRunningFromAnotherQueue", testCancelRunning},
		{"GracefulShutdownReleases", testShutdownReleases},
		{"CancelSurvivesRelease", testCancelSurvivesRelease},
		{"BeatSlotsOnce", testBeat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, b)
		})
	}
}

var bg = context.Background()

func open(t *testing.T, b Backend, url string, opts ...docket.Option) *docket.Queue {
	t.Helper()
	if b.Options != nil {
		opts = append(b.Options(t, url), opts...)
	}
	q, err := docket.Open(bg, url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func run(t *testing.T, q *docket.Queue) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func wctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type args struct {
	N int `json:"n"`
}

func double() *docket.Task[args, int] {
	return docket.NewTask("tt.double", func(ctx context.Context, a args) (int, error) { return 2 * a.N, nil })
}

func testEnqueueRunWait(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	run(t, q)
	rs, err := d.EnqueueMany(bg, q, []args{{1}, {2}, {3}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if v, err := r.Wait(wctx(t)); err != nil || v != 2*(i+1) {
			t.Fatalf("Wait = %v, %v", v, err)
		}
		info, err := r.Info(bg)
		if err != nil || info.State != docket.StateSucceeded || info.Attempt != 1 {
			t.Fatalf("Info = %+v, %v", info, err)
		}
	}
}

// A producer that runs no workers waits for a result computed by another
// Queue on the same backend (another host).
func testWaitFromAnotherQueue(t *testing.T, b Backend) {
	url := b.NewURL(t)
	producer, worker := open(t, b, url), open(t, b, url)
	d := double()
	producer.Register(d)
	worker.Register(d)
	run(t, worker)
	r, err := d.Enqueue(bg, producer, args{21})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := r.Wait(wctx(t)); err != nil || v != 42 {
		t.Fatalf("Wait = %v, %v", v, err)
	}
	if v, err := d.ResultOf(producer, r.ID()).Wait(wctx(t)); err != nil || v != 42 {
		t.Fatalf("ResultOf.Wait = %v, %v", v, err)
	}
}

func testETA(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	started := make(chan time.Time, 1)
	task := docket.NewTask("tt.eta", func(ctx context.Context, _ int) (int, error) { started <- time.Now(); return 0, nil })
	q.Register(task)
	run(t, q)
	t0 := time.Now()
	r, err := task.Enqueue(bg, q, 1, docket.In(400*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := r.Info(bg); info.State != docket.StateScheduled {
		t.Fatalf("state before the ETA: %v", info.State)
	}
	if _, err := r.Wait(wctx(t)); err != nil {
		t.Fatal(err)
	}
	if d := (<-started).Sub(t0); d < 400*time.Millisecond {
		t.Fatalf("started %v after enqueue, before its 400ms countdown", d)
	}
}

func testRetries(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	var calls atomic.Int32
	task := docket.NewTask("tt.flaky", func(ctx context.Context, _ int) (int, error) {
		if calls.Add(1) < 3 {
			return 0, errors.New("not yet")
		}
		return 7, nil
	}, docket.RetryBackoff(docket.Exponential{Base: 50 * time.Millisecond, Max: 100 * time.Millisecond}))
	perm := docket.NewTask("tt.perm", func(ctx context.Context, _ int) (int, error) {
		return 0, docket.Permanent(errors.New("no"))
	})
	q.Register(task, perm)
	run(t, q)
	r, _ := task.Enqueue(bg, q, 1)
	if v, err := r.Wait(wctx(t)); err != nil || v != 7 {
		t.Fatalf("Wait = %v, %v", v, err)
	}
	if info, _ := r.Info(bg); info.Attempt != 3 {
		t.Fatalf("%d attempts, want 3", info.Attempt)
	}
	p, _ := perm.Enqueue(bg, q, 1)
	if _, err := p.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskFailed) {
		t.Fatalf("permanent failure: %v", err)
	}
}

func testExpiry(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	var ran atomic.Bool
	task := docket.NewTask("tt.expire", func(ctx context.Context, _ int) (int, error) { ran.Store(true); return 0, nil })
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1, docket.Expires(50*time.Millisecond))
	time.Sleep(150 * time.Millisecond)
	run(t, q)
	if _, err := r.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskExpired) || ran.Load() {
		t.Fatalf("Wait = %v, ran = %v", err, ran.Load())
	}
}

func testPriority(t *testing.T, b Backend) {
	if b.NoPriority {
		t.Skip("backend has no message priorities")
	}
	q := open(t, b, b.NewURL(t), docket.Concurrency(1), docket.Prefetch(0))
	var mu sync.Mutex
	var order []int
	task := docket.NewTask("tt.prio", func(ctx context.Context, p int) (int, error) {
		mu.Lock()
		order = append(order, p)
		mu.Unlock()
		return p, nil
	})
	q.Register(task)
	var rs []*docket.Result[int]
	for _, p := range []int{0, 3, 9, 5, 0} {
		r, err := task.Enqueue(bg, q, p, docket.Priority(p))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	run(t, q)
	for _, r := range rs {
		r.Wait(wctx(t))
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{9, 5, 3, 0, 0}; !slices.Equal(order, want) {
		t.Fatalf("ran in order %v, want %v", order, want)
	}
}

func testUnique(t *testing.T, b Backend) {
	if b.NoSharedState {
		t.Skip("backend keeps no shared task state for unique keys and ids")
	}
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	a, err := d.Enqueue(bg, q, args{1}, docket.Unique("k:1", docket.Reject))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Enqueue(bg, q, args{2}, docket.Unique("k:1", docket.Reject))
	var dup *docket.DuplicateError
	if !errors.As(err, &dup) || dup.ExistingID != a.ID() {
		t.Fatalf("duplicate unique key: %v", err)
	}
	same, err := d.Enqueue(bg, q, args{3}, docket.Unique("k:1", docket.ReturnExisting))
	if err != nil || same.ID() != a.ID() {
		t.Fatalf("ReturnExisting: %v", err)
	}
	if _, err := d.Enqueue(bg, q, args{4}, docket.WithID("fixed-id")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Enqueue(bg, q, args{4}, docket.WithID("fixed-id")); !errors.Is(err, docket.ErrDuplicate) {
		t.Fatalf("duplicate id: %v", err)
	}
	run(t, q)
	a.Wait(wctx(t))
	if _, err := d.Enqueue(bg, q, args{5}, docket.Unique("k:1", docket.Reject)); err != nil {
		t.Fatalf("unique key not freed once its task finished: %v", err)
	}
}

func testBatch(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	if _, err := d.Enqueue(bg, q, args{1}, docket.WithID("taken")); err != nil {
		t.Fatal(err)
	}
	rs, err := d.EnqueueMany(bg, q, make([]args, 50))
	if err != nil || len(rs) != 50 {
		t.Fatalf("EnqueueMany: %d, %v", len(rs), err)
	}
	for _, r := range rs[:3] {
		if _, err := r.Info(bg); err != nil {
			t.Fatal(err)
		}
	}
}

func testCancelQueued(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	var ran atomic.Bool
	task := docket.NewTask("tt.never", func(ctx context.Context, _ int) (int, error) { ran.Store(true); return 0, nil })
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1, docket.In(200*time.Millisecond))
	r2, _ := task.Enqueue(bg, q, 2)
	if err := r.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if err := r2.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	time.Sleep(400 * time.Millisecond)
	for _, x := range []*docket.Result[int]{r, r2} {
		if _, err := x.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
			t.Fatalf("cancelled task: %v", err)
		}
	}
	if ran.Load() {
		t.Fatal("a cancelled task ran")
	}
}

// Cancel from one Queue reaches a handler running under another.
func testCancelRunning(t *testing.T, b Backend) {
	url := b.NewURL(t)
	producer, worker := open(t, b, url), open(t, b, url)
	started := make(chan struct{}, 1)
	task := docket.NewTask("tt.block", func(ctx context.Context, _ int) (int, error) {
		started <- struct{}{}
		<-ctx.Done()
		return 0, ctx.Err()
	})
	producer.Register(task)
	worker.Register(task)
	run(t, worker)
	r, _ := task.Enqueue(bg, producer, 1)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("task did not start")
	}
	if err := r.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("Wait = %v", err)
	}
}

// A worker stopped gracefully gives its unfinished task back without
// consuming the attempt; another worker completes it.
func testShutdownReleases(t *testing.T, b Backend) {
	url := b.NewURL(t)
	first := open(t, b, url, docket.ShutdownGrace(50*time.Millisecond))
	started := make(chan int, 2)
	var runs atomic.Int32
	task := docket.NewTask("tt.release", func(ctx context.Context, _ int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		started <- tc.Attempt
		if runs.Add(1) == 1 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Minute):
			}
		}
		return 1, nil
	})
	first.Register(task)
	r, _ := task.Enqueue(bg, first, 1)
	stop := run(t, first)
	<-started
	stop()
	info, err := r.Info(bg)
	if err != nil || info.State != docket.StateReady || info.Attempt != 0 {
		t.Fatalf("after a graceful stop: %+v, %v", info, err)
	}
	second := open(t, b, url)
	second.Register(task)
	run(t, second)
	if _, err := r.Wait(wctx(t)); err != nil {
		t.Fatal(err)
	}
	if a := <-started; a != 1 {
		t.Fatalf("the released task ran as attempt %d, want 1 again", a)
	}
}

// A task cancelled while it waits in a worker's prefetch is released
// cancelled when that worker stops: a worker started later never runs it,
// and runs the other released task.
func testCancelSurvivesRelease(t *testing.T, b Backend) {
	url := b.NewURL(t)
	first := open(t, b, url, docket.Concurrency(1), docket.Prefetch(4), docket.ShutdownGrace(100*time.Millisecond))
	var mu sync.Mutex
	runs := map[string]int{}
	started := make(chan string, 4)
	var blocked atomic.Bool
	task := docket.NewTask("tt.cancelheld", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		mu.Lock()
		runs[tc.ID]++
		mu.Unlock()
		started <- tc.ID
		if blocked.CompareAndSwap(false, true) {
			// The first handler holds the only slot until shutdown.
			<-ctx.Done()
			return 0, ctx.Err()
		}
		return n, nil
	})
	first.Register(task)
	rs, err := task.EnqueueMany(bg, first, []int{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, first)
	var runningID string
	select {
	case runningID = <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("no task started")
	}
	held, other := rs[0], rs[1]
	if held.ID() == runningID {
		held, other = other, held
	}
	// The other task is claimed (prefetched) but cannot start.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		info, err := held.Info(bg)
		if err == nil && info.State == docket.StateRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second task was not prefetched: %+v, %v", info, err)
		}
	}
	if err := held.Cancel(bg); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	stop()
	second := open(t, b, url)
	second.Register(task)
	run(t, second)
	if _, err := other.Wait(wctx(t)); err != nil {
		t.Fatalf("the task released without a cancel: %v", err)
	}
	if _, err := held.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("Wait on the task cancelled in the prefetch = %v; want ErrTaskCancelled", err)
	}
	mu.Lock()
	n := runs[held.ID()]
	mu.Unlock()
	if n != 0 {
		t.Fatalf("the cancelled task ran %d times", n)
	}
}

// Two schedulers on one backend fire each slot once.
func testBeat(t *testing.T, b Backend) {
	if b.NoSchedules {
		t.Skip("backend has no schedule store")
	}
	url := b.NewURL(t)
	var mu sync.Mutex
	slots := map[string]int{}
	task := docket.NewTask("tt.tick", func(ctx context.Context, _ int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		mu.Lock()
		slots[tc.Headers["docket.slot"]]++
		mu.Unlock()
		return 0, nil
	}, docket.IgnoreResult())
	for range 2 {
		q := open(t, b, url)
		q.Register(task)
		if err := q.Schedule("tick", docket.Every(100*time.Millisecond), task, 0, docket.MisfireGrace(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		run(t, q)
	}
	// The first slot may take a moment (a broker declares its delay
	// queues on first use); the window starts with it.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := len(slots)
		mu.Unlock()
		if n > 0 {
			break
		}
	}
	// At least ten slots, however long a loaded machine takes to run them
	// (the check is that slots run once and none is lost, not how fast).
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(slots)
		mu.Unlock()
		if n >= 10 {
			break
		}
	}
	// Every slot up to the latest one run so far must run, once; a slot
	// that is late (a loaded machine, a broker's hops) gets a few seconds
	// more, a lost one never comes.
	read := func() (times []time.Time, dups []string) {
		mu.Lock()
		defer mu.Unlock()
		for s, n := range slots {
			if n != 1 {
				dups = append(dups, fmt.Sprintf("slot %s fired %d times", s, n))
			}
			at, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				t.Fatalf("slot header %q: %v", s, err)
			}
			times = append(times, at)
		}
		slices.SortFunc(times, time.Time.Compare)
		return times, dups
	}
	times, _ := read()
	if len(times) < 10 {
		t.Fatalf("only %d slots of a 100ms schedule fired in 30s", len(times))
	}
	first, last := times[0], times[len(times)-1]
	want := int(last.Sub(first)/(100*time.Millisecond)) + 1
	var dups []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		times, dups = read()
		got := 0
		for _, at := range times {
			if !at.Before(first) && !at.After(last) {
				got++
			}
		}
		if got >= want || time.Now().After(deadline) {
			break
		}
	}
	for _, d := range dups {
		t.Error(d)
	}
	for i := 1; i < len(times) && !times[i].After(last); i++ {
		if times[i].Sub(times[i-1]) != 100*time.Millisecond {
			t.Errorf("missing slots between %v and %v", times[i-1], times[i])
		}
	}
}
