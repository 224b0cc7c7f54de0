package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
)

// flowTasks are the tasks of the workflow tests: arithmetic whose results
// show which steps ran, in which order, with what.
type flowTasks struct {
	add, double, fail *docket.Task[int, int]
	sum               *docket.Task[[]int, int]
	sums              *docket.Task[[][]int, int]
	tally             *docket.Task[[]docket.Outcome[int], string]
	runs              atomic.Int64
}

func newFlowTasks(t *testing.T, q *docket.Queue) *flowTasks {
	t.Helper()
	f := &flowTasks{}
	f.add = docket.NewTask("flow.add1", func(ctx context.Context, n int) (int, error) { f.runs.Add(1); return n + 1, nil })
	f.double = docket.NewTask("flow.double", func(ctx context.Context, n int) (int, error) { f.runs.Add(1); return 2 * n, nil })
	f.fail = docket.NewTask("flow.fail", func(ctx context.Context, n int) (int, error) {
		f.runs.Add(1)
		return 0, docket.Permanent(fmt.Errorf("no %d", n))
	})
	f.sum = docket.NewTask("flow.sum", func(ctx context.Context, ns []int) (int, error) {
		f.runs.Add(1)
		s := 0
		for _, n := range ns {
			s += n
		}
		return s, nil
	})
	f.sums = docket.NewTask("flow.sums", func(ctx context.Context, nss [][]int) (int, error) {
		f.runs.Add(1)
		s := 0
		for _, ns := range nss {
			for _, n := range ns {
				s += n
			}
		}
		return s, nil
	})
	f.tally = docket.NewTask("flow.tally", func(ctx context.Context, os []docket.Outcome[int]) (string, error) {
		f.runs.Add(1)
		var parts []string
		for _, o := range os {
			if o.OK() {
				parts = append(parts, fmt.Sprint(o.Result))
			} else {
				parts = append(parts, "error("+o.Error+")")
			}
		}
		return strings.Join(parts, ","), nil
	})
	if err := q.Register(f.add, f.double, f.fail, f.sum, f.sums, f.tally); err != nil {
		t.Fatal(err)
	}
	return f
}

func drain(t *testing.T, q *docket.Queue) {
	t.Helper()
	if _, err := q.Drain(bg); err != nil {
		t.Fatal(err)
	}
}

func TestFlowChain(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	// ((1+1)*2)+1 = 5: each step takes the previous result.
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Then(docket.Step(f.add, 1), f.double), f.add))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := wf.Info(bg)
	if err != nil || len(steps) != 3 {
		t.Fatalf("Info = %v, %v", steps, err)
	}
	waiting := 0
	for _, s := range steps {
		if s.State == docket.StateWaiting {
			waiting++
		}
	}
	if waiting != 2 {
		t.Fatalf("before any ran: %d steps waiting, want 2", waiting)
	}
	// An operator finds them by state, and sees them counted.
	page, err := q.Search(bg, docket.SearchOptions{Filter: docket.Filter{States: []string{"waiting"}}})
	if err != nil || len(page.Tasks) != 2 {
		t.Fatalf("Search waiting = %v, %v; want 2 tasks", page, err)
	}
	if st, err := q.Stats(bg); err != nil || st.Queues[0].Counts["waiting"] != 2 {
		t.Fatalf("Stats = %+v, %v; want 2 waiting", st, err)
	}
	drain(t, q)
	if n, err := wf.Wait(bg); err != nil || n != 5 {
		t.Fatalf("Wait = %d, %v; want 5", n, err)
	}
	if f.runs.Load() != 3 {
		t.Fatalf("%d attempts ran, want 3", f.runs.Load())
	}
}

