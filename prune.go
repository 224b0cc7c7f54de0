package docket

import (
	"time"

	"github.com/docketq/docket/transport"
)

// pruneLoop deletes finished tasks whose result TTL passed, in batches.
func (w *worker) pruneLoop() {
	defer w.loops.Done()
	q := w.q
	pr, ok := q.t.(transport.Pruner)
	if !ok {
		return
	}
	tick := time.NewTicker(q.cfg.pruneInterval)
	defer tick.Stop()
	const batch = 1000
	for {
		select {
		case <-w.quitLoops:
			return
		case <-tick.C:
		}
		for !w.stopping() {
			ctx, cancel := w.call(w.loopCall())
			n, err := pr.Prune(ctx, transport.PruneParams{Now: q.now(), Limit: batch})
			cancel()
			if err != nil {
				q.cfg.logger.Warn("docket: prune failed", "err", err)
				break
			}
			if n < batch {
				break
			}
		}
	}
}
