package amqp

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/docketq/docket/transport"
)

// Tasks the broker lost. With a result store, the store knows every task
// that should have a message somewhere in RabbitMQ: in its queue, in the
// delay levels, or held by a worker. RabbitMQ can still lose one: a
// cluster of RabbitMQ 3.10 was seen to drop a copy on its way between
// delay queues while a node stopped (TestFaultClusterRestarts), and an
// operator can purge a queue. Such a task would wait forever.
//
// So each consuming process asks the store, about every resendSweep, for
// the tasks of the queues it consumes that are past their time by more
// than lostAfter (scheduled or ready, or running under a lease that ended:
// transport.Overdue), and publishes them again. It asks only about queues
// that are not paused and whose RabbitMQ queue holds no ready message: a
// backlog keeps tasks waiting past their time without any loss, and its
// tasks would all look lost. It publishes a task again at most once per
// resendMemory. A copy published for a task that was not lost after all
// (held by a worker that had not leased it yet) adds no run: the store
// leases by id, so a copy of a task that runs waits until its lease ends,
// and a copy of a finished task is dropped.
//
// What it cannot see: a queue nobody consumes, or one that never drains.
// A task lost there waits until the queue is idle and consumed.

// resendSweep is about how often a consuming process looks for lost tasks
// (each process a little differently, so that processes do not publish
// the same copies at once).
const resendSweep = 30 * time.Second

// lostAfter is how long past its time a task must be before it is taken
// for lost: far longer than a delivery takes through an idle queue.
const lostAfter = time.Minute

// resendMemory is how long a process publishes a task again at most once.
const resendMemory = 10 * time.Minute

// resendLoop looks for lost tasks until the transport is closed.
func (st *stored) resendLoop() {
	defer st.bg.Done()
	base, cancel := st.untilDone()
	defer cancel()
	for {
		select {
		case <-st.done:
			return
		case <-time.After(resendSweep*3/4 + rand.N(resendSweep/2)):
		}
		ctx, cancel := context.WithTimeout(base, resendSweep)
		_, err := st.resendOverdue(ctx, lostAfter)
		cancel()
		if err != nil && base.Err() == nil {
			st.log.Warn("docket: amqp: looking for tasks RabbitMQ lost failed; trying again later", "err", err)
		}
	}
}

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
	now := st.now()
	paused, err := st.admin.Paused(ctx, transport.PausedParams{Now: now})
	if err != nil {
		return 0, err
	}
	s, err := st.session(ctx)
	if err != nil {
		return 0, err
	}
	var idle []string
	for _, q := range queues {
		if slices.ContainsFunc(paused, func(p transport.QueuePause) bool { return p.Queue == q }) {
			continue
		}
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
	msgs, err := od.Overdue(ctx, transport.OverdueParams{Now: now, Before: now.Add(-lost), Queues: idle, Limit: relayBatch})
	if err != nil {
		return 0, err
	}
	st.resentMu.Lock()
	maps.DeleteFunc(st.resent, func(_ string, at time.Time) bool { return now.Sub(at) >= resendMemory })
	msgs = slices.DeleteFunc(msgs, func(m transport.Message) bool { _, done := st.resent[m.ID]; return done })
	st.resentMu.Unlock()
	if len(msgs) == 0 {
		return 0, nil
	}
	for i := range msgs {
		msgs[i].ETA = time.Time{} // due long ago: straight to its queue
	}
	ids, err := st.publishEach(ctx, now, msgs, "lost task")
	st.resentMu.Lock()
	for _, id := range ids {
		st.resent[id] = now
	}
	st.resentMu.Unlock()
	if len(ids) > 0 {
		st.log.Warn("docket: amqp: published again tasks past their time that RabbitMQ no longer held",
			"tasks", len(ids), "ids", ids[:min(len(ids), 20)], "overdue_more_than", lost)
	}
	return len(ids), err
}
