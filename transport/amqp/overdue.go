package amqp

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/docketq/docket/transport"
)

// Tasks the broker lost. With a result store, the store knows every task
// that should have a message somewhere in RabbitMQ: in its queue, in the
// delay levels, or held by a worker. RabbitMQ can still lose one: a
// cluster of RabbitMQ 3.10 was seen to drop a copy on its way between
// delay queues while a node went down (TestFaultClusterRestarts), and an
// operator can purge a queue. Such a task would wait forever.
//
// So each consuming process asks the store, every resendSweep, for the
// tasks of the queues it consumes that are past their time by more than
// lostAfter (scheduled or ready, or running under a lease that ended:
// transport.Overdue), and publishes them again. It asks only about queues
// whose RabbitMQ queue holds no ready message: a backlog keeps tasks
// waiting past their time without any loss, and its tasks would all look
// lost. A copy published for a task that was not lost after all (held
// by a worker that had not leased it yet) is harmless: the store leases
// by id, so the task runs once, and the copy of a finished task is
// dropped.

// resendSweep is how often a consuming process looks for lost tasks.
const resendSweep = 30 * time.Second

// lostAfter is how long past its time a task must be before it is taken
// for lost: far longer than a delivery takes through an idle queue.
const lostAfter = time.Minute

// resendOverdue publishes again the tasks lost by the broker (see above)
// and reports how many it published.
func (st *stored) resendOverdue(ctx context.Context, lost time.Duration) (int, error) {
	od, ok := st.store.(transport.Overdue)
	if !ok {
		return 0, nil
	}
	st.mu.Lock()
	queues := slices.Sorted(maps.Keys(st.queues))
	st.mu.Unlock()
	if len(queues) == 0 {
		return 0, nil
	}
	s, err := st.session(ctx)
	if err != nil {
		return 0, err
	}
	var idle []string
	for _, q := range queues {
		n, err := st.depth(ctx, s, q)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			idle = append(idle, q)
		}
	}
	if len(idle) == 0 {
		return 0, nil
	}
	now := st.now()
	msgs, err := od.Overdue(ctx, transport.OverdueParams{Now: now, Before: now.Add(-lost), Queues: idle, Limit: relayBatch})
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	for i := range msgs {
		msgs[i].ETA = time.Time{} // due long ago: straight to its queue
	}
	if err := st.publishNew(ctx, now, msgs); err != nil {
		return 0, err
	}
	ids := make([]string, len(msgs))
	for i := range msgs {
		ids[i] = msgs[i].ID
	}
	st.log.Warn("docket: amqp: published again tasks past their time that RabbitMQ no longer held", "tasks", len(msgs), "ids", ids, "overdue_by", lost)
	return len(msgs), nil
}
