package amqp

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/docketq/docket/transport"
)

// Workflows with a result store. The store keeps the workflow's steps and
// advances them in the writes that end steps, as it does on its own; what
// RabbitMQ adds is that a step runs when its message is delivered.
//
//   - Enqueue publishes the steps that are ready now (the first ones), then
//     records every step in the store, all or nothing, as for plain tasks.
//     The steps that wait are recorded with transport.FlowPublish.
//   - When a join in the store makes such a step ready, the store lists it
//     in its outbox (transport.FlowOutbox) in the same write. The relay of
//     each process publishes the outbox's steps and takes them off it once
//     RabbitMQ confirmed them. The relay runs at once after every write of
//     this process that may have ended a step (an outcome, a claim that
//     ended tasks, a cancel, an operator's action), and every relaySweep
//     otherwise, for steps made ready by a process that died before it
//     published them.
//   - A step published twice (two processes' relays, or a crash between
//     the publication and its record) runs once: the store leases by id.

// relaySweep is how often the relay reads the outbox when nothing woke
// it: the longest a step made ready by a process that died before it
// published the step waits for another process. The read costs an index
// probe on SQLite and one ZRANGE on Redis.
const relaySweep = 5 * time.Second

// relayBatch is how many steps one round of the relay publishes.
const relayBatch = 256

var _ transport.Workflows = (*stored)(nil)

// Steps implements transport.Workflows, from the store.
func (st *stored) Steps(ctx context.Context, p transport.StepsParams) ([]transport.Info, error) {
	return st.flows.Steps(ctx, p)
}

// CancelFlow implements transport.Workflows: the store cancels the
// workflow, and the cancel of its running steps is broadcast, as for a
// task's.
func (st *stored) CancelFlow(ctx context.Context, p transport.CancelParams) (transport.CancelFlowResult, error) {
	res, err := st.flows.CancelFlow(ctx, p)
	if err != nil || len(res.Running) == 0 {
		return res, err
	}
	st.revoke(res.Running)
	return res, st.broadcastCancel(ctx, res.Running)
}

// flowMessages returns msgs with the steps that wait marked FlowPublish
// (copies: msgs is left as it is), and the messages to publish now: plain
// tasks and the steps that are ready.
func flowMessages(msgs []transport.Message) (all, now []transport.Message) {
	if !slices.ContainsFunc(msgs, func(m transport.Message) bool { return m.Flow != nil }) {
		return msgs, msgs
	}
	all = slices.Clone(msgs)
	for i := range all {
		f := all[i].Flow
		if f == nil || f.Waits == 0 {
			now = append(now, all[i])
			continue
		}
		marked := *f
		marked.Mode |= transport.FlowPublish
		all[i].Flow = &marked
	}
	return all, now
}

// kickRelay asks the relay to read the outbox now.
func (st *stored) kickRelay() {
	select {
	case st.relayKick <- struct{}{}:
	default:
	}
}

// untilDone returns a context that ends when the transport is closed (or
// when cancel is called).
func (st *stored) untilDone() (context.Context, context.CancelFunc) {
	base, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-st.done:
		case <-base.Done():
		}
		cancel()
	}()
	return base, cancel
}

// relayLoop publishes the outbox's steps when kicked, and every
// relaySweep, until the transport is closed.
func (st *stored) relayLoop() {
	defer st.bg.Done()
	base, cancel := st.untilDone()
	defer cancel()
	timer := time.NewTimer(relaySweep)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-st.done:
			return
		case <-st.relayKick:
		case <-timer.C:
		}
		if err := st.relay(base); err != nil && base.Err() == nil {
			failures++
			if failures == 1 || failures%100 == 0 {
				st.log.Warn("docket: amqp: publishing ready workflow steps failed; trying again", "err", err, "failures", failures)
			}
		} else {
			failures = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(relaySweep)
	}
}

// publishEach publishes msgs as one batch and returns their ids; when the
// batch fails, it publishes them one by one, so that a message RabbitMQ
// refuses holds up no other, and returns the ids published with an error
// naming the first refused (what names the kind of message).
func (st *stored) publishEach(ctx context.Context, now time.Time, msgs []transport.Message, what string) ([]string, error) {
	var ids []string
	if err := st.publishNew(ctx, now, msgs); err == nil {
		for i := range msgs {
			ids = append(ids, msgs[i].ID)
		}
		return ids, nil
	}
	var failed error
	for i := range msgs {
		if err := st.publishNew(ctx, now, msgs[i:i+1]); err != nil {
			if failed == nil {
				failed = fmt.Errorf("docket: amqp: publish %s %s (%s): %w", what, msgs[i].ID, msgs[i].Name, err)
			}
			continue
		}
		ids = append(ids, msgs[i].ID)
	}
	return ids, failed
}

// relay publishes the outbox's steps, relayBatch at a time, each batch
// taken off the outbox once RabbitMQ confirmed it, until the outbox is
// empty.
func (st *stored) relay(base context.Context) error {
	for {
		ctx, cancel := context.WithTimeout(base, 30*time.Second)
		n, err := st.relayOnce(ctx)
		cancel()
		if err != nil || n == 0 {
			return err
		}
	}
}

// relayOnce publishes one batch of the outbox and reports its size. A
// step RabbitMQ refuses (a chord's gathered arguments beyond the broker's
// max_message_size) holds up no other (see publishEach): it stays in the
// outbox, and the error names it.
func (st *stored) relayOnce(ctx context.Context) (int, error) {
	now := st.now()
	msgs, err := st.outbox.Outbox(ctx, transport.OutboxParams{Now: now, Limit: relayBatch})
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	ids, err := st.publishEach(ctx, now, msgs, "workflow step")
	if len(ids) == 0 {
		return 0, err
	}
	if perr := st.outbox.Published(ctx, transport.PublishedParams{Now: now, IDs: ids}); perr != nil {
		return 0, perr
	}
	if err != nil {
		return 0, err
	}
	return len(ids), nil
}
