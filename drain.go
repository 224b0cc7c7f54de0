package docket

import (
	"context"

	"github.com/docketq/docket/transport"
	"github.com/oklog/ulid/v2"
)

// Drain runs every task that is due, one at a time in the caller's
// goroutine, through the same execution path as Run (decoding, timeouts,
// panics, retries, results), until none is due; tasks that handlers enqueue
// run too if due. Retries and countdowns in the future are left alone:
// advance the clock (see dockettest) and Drain again. It returns how many
// attempts ran. Drain takes the queues this Queue knows: those of registered
// tasks, those it enqueued to, those named by the Queues option, and
// "default". Per-task concurrency and rate limits do not apply.
func (q *Queue) Drain(ctx context.Context) (int, error) {
	if q.isClosed() {
		return 0, ErrClosed
	}
	owner := "drain:" + ulid.Make().String()
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if _, err := q.fireDue(ctx); err != nil {
			return n, err
		}
		now := q.now()
		res, err := q.claim(ctx, transport.ClaimParams{
			Now: now, Owner: owner, Queues: q.allQueues(), Limit: 1, LeaseUntil: now.Add(q.cfg.lease),
		})
		if err != nil {
			return n, err
		}
		if len(res.Deliveries) == 0 {
			if len(res.Ended) > 0 {
				continue
			}
			return n, nil
		}
		for i := range res.Deliveries {
			d := &res.Deliveries[i]
			dctx, cancel := context.WithCancelCause(ctx)
			out, skip, run := q.execute(dctx, d)
			cancel(nil)
			n++
			if skip {
				q.leaseLost(d, run)
				continue
			}
			params := transport.FinishParams{Now: q.now(), Items: []transport.Outcome{out}}
			res, err := q.t.Finish(context.WithoutCancel(ctx), params)
			if err != nil {
				q.attemptEnded(d, &transport.Outcome{Error: "recording the outcome failed: " + err.Error()}, true, run)
				return n, err
			}
			q.attemptEnded(d, &out, res[0].Lost, run)
			q.announceFinish(params, res)
		}
	}
}
