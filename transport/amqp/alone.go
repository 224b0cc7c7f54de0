package amqp

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/transport"
)

// alone is the RabbitMQ transport without a result store: RabbitMQ carries
// every task, and a task's state is known only to the process that
// enqueued it.
//
//   - Durable: the task messages, in durable quorum (or classic) queues
//     and delay levels, published persistent with confirms. Nothing else:
//     a task's state and result live in its producer's memory and die
//     with it. The producer keeps a task while a handle on its result is
//     reachable in the process, and otherwise only among the last
//     rememberTasks it enqueued (final states for an hour at most, or
//     their ResultTTL if shorter); so its memory depends on the handles
//     the program holds, not on how many tasks it enqueued.
//   - Other processes: workers send each task's retries, releases and final
//     state to its producer's reply queue (PREFIX.reply.ID), one message
//     per producer for each batch of outcomes; a producer in another
//     process learns nothing of a task it did not enqueue (Get answers
//     ErrNotFound, Lookup leaves it out), and never sees a task start. A
//     task that ignores its result names no reply queue: nobody is told
//     its state, and its producer does not keep it. Cancel is broadcast to every connected process and remembered
//     for a day; a process that connects later does not know of it.
//   - Not offered: unique keys (Enqueue refuses them with ErrUnsupported),
//     duplicate-id checks (enqueueing an id again publishes a second
//     message), listing, retention and schedules (no Lister, Pruner or
//     ScheduleStore).
//   - Connection loss: the consumer's channel is the lease. The tasks
//     running on a lost connection are reported lost (EventLost; Extend
//     and Finish answer Lost) and RabbitMQ delivers them again, counted
//     as one more attempt; their late outcomes are refused. Reports sent
//     to this process while it reconnects wait in its reply queue.
type alone struct {
	*broker

	replyName atomic.Pointer[string] // this process's reply queue (see consumeReplies)

	// under mu
	replyMove int                // reply queues given up
	replies   bool               // a reply queue is wanted (this process enqueued)
	known     map[string]*record // the tasks this process enqueued and keeps
	recent    []string           // ids of the last rememberTasks of them, a ring
	oldest    int                // the ring's oldest entry, once it is full
}

// rememberTasks is how many of the tasks it enqueued last a producer keeps
// without a handle on them: enough for Info by id on recent tasks, and a
// bound on memory (about half a KiB each, plus arguments) whatever the
// rate of enqueues.
const rememberTasks = 10_000

var (
	_ transport.Transport    = (*alone)(nil)
	_ transport.Subscriber   = (*alone)(nil)
	_ transport.ClaimStopper = (*alone)(nil)
	_ transport.Retainer     = (*alone)(nil)
)

// newAlone returns the transport of RabbitMQ alone on b, not connected yet.
func newAlone(b *broker) *alone {
	a := &alone{broker: b, known: map[string]*record{}}
	reply := b.name("reply." + b.id)
	a.replyName.Store(&reply)
	b.mode = a
	return a
}

// start connects, and starts forgetting finished tasks.
func (a *alone) start(ctx context.Context) error {
	if err := a.broker.start(ctx); err != nil {
		return err
	}
	a.every(time.Minute, a.forgetFinished)
	return nil
}

// Close gives back the deliveries no worker took, and closes the
// connection.
func (a *alone) Close() error {
	a.shutdown()
	return nil
}

// sessionStarting consumes the reply queue on a new session once this
// process enqueued.
func (a *alone) sessionStarting(ctx context.Context, s *session) error {
	a.mu.Lock()
	replies := a.replies
	a.mu.Unlock()
	if !replies {
		return nil
	}
	return a.consumeReplies(ctx, s)
}

// sessionLost forgets the tasks s delivered: the channel was their lease,
// and RabbitMQ delivers them again.
func (a *alone) sessionLost(s *session) []string {
	var lost []string
	for id, h := range a.inflight {
		if h.s == s {
			delete(a.inflight, id)
			lost = append(lost, id)
		}
	}
	return lost
}

// cancelHeard flags a task this process enqueued.
func (a *alone) cancelHeard(id string) {
	if r := a.known[id]; r != nil && !r.info.State.Terminal() {
		r.info.CancelRequested = true
	}
}

