package docket

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/docketq/docket/transport"
)

// Flow is a workflow, or a part of one, whose result has type R: one task
// (Step), a task that takes the previous part's result (Then), parts that
// run side by side (Group), or a task that takes a group's outcomes
// (ThenOutcomes). Parts nest freely. A Flow is an immutable value: build it
// once and enqueue it any number of times with EnqueueFlow.
//
// The steps of a workflow are ordinary tasks: they run on the workers
// that registered them, with their own queue, retries and timeout, and
// show in Info, Search and the dashboard. What links them is kept by the
// backend, which advances the workflow in the same write that records
// each step's end.
type Flow[R any] struct{ n *flowNode }

// Outcome is how one member of a group ended, as ThenOutcomes passes it
// on: its result, or the error it ended with.
type Outcome[R any] struct {
	Result R      `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// OK reports whether the member succeeded.
func (o Outcome[R]) OK() bool { return o.Error == "" }

type flowKind uint8

const (
	flowStep flowKind = iota + 1
	flowThen
	flowGroup
)

// flowNode is one part of a Flow.
type flowNode struct {
	kind flowKind
	// flowStep and flowThen: the task. reg is nil for a task given by
	// name, looked up in the Queue when the flow is enqueued.
	name     string
	reg      Registrable
	args     any // flowStep: the arguments
	opts     []TaskOption
	prev     *flowNode   // flowThen: what it takes the result of
	collect  bool        // flowThen: takes prev's outcomes (ThenOutcomes)
	members  []*flowNode // flowGroup
	buildErr error
}

// Step is a workflow of one task with its arguments (Celery's
// task.s(args)). opts apply to this step, over the task's defaults.
func Step[A, R any](t *Task[A, R], args A, opts ...TaskOption) Flow[R] {
	n := &flowNode{kind: flowStep, name: t.name, reg: t, args: args, opts: opts, buildErr: t.err}
	return Flow[R]{n}
}

// StepByName is Step for a task known by name; args is any value that
// encodes to JSON. The name must be registered with the Queue the flow is
// enqueued on, and args must decode into its argument type.
func StepByName(name string, args any, opts ...TaskOption) Flow[json.RawMessage] {
	return Flow[json.RawMessage]{&flowNode{kind: flowStep, name: name, args: args, opts: opts}}
}

// Then runs t with prev's result once prev has succeeded: a chain. When
// prev is a Group, t receives its members' results in order (a chord).
// The compiler checks that t takes what prev returns.
func Then[A, R any](prev Flow[A], t *Task[A, R], opts ...TaskOption) Flow[R] {
	return Flow[R]{&flowNode{kind: flowThen, name: t.name, reg: t, prev: prev.n, opts: opts, buildErr: t.err}}
}

// ThenByName is Then for a task known by name.
func ThenByName[A any](prev Flow[A], name string, opts ...TaskOption) Flow[json.RawMessage] {
	return Flow[json.RawMessage]{&flowNode{kind: flowThen, name: name, prev: prev.n, opts: opts}}
}

// ThenOutcomes runs t once every member of the group g has ended, however
// it ended, with each member's Outcome in order: a chord that collects
// errors instead of failing. A member's retries count only once they are
// exhausted. Everywhere else a step that fails fails its workflow.
func ThenOutcomes[R, S any](g Flow[[]R], t *Task[[]Outcome[R], S], opts ...TaskOption) Flow[S] {
	n := &flowNode{kind: flowThen, name: t.name, reg: t, prev: g.n, opts: opts, collect: true, buildErr: t.err}
	if g.n != nil && g.n.kind != flowGroup {
		n.buildErr = invalid("ThenOutcomes", t.name, "takes the outcomes of a Group; give it one")
	}
	return Flow[S]{n}
}

// Group runs its members side by side; its result is their results, in
// the members' order. Followed by Then it is a chord.
func Group[R any](members ...Flow[R]) Flow[[]R] {
	n := &flowNode{kind: flowGroup}
	for _, m := range members {
		n.members = append(n.members, m.n)
	}
	if len(members) == 0 {
		n.buildErr = invalid("Group", nil, "has no members")
	}
	return Flow[[]R]{n}
}

// Untyped forgets a flow's result type, so that flows of different types
// can be members of one group (whose next step then takes
// []json.RawMessage).
func Untyped[R any](f Flow[R]) Flow[json.RawMessage] { return Flow[json.RawMessage]{f.n} }

// GroupTask is the name of the steps that gather a group's results when
// no task takes them: a group at the end of a workflow, or inside another
// group. They never run on a worker: the backend completes them.
const GroupTask = "docket.group"

// Workflow is a handle to an enqueued workflow whose result has type R.
// Its id is the id of its last step.
type Workflow[R any] struct {
	q   *Queue
	id  string
	res *Result[R]
}

// ID returns the workflow's id: the id of its last step, whose result is
// the workflow's.
func (w *Workflow[R]) ID() string { return w.id }

// Wait waits for the workflow to end and returns its result. A workflow
// fails when a step fails outside ThenOutcomes; the error then names the
// step and says why.
func (w *Workflow[R]) Wait(ctx context.Context) (R, error) { return w.res.Wait(ctx) }

// Cancel cancels the whole workflow: steps that have not started never
// will, running ones have their ctx cancelled in whichever process runs
// them, and the workflow ends cancelled. Cancelling a finished workflow
// does nothing.
func (w *Workflow[R]) Cancel(ctx context.Context) error { return w.q.cancelFlow(ctx, w.id) }

// Info returns the workflow's steps, in the order they were created.
func (w *Workflow[R]) Info(ctx context.Context) ([]StepInfo, error) { return w.q.FlowInfo(ctx, w.id) }

// WorkflowOf returns a handle to a workflow enqueued earlier (by id,
// perhaps by another process). R must be its result type.
func WorkflowOf[R any](q *Queue, id string) *Workflow[R] {
	return &Workflow[R]{q: q, id: id, res: newResult[R](q, id, false)}
}

// StepInfo is one step of a workflow: the task (whose Workflow and Next
// are set), its place in Next's arguments, and how many steps it waits for.
type StepInfo struct {
	TaskInfo
	Slot  int // its place in Next's arguments; -1 when it is all of them
	Waits int // predecessors it still waits for (StateWaiting)
}

// FlowInfo returns the steps of the workflow id, in the order they were
// created. The backend must support workflows.
func (q *Queue) FlowInfo(ctx context.Context, id string) ([]StepInfo, error) {
	wf, ok := q.t.(transport.Workflows)
	if !ok {
		return nil, fmt.Errorf("docket: workflow %s: %w", id, ErrUnsupported)
	}
	steps, err := wf.Steps(ctx, transport.StepsParams{Now: q.now(), ID: id})
	if err != nil {
		return nil, err
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("docket: workflow %s: %w", id, ErrNotFound)
	}
	out := make([]StepInfo, len(steps))
	for i := range steps {
		s := &steps[i]
		out[i] = StepInfo{TaskInfo: *infoFrom(s), Slot: s.Flow.Slot, Waits: s.Flow.Waits}
	}
	return out, nil
}

// cancelFlow cancels every step of the workflow id that has not ended and
// announces the outcome.
func (q *Queue) cancelFlow(ctx context.Context, id string) error {
	wf, ok := q.t.(transport.Workflows)
	if !ok {
		return fmt.Errorf("docket: cancel workflow %s: %w", id, ErrUnsupported)
	}
	res, err := wf.CancelFlow(ctx, transport.CancelParams{Now: q.now(), ID: id})
	if err != nil {
		return err
	}
	if len(res.Running) > 0 {
		q.onEvent(transport.Event{Kind: transport.EventCancel, IDs: res.Running})
	}
	if len(res.Ended) > 0 {
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: res.Ended})
	}
	return nil
}

// EnqueueFlow enqueues a workflow in one write: all of its steps are
// stored, or none. e is a *Queue, or q.Tx(tx) to enqueue inside a
// database transaction. The steps that wait for nothing are ready at
// once; the others wait (StateWaiting) for their predecessors.
//
// EnqueueFlow checks the flow before anything is stored: every task given
// by name is registered, arguments encode, no step that passes its result
// on ignores results, and only the first steps have a countdown, an ETA, a
// unique key or an expiry (those of later steps would count from the
// enqueue, not from when they become due).
func EnqueueFlow[R any](ctx context.Context, e Enqueuer, f Flow[R]) (*Workflow[R], error) {
	q, tx := e.target()
	if q.isClosed() {
		return nil, ErrClosed
	}
	if f.n == nil {
		return nil, invalid("EnqueueFlow", nil, "the flow is empty")
	}
	if _, ok := q.t.(transport.Workflows); !ok {
		return nil, fmt.Errorf("docket: enqueue workflow: %w: %s keeps no workflow state (RabbitMQ runs workflows with a result store: the ResultStore option)", ErrUnsupported, q.URL())
	}
	b := flowBuilder{q: q, now: q.now()}
	if _, err := b.add(f.n, flowLink{slot: -1}); err != nil {
		return nil, err
	}
	ids, err := q.store(ctx, tx, "workflow "+b.msgs[0].Name, b.now, b.msgs)
	if err != nil {
		return nil, err
	}
	return &Workflow[R]{q: q, id: ids[0], res: newResult[R](q, ids[0], true)}, nil
}

// flowBuilder turns a flow into the messages of its steps, the last step
// first.
type flowBuilder struct {
	q    *Queue
	now  time.Time
	id   string // the workflow's: its last step's
	msgs []transport.Message
	ids  map[string]bool // the steps' ids so far
}

// flowLink is where a step's result goes.
type flowLink struct {
	next   string
	slot   int
	catch  string
	branch int
}

// add appends the messages of n, whose result goes to link, and returns
// the index of n's own message.
func (b *flowBuilder) add(n *flowNode, link flowLink) (int, error) {
	if n == nil {
		return 0, invalid("EnqueueFlow", nil, "a flow part is empty")
	}
	if n.buildErr != nil {
		return 0, n.buildErr
	}
	var (
		i   int
		err error
	)
	switch n.kind {
	case flowStep:
		i, err = b.task(n, link, 0, 0)
	case flowThen:
		mode, waits := transport.FlowMode(0), 1
		if n.prev != nil && n.prev.kind == flowGroup {
			mode, waits = transport.FlowArray, len(n.prev.members)
			if n.collect {
				mode |= transport.FlowCollect
			}
		}
		if i, err = b.task(n, link, mode, waits); err != nil {
			return 0, err
		}
		err = b.feed(n.prev, i, n.collect)
	case flowGroup:
		i = b.message(transport.Message{
			Name: GroupTask, Queue: DefaultQueue, Payload: []byte("null"), MaxAttempts: 1,
			ResultTTL: defaultTaskOpts().resultTTL, Created: b.now,
		}, link, transport.FlowArray|transport.FlowPass, len(n.members))
		err = b.feed(n, i, false)
	}
	return i, err
}

// feed adds what runs before the step at index to: a group's members, one
// per slot, or the one part before it.
func (b *flowBuilder) feed(prev *flowNode, to int, collect bool) error {
	m := &b.msgs[to]
	link := flowLink{next: m.ID, slot: -1, catch: m.Flow.Catch, branch: m.Flow.Branch}
	if prev == nil || prev.kind != flowGroup {
		_, err := b.add(prev, link)
		return err
	}
	if prev.buildErr != nil {
		return prev.buildErr
	}
	for slot, member := range prev.members {
		l := link
		l.slot = slot
		if collect {
			l.catch, l.branch = l.next, slot
		}
		if _, err := b.add(member, l); err != nil {
			return err
		}
	}
	return nil
}

// task appends the message of a step or chain node: its arguments now
// for a step, from its predecessors later for the others.
func (b *flowBuilder) task(n *flowNode, link flowLink, mode transport.FlowMode, waits int) (int, error) {
	reg := n.reg
	if reg == nil {
		if err := validName("task name", n.name); err != nil {
			return 0, err
		}
		if reg = b.q.lookupTask(n.name); reg == nil {
			return 0, &UnknownTaskError{Name: n.name}
		}
	}
	payload := []byte("null")
	if n.kind == flowStep {
		p, err := encodeArgs(n.args, b.q.cfg.maxPayload)
		if err == nil && n.reg == nil {
			err = reg.checkArgs(p)
		}
		if err != nil {
			return 0, fmt.Errorf("docket: workflow step %s: %w", n.name, err)
		}
		payload = p
	}
	msgs, err := buildMessages(b.now, n.name, reg.taskOptions(), [][]byte{payload}, n.opts)
	if err != nil {
		return 0, fmt.Errorf("docket: workflow step %s: %w", n.name, err)
	}
	m := msgs[0]
	switch {
	case link.next != "" && m.IgnoreResult:
		return 0, invalid("IgnoreResult", n.name, "a workflow step whose result another step takes cannot ignore it")
	case m.UniqueKey != "":
		return 0, invalid("Unique", n.name, "workflow steps cannot have unique keys")
	case waits > 0 && !m.ETA.IsZero():
		return 0, invalid("Countdown", n.name, "only the first steps of a workflow can be delayed")
	case !m.Expires.IsZero() && (waits > 0 || !m.Expires.After(b.now)):
		return 0, invalid("Expires", n.name, "only the first steps of a workflow can expire, and not before they are enqueued")
	}
	if b.ids[m.ID] {
		// A TaskID given to a flow part used twice.
		return 0, invalid("TaskID", m.ID, "names two steps of one workflow")
	}
	return b.message(m, link, mode, waits), nil
}

// message appends m as a step linked to link and returns its index.
func (b *flowBuilder) message(m transport.Message, link flowLink, mode transport.FlowMode, waits int) int {
	if m.ID == "" {
		m.ID = newID(b.now)
	}
	if b.id == "" {
		b.id = m.ID
	}
	if b.ids == nil {
		b.ids = map[string]bool{}
	}
	b.ids[m.ID] = true
	m.Flow = &transport.FlowStep{
		ID: b.id, Next: link.next, Slot: link.slot, Waits: waits, Mode: mode,
		Catch: link.catch, Branch: link.branch,
	}
	b.msgs = append(b.msgs, m)
	return len(b.msgs) - 1
}
