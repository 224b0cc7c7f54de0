package docket

import (
	"time"

	"github.com/docketq/docket/transport"
)

// heartbeatLoop extends the leases of every held task every lease/3 and
// cancels handlers whose lease was lost or whose task was cancelled.
func (w *worker) heartbeatLoop() {
	defer w.loops.Done()
	q := w.q
	tick := time.NewTicker(q.cfg.lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-w.quitLoops:
			return
		case <-tick.C:
		}
		w.tick(&w.beatTick)
		w.mu.Lock()
		exs := make([]*execution, 0, len(w.inflight))
		leases := make([]transport.Lease, 0, len(w.inflight))
		for _, ex := range w.inflight {
			exs = append(exs, ex)
			leases = append(leases, ex.d.Lease())
		}
		w.mu.Unlock()
		if len(leases) == 0 {
			continue
		}
		now := q.now()
		until := now.Add(q.cfg.lease)
		ctx, cancel := w.call(q.cfg.lease) // a renewal slower than a lease renews nothing
		res, err := q.t.Extend(ctx, transport.ExtendParams{Now: now, Leases: leases, Until: until})
		cancel()
		if err != nil {
			q.cfg.logger.Warn("docket: lease renewal failed", "err", err, "tasks", len(leases))
			// Without a renewal, a lease that has run out is lost: stop
			// those handlers, another worker may already run the task.
			// The failed call may have taken most of a lease, so the
			// leases are measured against the time it returned.
			after := q.now()
			for _, ex := range exs {
				ex.mu.Lock()
				until, finished := ex.leaseUntil, ex.finished
				ex.mu.Unlock()
				if after.Before(until) {
					continue
				}
				if !finished { // a finished one is reported by the completer
					q.cfg.logger.Warn("docket: lease lost; stopping the handler", deliveryAttr(&ex.d), "lease_until", until)
				}
				ex.cancel(errLeaseLost)
			}
			continue
		}
		for i, ex := range exs {
			ex.mu.Lock()
			finished := ex.finished
			ex.mu.Unlock()
			switch {
			case res[i].Lost && finished:
				// Recorded, or about to be refused and reported by the
				// completer: no handler is left to stop.
			case res[i].Lost:
				q.cfg.logger.Warn("docket: lease lost; stopping the handler", deliveryAttr(&ex.d), "lease_until", ex.until())
				ex.cancel(errLeaseLost)
			case res[i].CancelRequested:
				ex.cancel(errCancelRequested)
				fallthrough
			default:
				ex.mu.Lock()
				ex.leaseUntil = until
				ex.mu.Unlock()
			}
		}
	}
}
