package docket

import (
	"time"

	"github.com/docketq/docket/internal/backoff"
	"github.com/docketq/docket/transport"
)

type finishReq struct {
	ex  *execution
	out transport.Outcome
	// passed: ex's room in the capacity passes to the step its success
	// may make ready (see reserveHandoff).
	passed bool
}

// finish hands an outcome to the completer, which writes outcomes in
// batches. The task no longer counts against the capacity, so the next
// claim can share a transaction with this outcome; its lease is still
// renewed until the outcome is recorded. After the completer stopped (a
// handler that outlived a hard stop), the outcome is dropped: its task was
// already released.
//
// Only the first outcome of an execution counts: at a hard stop the
// worker releases a task whose handler ignored ctx, and the handler's
// own outcome, if it comes later, is dropped here (the store would
// refuse it).
func (w *worker) finish(ex *execution, out transport.Outcome) {
	ex.mu.Lock()
	was := ex.finished
	ex.finished = true
	ex.mu.Unlock()
	if was {
		return
	}
	passed := w.q.flows && out.Flow != "" && out.Flow != out.ID && out.State == transport.StateSucceeded && w.passOn(ex)
	if !passed {
		w.unhold(ex)
	}
	select {
	case w.finishCh <- finishReq{ex, out, passed}:
	case <-w.completeDone:
	}
}

// done forgets an execution: its outcome is recorded, or must not be.
func (w *worker) done(ex *execution) {
	w.unhold(ex)
	ex.cancel(nil)
	w.mu.Lock()
	if w.inflight[ex.d.ID] == ex {
		delete(w.inflight, ex.d.ID)
	}
	w.mu.Unlock()
}

// finishBackoff spaces the retries of an outcome write that failed.
var finishBackoff = backoff.Policy{Min: 20 * time.Millisecond, Max: time.Second}

// finishLinger is how long the completer waits for more outcomes while
// other tasks of the worker are still running or waiting to run.
const finishLinger = time.Millisecond

// gather adds the outcomes waiting in finishCh to batch. While other tasks
// of the worker are running or waiting to run, it lingers up to
// finishLinger for theirs: a busy worker then records outcomes tens at a
// time, in one write, one broker round or one acknowledgement frame,
// instead of one or two at a time. It stops at once when the worker has
// nothing else in hand (a lone task's outcome is not delayed) or the
// batch is full.
func (w *worker) gather(batch []finishReq, linger *time.Timer) []finishReq {
	for len(batch) < cap(batch) {
		select {
		case r := <-w.finishCh:
			batch = append(batch, r)
			continue
		default:
		}
		break
	}
	// The places passed on by the batch's steps (see reserveHandoff)
	// are not other tasks in hand.
	passed := 0
	for _, r := range batch {
		if r.passed {
			passed++
		}
	}
	if len(batch) == cap(batch) || w.heldCount() == passed {
		return batch
	}
	linger.Reset(finishLinger)
	defer linger.Stop()
	for len(batch) < cap(batch) {
		select {
		case r := <-w.finishCh:
			batch = append(batch, r)
			if r.passed {
				passed++
			}
			if w.heldCount() == passed {
				return batch
			}
		case <-linger.C:
			return batch
		case <-w.quitLoops:
			return batch
		}
	}
	return batch
}