// Enqueue implements transport.Transport: it publishes every message and
// returns once the broker confirmed them all. RabbitMQ cannot check ids or
// unique keys; a message with a unique key is refused (ErrUnsupported).
// When a batch fails part way, the messages already accepted are cancelled
// (broadcast), so none of the batch runs unless a worker took one first.
// A failure after the messages were sent, before every confirm arrived,
// matches ErrOutcomeUnknown (see publish).
func (a *alone) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if len(p.Messages) == 0 {
		return nil, nil
	}
	for i := range p.Messages {
		if k := p.Messages[i].UniqueKey; k != "" {
			return nil, fmt.Errorf("docket: amqp: unique key %q: %w: RabbitMQ alone keeps no shared task state to enforce it; give it a result store (docket's ResultStore option, or Config.ResultStore)", k, transport.ErrUnsupported)
		}
	}
	s, err := a.session(ctx)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(p.Messages, func(m transport.Message) bool { return !m.IgnoreResult }) {
		if err := a.wantReplies(ctx, s); err != nil {
			return nil, err
		}
	}
	out, err := a.newMessages(ctx, s, p.Now, p.Messages, a.replyQueue())
	if err != nil {
		return nil, err
	}
	res := make([]transport.EnqueueResult, len(p.Messages))
	for i := range p.Messages {
		res[i].ID = p.Messages[i].ID
	}
	// Known before publishing: a fast worker's report may arrive before
	// the confirm does.
	a.remember(p.Now, p.Messages)
	if err := a.publish(ctx, s, out); err != nil {
		return nil, a.unpublished(res, err)
	}
	return res, nil
}

// remember records new tasks as this process's own, among the recent
// ones; a task that ignores its result is not reported, so not kept.
func (a *alone) remember(now time.Time, msgs []transport.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range msgs {
		if msgs[i].IgnoreResult {
			continue
		}
		in := transport.Info{Message: msgs[i], State: transport.StateReady}
		in.ReturnExisting = false
		if now.Before(in.ETA) {
			in.State, in.RunAt = transport.StateScheduled, in.ETA
		}
		// The handle Enqueue's caller gets holds the task from the
		// start, so a batch larger than the ring keeps every task.
		r := a.known[in.ID]
		if r == nil {
			r = &record{}
			a.known[in.ID] = r
		}
		r.info = in // an id enqueued again: the new task, the old handles
		r.handles++
		r.recent++
		a.addRecent(in.ID)
	}
}

// addRecent puts id in the ring of recent tasks; the task that leaves it
// is forgotten unless a handle holds it. The caller holds mu.
func (a *alone) addRecent(id string) {
	if len(a.recent) < rememberTasks {
		a.recent = append(a.recent, id)
		return
	}
	out := a.recent[a.oldest]
	a.recent[a.oldest] = id
	a.oldest = (a.oldest + 1) % len(a.recent)
	if r := a.known[out]; r != nil {
		r.recent--
		a.keepOrForget(out, r)
	}
}

// keepOrForget forgets the task r when nothing keeps it any more. The
// caller holds mu.
func (a *alone) keepOrForget(id string, r *record) {
	if r.recent <= 0 && r.handles <= 0 && a.known[id] == r {
		delete(a.known, id)
	}
}

// Retain implements transport.Retainer: another handle on the task's
// result keeps it.
func (a *alone) Retain(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.known[id]; r != nil {
		r.handles++
	}
}

// Release implements transport.Retainer.
func (a *alone) Release(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.known[id]; r != nil && r.handles > 0 {
		r.handles--
		a.keepOrForget(id, r)
	}
}

// unpublished forgets the tasks of a failed Enqueue and, for a batch,
// cancels them (broadcast), so that none runs unless a worker took it
// already. It returns the error of the Enqueue.
func (a *alone) unpublished(res []transport.EnqueueResult, err error) error {
	ids := make([]string, len(res))
	a.mu.Lock()
	for i, r := range res {
		ids[i] = r.ID
		delete(a.known, r.ID)
	}
	a.mu.Unlock()
	if len(ids) > 1 {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if cerr := a.broadcastCancel(cctx, ids); cerr != nil {
			err = fmt.Errorf("%w (and cancelling the accepted part of the batch failed: %v)", err, cerr)
		}
		cancel()
	}
	return err
}

