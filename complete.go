package docket

import (
	"time"

	"github.com/docketq/docket/internal/backoff"
	"github.com/docketq/docket/transport"
)

type finishReq struct {
	ex  *execution
	out transport.Outcome
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
	w.unhold(ex)
	select {
	case w.finishCh <- finishReq{ex, out}:
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
	if len(batch) == cap(batch) || w.heldCount() == 0 {
		return batch
	}
	linger.Reset(finishLinger)
	defer linger.Stop()
	for len(batch) < cap(batch) {
		select {
		case r := <-w.finishCh:
			batch = append(batch, r)
			if w.heldCount() == 0 {
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
		params := transport.FinishParams{Items: items}
		giveUp := time.Now().Add(q.cfg.lease)
		for attempt := 0; ; attempt++ {
			// An outcome write is not cut short: one stopped halfway
			// would leave a broker's delivery neither acknowledged nor
			// given back. It takes as long as the backend makes it (a
			// broker's flow control), and the worker's ctx outlives the
			// completer.
			params.Now = q.now()
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
	}
}