// completer writes attempt outcomes in batches, retrying transient errors
// while the leases are still held.
func (w *worker) completer() {
	defer close(w.completeDone)
	q := w.q
	batch := make([]finishReq, 0, 256)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		var first finishReq
		select {
		case first = <-w.finishCh:
		case <-w.quitLoops:
			// Flush what is queued, then stop.
			select {
			case first = <-w.finishCh:
			default:
				return
			}
		}
		batch = w.gather(append(batch[:0], first), linger)
		items := make([]transport.Outcome, len(batch))
		for i, r := range batch {
			items[i] = r.out
		}
		var res []transport.FinishResult
		var err error
		params := transport.FinishParams{Items: items, Handoff: w.reserveHandoff(batch)}
		giveUp := time.Now().Add(q.cfg.lease)
		for attempt := 0; ; attempt++ {
			// An outcome write is not cut short: one stopped halfway
			// would leave a broker's delivery neither acknowledged nor
			// given back. It takes as long as the backend makes it (a
			// broker's flow control), and the worker's ctx outlives the
			// completer.
			params.Now = q.now()
			if params.Handoff != nil {
				params.Handoff.LeaseUntil = params.Now.Add(q.cfg.lease)
			}
			res, err = q.t.Finish(w.ctx, params)
			if err == nil || time.Now().After(giveUp) {
				break
			}
			if attempt == 0 {
				q.cfg.logger.Warn("docket: recording outcomes failed; retrying", "err", err, "tasks", len(items))
			}
			time.Sleep(finishBackoff.Delay(attempt))
		}
		if err != nil {
			q.cfg.logger.Error("docket: recording outcomes failed; the tasks will run again after their lease", "err", err, "tasks", len(items))
		}
		for i, r := range batch {
			r.ex.mu.Lock()
			run := r.ex.run
			r.ex.mu.Unlock()
			switch {
			case err != nil:
				q.attemptEnded(&r.ex.d, &transport.Outcome{Error: "recording the outcome failed: " + err.Error()}, true, run)
			case res[i].Lost:
				q.cfg.logger.Warn("docket: lease lost before the outcome was recorded; discarded", deliveryAttr(&r.ex.d), "outcome", r.out.State, "lease_until", r.ex.until())
				q.attemptEnded(&r.ex.d, &r.out, true, run)
			default:
				q.attemptEnded(&r.ex.d, &r.out, false, run)
			}
			w.done(r.ex)
		}
		if err == nil {
			q.announceFinish(params, res)
		}
		w.takeHandoffs(params.Handoff, res)
	}
}

// reserveHandoff returns the Handoff for a batch of outcomes. A workflow
// step's success keeps its room in the worker's capacity (passOn) for the
// step it may make ready, which the backend then leases to this worker in
// the same write (transport.FinishParams.Handoff): a chain's steps so run
// one after the other on one worker, each without a claim of its own,
// and the slot a step frees does not start a claim that would find
// nothing. Nil, with that room freed, when the worker is stopping or
// claims none of its queues now.
func (w *worker) reserveHandoff(batch []finishReq) *transport.Handoff {
	n := 0
	for _, r := range batch {
		if r.passed {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	var queues []string
	if !w.stopping() {
		queues = w.claimable(w.pausedNow())
	}
	if len(queues) == 0 {
		w.unreserve(n)
		return nil
	}
	exclude, _ := w.limits.excluded(time.Now())
	return &transport.Handoff{Owner: w.owner, Queues: queues, Exclude: exclude, Limit: n}
}

// unreserve frees n places reserved in the worker's capacity.
func (w *worker) unreserve(n int) {
	w.mu.Lock()
	w.held -= n
	w.mu.Unlock()
	signal(w.freed)
}

// takeHandoffs gives the executors the steps the backend leased to this
// worker by h (nil res: the write failed), and frees the room reserved
// for those it did not lease. Steps leased while the worker began to stop
// go back at once, their attempt not consumed.
func (w *worker) takeHandoffs(h *transport.Handoff, res []transport.FinishResult) {
	if h == nil {
		return
	}
	var back []transport.Outcome
	w.mu.Lock()
	for _, r := range res {
		if r.Next == nil {
			continue
		}
		h.Limit--
		if w.workClosed {
			back = append(back, transport.Outcome{Lease: r.Next.Lease(), Queue: r.Next.Queue, Flow: r.Next.FlowID(), State: transport.StateReady})
			continue
		}
		w.work <- w.track(*r.Next) // never blocks: its room was reserved
	}
	w.mu.Unlock()
	if h.Limit+len(back) > 0 {
		w.unreserve(h.Limit + len(back))
	}
	if len(back) > 0 {
		w.giveBack(back)
	}
}

// giveBack releases tasks leased to this worker that it will not run.
func (w *worker) giveBack(items []transport.Outcome) {
	q := w.q
	params := transport.FinishParams{Now: q.now(), Items: items}
	res, err := q.t.Finish(w.ctx, params)
	if err != nil {
		q.cfg.logger.Warn("docket: giving back tasks at stop failed; they run again after their lease", "err", err, "tasks", len(items))
		return
	}
	q.announceFinish(params, res)
}
