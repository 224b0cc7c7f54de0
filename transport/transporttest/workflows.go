package transporttest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// The workflow tests run docket's workflows end to end on a backend that
// claims Workflows, with real workers: chains, groups and chords of 100,
// nesting, both failure policies, and a cancel while members run.

// flowSet is the tasks of the workflow tests.
type flowSet struct {
	add, double, fail *docket.Task[int, int]
	sum               *docket.Task[[]int, int]
	sums              *docket.Task[[][]int, int]
	tally             *docket.Task[[]docket.Outcome[int], string]
	block             *docket.Task[int, int]
	started           chan string
}

func newFlowSet() *flowSet {
	f := &flowSet{started: make(chan string, 100)}
	f.add = docket.NewTask("flow.add1", func(ctx context.Context, n int) (int, error) { return n + 1, nil })
	f.double = docket.NewTask("flow.double", func(ctx context.Context, n int) (int, error) { return 2 * n, nil })
	f.fail = docket.NewTask("flow.fail", func(ctx context.Context, n int) (int, error) {
		return 0, docket.Permanent(fmt.Errorf("no %d", n))
	})
	f.sum = docket.NewTask("flow.sum", func(ctx context.Context, ns []int) (int, error) {
		s := 0
		for _, n := range ns {
			s += n
		}
		return s, nil
	})
	f.sums = docket.NewTask("flow.sums", func(ctx context.Context, nss [][]int) (int, error) {
		s := 0
		for _, ns := range nss {
			for _, n := range ns {
				s += n
			}
		}
		return s, nil
	})
	f.tally = docket.NewTask("flow.tally", func(ctx context.Context, os []docket.Outcome[int]) (string, error) {
		parts := make([]string, len(os))
		for i, o := range os {
			parts[i] = fmt.Sprint(o.Result)
			if !o.OK() {
				parts[i] = "error(" + o.Error + ")"
			}
		}
		return strings.Join(parts, ","), nil
	})
	f.block = docket.NewTask("flow.block", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		f.started <- tc.ID
		<-ctx.Done()
		return 0, ctx.Err()
	})
	return f
}

// flowQueue opens a Queue on a fresh backend with the workflow tasks and
// runs its workers.
func flowQueue(t *testing.T, b Backend) (*docket.Queue, *flowSet) {
	t.Helper()
	need(t, b.Features.Workflows, "Workflows")
	q := open(t, b, b.NewURL(t), docket.Concurrency(8))
	f := newFlowSet()
	if err := q.Register(f.add, f.double, f.fail, f.sum, f.sums, f.tally, f.block); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	return q, f
}

func enqueueFlow[R any](t *testing.T, q *docket.Queue, flow docket.Flow[R]) *docket.Workflow[R] {
	t.Helper()
	wf, err := docket.EnqueueFlow(bg, q, flow)
	if err != nil {
		t.Fatalf("EnqueueFlow: %v", err)
	}
	return wf
}

func testWorkflowShapes(t *testing.T, b Backend) {
	q, f := flowQueue(t, b)
	// A chain of 3: ((1+1)*2)+1.
	chain := enqueueFlow(t, q, docket.Then(docket.Then(docket.Step(f.add, 1), f.double), f.add))
	// A group of 100, and a chord of 100.
	var members []docket.Flow[int]
	want := 0
	for i := range 100 {
		members = append(members, docket.Step(f.double, i))
		want += 2 * i
	}
	group := enqueueFlow(t, q, docket.Group(members...))
	chord := enqueueFlow(t, q, docket.Then(docket.Group(members...), f.sum))
	// Nested: a group of a chain-in-a-group and a group, summed, then +1.
	nested := enqueueFlow(t, q, docket.Then(docket.Then(docket.Group(
		docket.Group(docket.Then(docket.Step(f.add, 1), f.double)),
		docket.Group(docket.Step(f.double, 3), docket.Step(f.double, 4)),
	), f.sums), f.add))

	if n, err := chain.Wait(wctx(t)); err != nil || n != 5 {
		t.Errorf("chain = %d, %v; want 5", n, err)
	}
	got, err := group.Wait(wctx(t))
	if err != nil || len(got) != 100 {
		t.Fatalf("group = %v, %v", got, err)
	}
	for i, n := range got {
		if n != 2*i {
			t.Fatalf("group result %d = %d, want %d", i, n, 2*i)
		}
	}
	if s, err := chord.Wait(wctx(t)); err != nil || s != want {
		t.Errorf("chord = %d, %v; want %d", s, err, want)
	}
	if n, err := nested.Wait(wctx(t)); err != nil || n != 4+6+8+1 {
		t.Errorf("nested = %d, %v; want %d", n, err, 4+6+8+1)
	}
	steps, err := chord.Info(bg)
	if err != nil || len(steps) != 101 {
		t.Fatalf("chord Info: %d steps, %v; want 101", len(steps), err)
	}
	for _, s := range steps {
		if s.Workflow != chord.ID() || (s.ID != chord.ID() && s.Next != chord.ID()) {
			t.Fatalf("step %s links workflow %q next %q, want %s", s.ID, s.Workflow, s.Next, chord.ID())
		}
	}
}

