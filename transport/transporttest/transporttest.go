// Package transporttest is the conformance suite every docket backend
// passes: the same program on SQLite, Redis or RabbitMQ must behave the
// same, and each backend must do what it claims.
//
// A backend's own test makes one call:
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, transporttest.Backend{
//			NewURL: func(t *testing.T) string { return freshURL(t) },
//			Open: func(t *testing.T) transport.Transport { return openFresh(t) },
//			Features: &transporttest.Features{Schedules: true, SharedState: true, Priority: true,
//				Listing: true, Pruning: true},
//		})
//	}
//
// NewURL returns the URL of a fresh, empty backend (its own file, key
// prefix or vhost). Open, when set, returns a fresh, empty transport
// directly. Features says what the backend claims beyond the Transport
// interface; see Features for what each one means.
//
// Run runs three groups of subtests, in parallel:
//
//   - Features checks the claims: the transport docket opens for NewURL
//     (with the backend's Options) and the one Open returns implement each
//     optional interface (transport.ScheduleStore, Lister, Pruner,
//     IDClaimer, TxEnqueuer) exactly when the matching feature is claimed,
//     and docket's API agrees (Queue.List, Queue.DB and Task.Schedule
//     fail with ErrUnsupported exactly when the feature is not claimed).
//   - Contract/... drives the transport returned by Open through its
//     methods, with a clock the suite controls (the Now in every params
//     struct), and checks the persistence contract: enqueue and batches,
//     ids and unique keys, claim order, ETAs, leases and their fencing,
//     rescue of lapsed leases, expiry, retries and releases, cancel,
//     lookups, pruning and claims by id. It needs no sleeps. A backend
//     whose Claim cannot run under a controlled clock (a broker, which
//     delivers in real time) leaves Open nil, and the group is skipped.
//   - The other subtests run docket's public API end to end on URLs from
//     NewURL, with real time: enqueue, run and wait, from one Queue or
//     two; ETAs, retries, expiry, priorities, unique keys, cancel,
//     graceful shutdown, schedules, listing, transactional enqueue,
//     the operations API and workflows.
//
// A subtest of a feature the backend does not claim is skipped; one of a
// claimed feature always runs.
package transporttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
)

// Backend describes the backend under test.
type Backend struct {
	// NewURL returns the URL of a fresh, empty backend. It is required.
	NewURL func(t *testing.T) string
	// Options, if set, returns the options every Queue of a test opens the
	// URL with (a result store, say).
	Options func(t *testing.T, url string) []docket.Option
	// Open, if set, returns a fresh, empty transport for the contract
	// tests, which the suite closes. Leave it nil for a backend whose
	// Claim cannot run under the suite's clock; the contract tests are
	// then skipped.
	Open func(t *testing.T) transport.Transport
	// Features is what the backend claims; the zero value claims none.
	// The suite checks that the backend does what it claims, and only
	// that: it implements an optional interface exactly when the matching
	// feature is claimed.
	Features Features
}