func TestFlowGroupAndChord(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	var members []docket.Flow[int]
	want := 0
	for i := range 100 {
		members = append(members, docket.Step(f.double, i))
		want += 2 * i
	}
	// A group alone: its result is the members' results, in order.
	g, err := docket.EnqueueFlow(bg, q, docket.Group(members...))
	if err != nil {
		t.Fatal(err)
	}
	// A chord: the body takes the group's results.
	c, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(members...), f.sum))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	got, err := g.Wait(bg)
	if err != nil || len(got) != 100 {
		t.Fatalf("group Wait = %v, %v", got, err)
	}
	for i, n := range got {
		if n != 2*i {
			t.Fatalf("group result %d = %d, want %d (members out of order?)", i, n, 2*i)
		}
	}
	if s, err := c.Wait(bg); err != nil || s != want {
		t.Fatalf("chord Wait = %d, %v; want %d", s, err, want)
	}
	if f.runs.Load() != 201 {
		t.Fatalf("%d attempts ran, want 201 (the group's gathering step never runs)", f.runs.Load())
	}
}

func TestFlowNested(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	// A group whose members are chains and groups, inside a chain:
	// [ (1+1)*2, [3*2, 4*2] ] then sum, then +1.
	inner := docket.Group(docket.Step(f.double, 3), docket.Step(f.double, 4))
	chainMember := docket.Group(docket.Then(docket.Step(f.add, 1), f.double))
	outer := docket.Group(chainMember, inner)
	flow := docket.Then(docket.Then(outer, f.sums), f.add)
	wf, err := docket.EnqueueFlow(bg, q, flow)
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	if n, err := wf.Wait(bg); err != nil || n != 4+6+8+1 {
		t.Fatalf("Wait = %d, %v; want %d", n, err, 4+6+8+1)
	}
}

func TestFlowFailFast(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	// A chord whose second member fails: the body never runs, and the
	// workflow fails naming the step.
	flow := docket.Then(docket.Group(docket.Step(f.double, 1), docket.Step(f.fail, 2), docket.Step(f.double, 3)), f.sum)
	wf, err := docket.EnqueueFlow(bg, q, flow)
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	_, err = wf.Wait(bg)
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "flow.fail") || !strings.Contains(err.Error(), "no 2") {
		t.Fatalf("Wait error = %v; want the failed step named", err)
	}
	steps, err := wf.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.Name == "flow.sum" && s.Attempt != 0 {
			t.Fatalf("the body ran after a member failed: %+v", s)
		}
		if !s.State.Terminal() {
			t.Fatalf("step %s (%s) is %v after its workflow failed", s.ID, s.Name, s.State)
		}
	}
}

func TestFlowCollectErrors(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	// A member that fails, and a chain member whose first step fails:
	// the body runs with every outcome in order.
	g := docket.Group(docket.Step(f.double, 1), docket.Step(f.fail, 2), docket.Then(docket.Step(f.fail, 3), f.double), docket.Step(f.double, 4))
	wf, err := docket.EnqueueFlow(bg, q, docket.ThenOutcomes(g, f.tally))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	got, err := wf.Wait(bg)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(got, ",")
	if len(parts) != 4 || parts[0] != "2" || !strings.Contains(parts[1], "no 2") || !strings.Contains(parts[2], "no 3") || parts[3] != "8" {
		t.Fatalf("tally = %q", got)
	}
}

func TestFlowCancel(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(docket.Step(f.double, 1), docket.Step(f.double, 2)), f.sum))
	if err != nil {
		t.Fatal(err)
	}
	if err := wf.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	if _, err := wf.Wait(bg); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("Wait error = %v, want ErrTaskCancelled", err)
	}
	if f.runs.Load() != 0 {
		t.Fatalf("%d steps ran after the workflow was cancelled", f.runs.Load())
	}
}

func TestFlowRefusedAtBuild(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	for name, flow := range map[string]docket.Flow[int]{
		"empty group":       docket.Then(docket.Group[int](), f.sum),
		"unregistered name": docket.Then(docket.Untyped(docket.StepByName("no.such", 1)), docket.NewTask("x.y", func(context.Context, json.RawMessage) (int, error) { return 0, nil })),
		"countdown later":   docket.Then(docket.Step(f.add, 1), f.add, docket.Countdown(1)),
		"ignored result":    docket.Then(docket.Step(f.add, 1, docket.IgnoreResult()), f.add),
	} {
		if _, err := docket.EnqueueFlow(bg, q, flow); !errors.Is(err, docket.ErrInvalid) && !errors.Is(err, docket.ErrUnknownTask) {
			t.Errorf("%s: EnqueueFlow error = %v, want ErrInvalid", name, err)
		}
	}
	if all, err := q.List(bg, docket.ListOptions{}); err != nil || len(all) != 0 {
		t.Fatalf("refused flows stored %d tasks (%v)", len(all), err)
	}
}