func testWorkflowFailures(t *testing.T, b Backend) {
	q, f := flowQueue(t, b)
	// Fail fast: the body never runs, and the workflow's error names the
	// failed step.
	failed := enqueueFlow(t, q, docket.Then(docket.Group(docket.Step(f.double, 1), docket.Step(f.fail, 2), docket.Step(f.double, 3)), f.sum))
	// Collect: the body runs with every outcome, a failed chain member's
	// included.
	collected := enqueueFlow(t, q, docket.ThenOutcomes(docket.Group(
		docket.Step(f.double, 1), docket.Step(f.fail, 2), docket.Then(docket.Step(f.fail, 3), f.double), docket.Step(f.double, 4),
	), f.tally))
	_, err := failed.Wait(wctx(t))
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "flow.fail") || !strings.Contains(err.Error(), "no 2") {
		t.Errorf("fail-fast Wait error = %v; want the failed step named", err)
	}
	steps, err := failed.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.Name == "flow.sum" && s.Attempt != 0 {
			t.Errorf("the body ran after a member failed: %+v", s)
		}
	}
	got, err := collected.Wait(wctx(t))
	parts := strings.Split(got, ",")
	if err != nil || len(parts) != 4 || parts[0] != "2" || !strings.Contains(parts[1], "no 2") || !strings.Contains(parts[2], "no 3") || parts[3] != "8" {
		t.Errorf("ThenOutcomes body = %q, %v", got, err)
	}
}

func testWorkflowCancel(t *testing.T, b Backend) {
	q, f := flowQueue(t, b)
	wf := enqueueFlow(t, q, docket.Then(docket.Group(docket.Step(f.block, 1), docket.Step(f.block, 2), docket.Step(f.block, 3)), f.sum))
	for range 3 {
		select {
		case <-f.started:
		case <-wctx(t).Done():
			t.Fatal("the members did not start")
		}
	}
	if err := wf.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := wf.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("Wait error = %v, want ErrTaskCancelled", err)
	}
	ctx := wctx(t)
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
				if s.Name == "flow.sum" && s.Attempt != 0 {
					t.Fatal("the body ran after its workflow was cancelled")
				}
			}
		}
		if ended == len(steps) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("steps still running after the cancel: %+v", steps)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A member that expires before any worker runs fails its workflow in the
// claim that finds it, and that claim does not lease the sibling the
// failure cancelled. With a broker (Pushed) the sibling may be delivered,
// and run, in a claim before the one that finds the expired member: then
// only the body must never run.
func testWorkflowExpiredMember(t *testing.T, b Backend) {
	need(t, b.Features.Workflows, "Workflows")
	q := open(t, b, b.NewURL(t), docket.Concurrency(8))
	f := newFlowSet()
	var ran atomic.Int32
	double := docket.NewTask("flow.double", func(ctx context.Context, n int) (int, error) { ran.Add(1); return 2 * n, nil })
	if err := q.Register(double, f.sum); err != nil {
		t.Fatal(err)
	}
	expiring := docket.Step(double, 1, docket.Expires(300*time.Millisecond))
	// The expiring member first, then second: the claim meets it before
	// or after it has leased the sibling.
	flows := []*docket.Workflow[int]{
		enqueueFlow(t, q, docket.Then(docket.Group(expiring, docket.Step(double, 2)), f.sum)),
		enqueueFlow(t, q, docket.Then(docket.Group(docket.Step(double, 2), expiring), f.sum)),
	}
	time.Sleep(400 * time.Millisecond) // the expiry passes before any worker claims
	run(t, q)
	for _, wf := range flows {
		if _, err := wf.Wait(wctx(t)); !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("Wait error = %v, want the workflow failed by the expired member", err)
		}
		steps, err := wf.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range steps {
			switch {
			case s.Name == f.sum.Name() && s.Attempt != 0:
				t.Errorf("the body ran (%d attempts) after its workflow failed", s.Attempt)
			case b.Features.Pushed:
			case !s.State.Terminal() || s.Attempt != 0:
				t.Errorf("step %s (%s): %v after %d attempts; want ended without running", s.ID, s.Name, s.State, s.Attempt)
			}
		}
	}
	if n := ran.Load(); n != 0 && !b.Features.Pushed {
		t.Errorf("a member ran %d times after its workflow failed", n)
	}
}