// Run runs the suite on b.
func Run(t *testing.T, b Backend) {
	t.Helper()
	if b.NewURL == nil {
		t.Fatal("transporttest: Backend.NewURL is nil")
	}
	t.Logf("backend claims %+v", b.Features)
	t.Run("Features", func(t *testing.T) {
		t.Parallel()
		testFeatures(t, b)
	})
	t.Run("Contract", func(t *testing.T) {
		if b.Open == nil {
			t.Skip("Backend.Open is nil: the backend cannot be driven under the suite's clock")
		}
		t.Parallel()
		runContract(t, b.Open, b.Features)
	})
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
		{"List", testList},
		{"TxEnqueue", testTxEnqueue},
		{"Operate", testOperate},
		{"PauseQueue", testPauseQueue},
		{"WorkflowShapes", testWorkflowShapes},
		{"WorkflowFailures", testWorkflowFailures},
		{"WorkflowCancel", testWorkflowCancel},
		{"WorkflowExpiredMember", testWorkflowExpiredMember},
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
	r, err := task.Enqueue(bg, q, 1, docket.Countdown(400*time.Millisecond))
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
	need(t, b.Features.Priority, "Priority")
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
	need(t, b.Features.SharedState, "SharedState")
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	a, err := d.Enqueue(bg, q, args{1}, docket.Unique("k:1", docket.RejectDuplicate))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Enqueue(bg, q, args{2}, docket.Unique("k:1", docket.RejectDuplicate))
	var dup *docket.DuplicateError
	if !errors.As(err, &dup) || dup.ExistingID != a.ID() {
		t.Fatalf("duplicate unique key: %v", err)
	}
	same, err := d.Enqueue(bg, q, args{3}, docket.Unique("k:1", docket.ReturnExisting))
	if err != nil || same.ID() != a.ID() {
		t.Fatalf("ReturnExisting: %v", err)
	}
	if _, err := d.Enqueue(bg, q, args{4}, docket.TaskID("fixed-id")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Enqueue(bg, q, args{4}, docket.TaskID("fixed-id")); !errors.Is(err, docket.ErrDuplicate) {
		t.Fatalf("duplicate id: %v", err)
	}
	run(t, q)
	a.Wait(wctx(t))
	if _, err := d.Enqueue(bg, q, args{5}, docket.Unique("k:1", docket.RejectDuplicate)); err != nil {
		t.Fatalf("unique key not freed once its task finished: %v", err)
	}
}

func testBatch(t *testing.T, b Backend) {
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	if _, err := d.Enqueue(bg, q, args{1}, docket.TaskID("taken")); err != nil {
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
	r, _ := task.Enqueue(bg, q, 1, docket.Countdown(200*time.Millisecond))
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
	r, err := task.Enqueue(bg, producer, 1)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-wctx(t).Done():
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
	need(t, b.Features.Schedules, "Schedules")
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
		if err := task.Schedule(q, "tick", docket.Every(100*time.Millisecond), 0, docket.MisfireGrace(5*time.Second)); err != nil {
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

// Queue.List enumerates tasks in id order, filtered by name, queue and
// state, and pages with After and Limit.
func testList(t *testing.T, b Backend) {
	need(t, b.Features.Listing, "Listing")
	q := open(t, b, b.NewURL(t))
	d := double()
	other := docket.NewTask("tt.other", func(ctx context.Context, n int) (int, error) { return n, nil })
	q.Register(d, other)
	for _, err := range []error{
		second(d.Enqueue(bg, q, args{1}, docket.TaskID("l1"))),
		second(d.Enqueue(bg, q, args{2}, docket.TaskID("l2"), docket.OnQueue("other"))),
		second(other.Enqueue(bg, q, 3, docket.TaskID("l3"))),
		second(d.Enqueue(bg, q, args{4}, docket.TaskID("l4"), docket.Countdown(time.Hour))),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	list := func(o docket.ListOptions) ([]string, []*docket.TaskInfo) {
		t.Helper()
		infos, err := q.List(bg, o)
		if err != nil {
			t.Fatalf("List(%+v): %v", o, err)
		}
		out := make([]string, len(infos))
		for i, in := range infos {
			out[i] = in.ID
		}
		return out, infos
	}
	got, infos := list(docket.ListOptions{})
	if !slices.Equal(got, []string{"l1", "l2", "l3", "l4"}) {
		t.Fatalf("List() = %v, want l1..l4 in id order", got)
	}
	if in := infos[1]; in.Name != "tt.double" || in.Queue != "other" || in.State != docket.StateReady || string(in.Args) != `{"n":2}` {
		t.Errorf("l2 listed as %+v", in)
	}
	if in := infos[3]; in.State != docket.StateScheduled {
		t.Errorf("l4 listed in state %v, want scheduled", in.State)
	}
	for _, c := range []struct {
		opts docket.ListOptions
		want []string
	}{
		{docket.ListOptions{Name: "tt.other"}, []string{"l3"}},
		{docket.ListOptions{Queue: "other"}, []string{"l2"}},
		{docket.ListOptions{States: []docket.State{docket.StateScheduled}}, []string{"l4"}},
		{docket.ListOptions{Name: "tt.double", States: []docket.State{docket.StateReady, docket.StateScheduled}}, []string{"l1", "l2", "l4"}},
		{docket.ListOptions{Limit: 2}, []string{"l1", "l2"}},
		{docket.ListOptions{After: "l2", Limit: 2}, []string{"l3", "l4"}},
		{docket.ListOptions{After: "l4"}, nil},
		{docket.ListOptions{States: []docket.State{docket.StateRunning}}, nil},
	} {
		if got, _ := list(c.opts); !slices.Equal(got, c.want) {
			t.Errorf("List(%+v) = %v, want %v", c.opts, got, c.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// Tasks enqueued through Queue.Tx exist only if the application's
// transaction commits, together with its own writes.
func testTxEnqueue(t *testing.T, b Backend) {
	need(t, b.Features.TxEnqueue, "TxEnqueue")
	q := open(t, b, b.NewURL(t))
	d := double()
	q.Register(d)
	db, err := q.DB()
	if err != nil {
		t.Fatalf("DB: %v", err)
	}
	if _, err := db.ExecContext(bg, "CREATE TABLE tt_app (n INTEGER)"); err != nil {
		t.Fatal(err)
	}
	enqueueIn := func(n int, end func(*sql.Tx) error) *docket.Result[int] {
		t.Helper()
		tx, err := db.BeginTx(bg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(bg, fmt.Sprintf("INSERT INTO tt_app (n) VALUES (%d)", n)); err != nil {
			t.Fatal(err)
		}
		r, err := d.Enqueue(bg, q.Tx(tx), args{n})
		if err != nil {
			t.Fatalf("Enqueue in a transaction: %v", err)
		}
		if err := end(tx); err != nil {
			t.Fatal(err)
		}
		return r
	}
	gone := enqueueIn(1, (*sql.Tx).Rollback)
	kept := enqueueIn(2, (*sql.Tx).Commit)
	if _, err := q.Info(bg, gone.ID()); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("Info of a task enqueued in a rolled-back transaction: %v, want ErrNotFound", err)
	}
	var rows int
	if err := db.QueryRowContext(bg, "SELECT count(*) FROM tt_app").Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("application rows: %d, %v; want the committed one only", rows, err)
	}
	run(t, q)
	if v, err := kept.Wait(wctx(t)); err != nil || v != 4 {
		t.Fatalf("Wait on the task of the committed transaction = %v, %v", v, err)
	}
}