// A workflow enqueued in a transaction exists only if it commits, and
// its steps advance on workers like any other.
func TestFlowInTransaction(t *testing.T) {
	t.Parallel()
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(t.TempDir(), "app.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	f := newFlowTasks(t, q)
	db, err := q.DB()
	if err != nil {
		t.Fatal(err)
	}
	enqueue := func(commit bool) *docket.Workflow[int] {
		tx, err := db.BeginTx(bg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		wf, err := docket.EnqueueFlow(bg, q.Tx(tx), docket.Then(docket.Group(docket.Step(f.add, 1), docket.Step(f.add, 2)), f.sum))
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return wf
	}
	rolledBack := enqueue(false)
	if _, err := rolledBack.Info(bg); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("a rolled-back workflow: Info error = %v, want ErrNotFound", err)
	}
	committed := enqueue(true)
	runWorkers(t, q)
	if n, err := committed.Wait(waitCtx(t)); err != nil || n != 5 {
		t.Fatalf("Wait = %d, %v; want 5", n, err)
	}
}

// Cancelling a workflow while its members run stops them in their
// handlers, and the body never runs.
func TestFlowCancelWhileRunning(t *testing.T) {
	t.Parallel()
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(t.TempDir(), "cancel.db"), docket.Concurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	started := make(chan string, 3)
	block := docket.NewTask("flow.block", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		started <- tc.ID
		<-ctx.Done()
		return 0, ctx.Err()
	})
	var bodyRan atomic.Bool
	body := docket.NewTask("flow.body", func(ctx context.Context, ns []int) (int, error) { bodyRan.Store(true); return 0, nil })
	if err := q.Register(block, body); err != nil {
		t.Fatal(err)
	}
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(docket.Step(block, 1), docket.Step(block, 2), docket.Step(block, 3)), body))
	if err != nil {
		t.Fatal(err)
	}
	runWorkers(t, q)
	for range 3 {
		<-started
	}
	if err := wf.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := wf.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("Wait error = %v, want ErrTaskCancelled", err)
	}
	// The members end cancelled once their handlers return.
	ctx := waitCtx(t)
	for {
		steps, err := wf.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		ended := 0
		for _, s := range steps {
			if s.State.Terminal() {
				ended++
				if s.State != docket.StateCancelled {
					t.Fatalf("step %s (%s) ended %v, want cancelled", s.ID, s.Name, s.State)
				}
			}
		}
		if ended == len(steps) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("steps still running after the cancel: %+v", steps)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if bodyRan.Load() {
		t.Fatal("the body ran after its workflow was cancelled")
	}
}

// A claim whose statement ends one member (expired) fails the workflow
// and cancels the sibling it was about to lease in the same statement:
// the sibling is reported ended, never delivered.
func TestFlowClaimLeavesCancelledSibling(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "claim.db")
	clock := dockettest.NewClock(time.Date(2030, 1, 1, 9, 0, 0, 0, time.UTC))
	q, err := docket.Open(bg, "sqlite:"+path, docket.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	f := newFlowTasks(t, q)
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(docket.Step(f.double, 1, docket.Expires(time.Second)), docket.Step(f.double, 2)), f.sum))
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(bg, sqlite.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := clock.Now().Add(2 * time.Second)
	res, err := st.Claim(bg, transport.ClaimParams{Now: now, Owner: "w", Queues: []string{docket.DefaultQueue}, Limit: 10, LeaseUntil: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deliveries) != 0 || len(res.Ended) != 2 {
		t.Fatalf("claim delivered %d and ended %+v; want nothing delivered and both members ended", len(res.Deliveries), res.Ended)
	}
	if _, err := wf.Wait(bg); !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Wait error = %v, want the workflow failed by the expired member", err)
	}
}