// Claim implements transport.Transport (see broker.claim). A task that
// runs is recorded as started for a producer in this process; producers
// elsewhere are not told (a message per start would double the broker's
// work per task).
func (a *alone) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	res, err := a.claim(ctx, p, a.decide)
	if len(res.Deliveries) == 0 {
		return res, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, d := range res.Deliveries {
		a.applyLocked(d.ID, stateUpdate{state: transport.StateRunning, attempt: d.Attempt, at: p.Now})
	}
	return res, err
}

// decide decides, with RabbitMQ alone, which deliveries run: the message
// and this process's memory of cancellations are all there is to go by.
func (a *alone) decide(ctx context.Context, s *session, p transport.ClaimParams, picked []*held) (verdict, error) {
	var v verdict
	var rs reports
	for _, h := range picked {
		id := h.msg.ID
		var state transport.State
		var reason string
		a.mu.Lock()
		revoked := a.isRevoked(id)
		a.mu.Unlock()
		switch {
		case h.bad != nil:
			v.settle = append(v.settle, settlement{h: h, out: []outgoing{a.undecodable(h)}})
			continue
		case revoked:
			state, reason = transport.StateCancelled, "cancelled before it started"
		case !h.msg.Expires.IsZero() && !p.Now.Before(h.msg.Expires):
			state, reason = transport.StateExpired, "expired before it started"
		case p.Now.Before(h.msg.ETA):
			// Early (an ETA beyond one trip through the delay levels, or
			// another host's clock): around the levels again.
			c, err := a.copyOf(ctx, s, h, h.used, h.lastErr, h.msg.ETA, p.Now)
			if err != nil {
				a.requeue([]*held{h})
				continue
			}
			v.settle = append(v.settle, settlement{h: h, out: []outgoing{c}})
			continue
		case h.attempt > h.msg.MaxAttempts:
			state = transport.StateFailed
			reason = fmt.Sprintf("worker lost: delivered %d times without an outcome (max attempts %d)", h.attempt-1, h.msg.MaxAttempts)
		default:
			v.give = append(v.give, h)
			continue
		}
		st := settlement{h: h}
		if state == transport.StateFailed {
			st.out = append(st.out, a.deadLetter(h, reason))
		}
		u := stateUpdate{state: state, attempt: h.attempt - 1, at: p.Now, err: reason}
		if rs == nil {
			rs = reports{}
		}
		rs.add(h, u)
		a.apply(id, u)
		v.settle = append(v.settle, st)
		v.ended = append(v.ended, transport.Status{ID: id, State: state, Name: h.msg.Name, Queue: h.msg.Queue, Attempt: u.attempt})
	}
	if rs != nil {
		v.beforeAck = func(ctx context.Context) error { return a.sendReports(ctx, s, rs) }
	}
	return v, nil
}

// lease returns the in-flight delivery l holds. The lease is the channel
// that delivered the task, so it must still be open. The caller holds mu.
func (a *alone) lease(l transport.Lease) *held {
	h := a.heldLease(l)
	if h == nil || h.s != a.sess || !h.s.alive() {
		return nil
	}
	return h
}

// Extend implements transport.Transport. The lease is the consumer's
// channel, which RabbitMQ keeps while the connection lives: Extend reports
// it lost once the session that delivered the task is gone.
func (a *alone) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out := make([]transport.ExtendResult, len(p.Leases))
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, l := range p.Leases {
		if a.lease(l) == nil {
			out[i].Lost = true
			continue
		}
		out[i].CancelRequested = a.isRevoked(l.ID)
	}
	return out, nil
}