// An operator cannot retry a workflow step: its workflow has moved on.
func TestFlowStepsAreNotRetried(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(docket.Step(f.fail, 1), docket.Step(f.double, 2)), f.sum))
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	steps, err := wf.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range steps {
		ids = append(ids, s.ID)
	}
	res, err := q.Act(bg, docket.ActionRetry, docket.Target{IDs: ids})
	if err != nil || res.Changed != 0 {
		t.Fatalf("retry of a failed workflow's steps: %+v, %v; want none changed", res, err)
	}
}

// A failure inside a collecting step's branch ends the rest of the
// branch in one statement, however wide the branch: here a chord of
// 1,200 members whose first fails, beside a member that succeeds.
func TestFlowWideBranchFails(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	members := []docket.Flow[int]{docket.Step(f.fail, 0)}
	for i := 1; i < 1200; i++ {
		members = append(members, docket.Step(f.double, i))
	}
	flow := docket.ThenOutcomes(docket.Group(docket.Then(docket.Group(members...), f.sum), docket.Step(f.double, 5)), f.tally)
	wf, err := docket.EnqueueFlow(bg, q, flow)
	if err != nil {
		t.Fatal(err)
	}
	drain(t, q)
	got, err := wf.Wait(bg)
	parts := strings.Split(got, ",")
	if err != nil || len(parts) != 2 || !strings.Contains(parts[0], "no 0") || parts[1] != "10" {
		t.Fatalf("tally = %q, %v; want the branch's error and 10", got, err)
	}
}

// A TaskID on a flow part used twice would name two steps: refused.
func TestFlowRefusesOneIDForTwoSteps(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	f := newFlowTasks(t, q)
	same := docket.Step(f.double, 1, docket.TaskID("same"))
	if _, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(same, same), f.sum)); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("EnqueueFlow error = %v, want ErrInvalid", err)
	}
}

// A chain goes on in the worker that ran its last step (the step is
// leased in the write that records the success). A worker that stops
// while that happens gives the step back unrun: over many stops and
// restarts every step runs exactly once, in its first attempt.
func TestFlowChainAcrossStops(t *testing.T) {
	t.Parallel()
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(t.TempDir(), "stops.db"), docket.Concurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var mu sync.Mutex
	runs := map[string]int{}
	ran := make(chan struct{}, 1000)
	add := docket.NewTask("flow.add", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		mu.Lock()
		runs[tc.ID]++
		mu.Unlock()
		ran <- struct{}{}
		return n + 1, nil
	})
	if err := q.Register(add); err != nil {
		t.Fatal(err)
	}
	const steps = 300
	flow := docket.Step(add, 0)
	for range steps - 1 {
		flow = docket.Then(flow, add)
	}
	wf, err := docket.EnqueueFlow(bg, q, flow)
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() {
		n, err := wf.Wait(waitCtx(t))
		if err == nil && n != steps {
			err = fmt.Errorf("chain = %d, want %d", n, steps)
		}
		result <- err
	}()
	stops := 0
	for {
		ctx, cancel := context.WithCancel(bg)
		done := make(chan error, 1)
		go func() { done <- q.Run(ctx) }()
		var err error
		finished := false
	count:
		for n := 0; n < 25; {
			select {
			case <-ran:
				n++
			case err = <-result:
				finished = true
				break count
			}
		}
		cancel()
		if rerr := <-done; rerr != nil {
			t.Fatalf("Run: %v", rerr)
		}
		if finished {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		stops++
	}
	if stops < 5 {
		t.Errorf("only %d stops while the chain ran", stops)
	}
	infos, err := wf.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range infos {
		if runs[s.ID] != 1 || s.Attempt != 1 || s.State != docket.StateSucceeded {
			t.Errorf("step %s ran %d times, %v after %d attempts; want once, succeeded in its first", s.ID, runs[s.ID], s.State, s.Attempt)
		}
	}
}