// Finish implements transport.Transport. For each outcome it publishes what
// must follow (a retry's or a release's new copy), waits for the broker's
// confirms, sends the final state to the producer, and then acknowledges
// the delivery. A crash in between leaves the delivery unacknowledged: it
// is delivered again (at least once). An outcome whose channel closed is
// Lost.
func (a *alone) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	res := make([]transport.FinishResult, len(p.Items))
	if len(p.Items) == 0 {
		return res, nil
	}
	if err := checkOutcomes(p.Items); err != nil {
		return nil, err
	}
	items := a.withPendingCancels(p.Items)
	hs := make([]*held, len(items))
	a.mu.Lock()
	for i, o := range items {
		if hs[i] = a.lease(o.Lease); hs[i] == nil {
			res[i].Lost = true
		}
	}
	a.mu.Unlock()
	s, err := a.current()
	if err != nil {
		// The session that delivered these tasks is gone, and with it
		// their leases.
		a.forget(items)
		return allLost(res), nil
	}
	out, err := a.outcomeCopies(ctx, s, p.Now, items, hs)
	if err != nil {
		return nil, err
	}
	rs := reports{}
	for i, h := range hs {
		if h != nil {
			rs.add(h, update(h, items[i], p.Now))
		}
	}
	if err := a.publish(ctx, s, out); err != nil {
		return nil, err
	}
	if err := a.sendReports(ctx, s, rs); err != nil {
		return nil, err
	}
	if err := ackHeld(hs, a.consumingAny()); err != nil {
		// The channel is gone; the broker redelivers the tasks, and the
		// copies or results just published may run or count twice.
		res = allLost(res)
	}
	a.release(items, hs)
	return res, nil
}

// allLost marks every result lost.
func allLost(res []transport.FinishResult) []transport.FinishResult {
	for i := range res {
		res[i].Lost = true
	}
	return res
}

// cancelledAtRelease is the error recorded for a task whose worker gave it
// back (at shutdown) while a cancel was pending; the stores record the
// same text.
const cancelledAtRelease = "cancelled; its worker released it before it finished"

// withPendingCancels returns items with every retry or release of a task
// whose cancel this process received turned into the task's cancellation:
// publishing the task again would lose the cancel for every process that
// did not receive the broadcast. items is not modified.
func (a *alone) withPendingCancels(items []transport.Outcome) []transport.Outcome {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []transport.Outcome
	for i, o := range items {
		if (o.State != transport.StateReady && o.State != transport.StateScheduled) || !a.isRevoked(o.ID) {
			continue
		}
		if out == nil {
			out = slices.Clone(items)
		}
		c := &out[i]
		switch {
		case o.State == transport.StateReady:
			c.Error = cancelledAtRelease
		case o.Error != "":
			c.Error = fmt.Sprintf("cancelled; attempt %d failed: %s", o.Attempt, o.Error)
		default:
			c.Error = fmt.Sprintf("cancelled; attempt %d failed", o.Attempt)
		}
		c.State, c.RunAt, c.Result = transport.StateCancelled, time.Time{}, nil
	}
	if out == nil {
		return items
	}
	return out
}

// Cancel implements transport.Transport: it broadcasts the request to
// every connected process. The state returned is what this process knows:
// Running when the task started, the final state when it ended, and
// Cancelled otherwise (the worker that receives it drops it and reports
// Cancelled).
func (a *alone) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	a.revoke([]string{p.ID})
	if err := a.broadcastCancel(ctx, []string{p.ID}); err != nil {
		return transport.CancelResult{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.known[p.ID]
	switch {
	case r == nil:
		return transport.CancelResult{State: transport.StateCancelled}, nil
	case r.info.State.Terminal(), r.info.State == transport.StateRunning:
		return transport.CancelResult{State: r.info.State}, nil
	}
	return transport.CancelResult{State: transport.StateCancelled}, nil
}

// Get implements transport.Transport for the tasks this process enqueued.
func (a *alone) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.known[p.ID]
	if r == nil {
		return transport.Info{}, fmt.Errorf("docket: task %s: %w (with RabbitMQ alone a process knows only the tasks it enqueued, while a handle on the result is held or among its last %d, and none that ignores its result; a result store keeps them all)", p.ID, transport.ErrNotFound, rememberTasks)
	}
	return r.info, nil
}

// Lookup implements transport.Transport for the tasks this process
// enqueued; the others are left out.
func (a *alone) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]transport.Status, 0, len(p.IDs))
	for _, id := range p.IDs {
		if r := a.known[id]; r != nil {
			out = append(out, transport.Status{ID: id, State: r.info.State, CancelRequested: r.info.CancelRequested})
		}
	}
	return out, nil
}
