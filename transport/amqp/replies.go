package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// With RabbitMQ alone a producer keeps the state of the tasks it enqueued
// in memory, and workers send it every change over RabbitMQ, to the reply
// queue its messages name, like Celery's rpc result backend.

// replyExpires is how long a reply queue outlives its producer.
const replyExpires = 10 * time.Minute

// record is what a producer knows of a task it enqueued, and what keeps
// it: handles on its result in this process, and its place among the
// recent tasks.
type record struct {
	info    transport.Info
	handles int // handles reachable (see Retain)
	recent  int // places in the ring of recent tasks (an id enqueued again has two)
}

// stateUpdate is one state change of a task, as sent to its producer.
type stateUpdate struct {
	state   transport.State
	attempt int
	at      time.Time
	err     string
	runAt   time.Time
	result  []byte
}

// apply records u for a task this process enqueued. A task's first final
// state is kept: a late or duplicate report never changes it.
func (a *alone) apply(id string, u stateUpdate) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.known[id]
	if r == nil || r.info.State.Terminal() {
		return
	}
	in := &r.info
	in.State, in.Attempt = u.state, u.attempt
	switch {
	case u.state == transport.StateRunning:
		in.Started, in.RunAt = u.at, time.Time{}
	case u.state.Terminal():
		in.Finished, in.Error, in.Result = u.at, u.err, u.result
		in.Payload = nil // the arguments are not needed any more
	default:
		in.RunAt, in.Error = u.runAt, u.err
		if u.state == transport.StateScheduled {
			in.ETA = u.runAt
		}
	}
}

// report is one state change of a task, as sent to its producer.
type report struct {
	ID      string          `json:"id"`
	State   transport.State `json:"s"`
	Attempt int             `json:"a"`
	At      int64           `json:"t,omitempty"` // unix ms the task finished
	RunAt   int64           `json:"r,omitempty"` // unix ms a retry falls due
	Error   string          `json:"e,omitempty"`
	Result  []byte          `json:"v,omitempty"`
}

// reports gathers state changes by reply queue, so that one call sends one
// message to each producer however many of its tasks it settled: the
// broker's work per task stays close to one delivery and one ack.
type reports map[string][]report

// add records u for h's task, if its message names a reply queue.
func (rs reports) add(h *held, u stateUpdate) {
	if h.replyTo == "" {
		return
	}
	r := report{ID: h.msg.ID, State: u.state, Attempt: u.attempt, Error: u.err, Result: u.result, RunAt: wire.Millis(u.runAt)}
	if u.state.Terminal() {
		r.At = wire.Millis(u.at)
	}
	rs[h.replyTo] = append(rs[h.replyTo], r)
}

// messages returns one message per reply queue.
func (rs reports) messages() []outgoing {
	out := make([]outgoing, 0, len(rs))
	for q, list := range rs {
		body, _ := json.Marshal(list) // plain strings, ints and bytes: cannot fail
		out = append(out, outgoing{key: q, msg: amqp.Publishing{
			Type: "docket.states", ContentType: "application/json", Body: body, DeliveryMode: amqp.Transient,
		}})
	}
	return out
}

// replyQueue returns the reply queue this process names in its messages.
func (a *alone) replyQueue() string { return *a.replyName.Load() }

// ownReply reports whether q is one of this process's reply queues.
func (a *alone) ownReply(q string) bool {
	own := a.name("reply." + a.id)
	return q == own || strings.HasPrefix(q, own+".")
}

// consumeReplies declares this process's reply queue and consumes it. The
// queue is not exclusive, so replies sent while the connection is being
// re-established wait in it; RabbitMQ deletes it replyExpires after this
// process stopped using it. It is durable because RabbitMQ 4 deprecates
// transient queues that are not exclusive; x-expires still removes it. A
// durable classic queue whose cluster node is down cannot be declared
// again (404) until the node returns: this process then moves to a reply
// queue of a new name (the session fails and reconnects with it), and the
// reports sent to the old one are lost, as they were with a transient
// queue that went down with its node.
func (a *alone) consumeReplies(ctx context.Context, s *session) error {
	rq := a.replyQueue()
	if err := s.lockCtl(ctx); err != nil {
		return a.wrap("declare "+rq, err)
	}
	defer s.unlockCtl()
	if _, err := s.ctl.QueueDeclare(rq, true, false, false, false, amqp.Table{
		"x-queue-type": "classic", "x-expires": replyExpires.Milliseconds(),
	}); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			a.mu.Lock()
			a.replyMove++
			next := a.name(fmt.Sprintf("reply.%s.%d", a.id, a.replyMove))
			a.mu.Unlock()
			a.replyName.Store(&next)
			a.log.Warn("docket: amqp: reply queue unavailable (its node is down?); using a new one", "queue", rq, "new", next)
		}
		return a.wrap("declare "+rq, err)
	}
	msgs, err := s.ctl.Consume(rq, "", true, false, false, false, nil)
	if err != nil {
		return a.wrap("consume "+rq, err)
	}
	s.declared.Store(rq, true)
	go func() {
		for d := range msgs {
			a.reply(&d)
		}
	}()
	return nil
}

func (a *alone) reply(d *amqp.Delivery) {
	var list []report
	if err := json.Unmarshal(d.Body, &list); err != nil {
		a.log.Warn("docket: amqp: undecodable state report", "err", err)
		return
	}
	a.applyReports(list)
}

// applyReports applies state reports to this process's tasks.
func (a *alone) applyReports(list []report) {
	var finished []string
	for _, r := range list {
		if !r.State.Valid() || r.ID == "" {
			continue
		}
		a.apply(r.ID, stateUpdate{state: r.State, attempt: r.Attempt, at: wire.FromMillis(r.At), err: r.Error, runAt: wire.FromMillis(r.RunAt), result: r.Result})
		if r.State.Terminal() {
			finished = append(finished, r.ID)
		}
	}
	if len(finished) > 0 {
		a.publishEvent(transport.Event{Kind: transport.EventFinished, IDs: finished})
	}
}

// sendReports publishes state reports on the consumer channel, the one the
// acks that follow them travel on: RabbitMQ handles a channel's frames in
// order, so it never sees an ack without the report before it, and no
// confirm round trip is needed. (Reports are transient messages: a broker
// restart loses them, like the outcome of a task it had not acknowledged
// yet.)
//
// Reports to this process's own reply queues are applied here instead of
// sent, also ahead of the acks: a binary that enqueues and works (the
// common case) sends no reports at all.
func (a *alone) sendReports(ctx context.Context, s *session, rs reports) error {
	for q, list := range rs {
		if a.ownReply(q) {
			a.applyReports(list)
			delete(rs, q)
		}
	}
	for _, o := range rs.messages() {
		if err := s.cons.PublishWithContext(ctx, o.exchange, o.key, false, false, o.msg); err != nil {
			return a.wrap("report", err)
		}
	}
	return nil
}

// wantReplies makes sure this process consumes its reply queue.
func (a *alone) wantReplies(ctx context.Context, s *session) error {
	if _, ok := s.declared.Load(a.replyQueue()); ok {
		return nil
	}
	a.mu.Lock()
	a.replies = true
	a.mu.Unlock()
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	if _, ok := s.declared.Load(a.replyQueue()); ok {
		return nil
	}
	return a.consumeReplies(ctx, s)
}

// update is the state change an outcome reports to the producer.
func update(h *held, o transport.Outcome, now time.Time) stateUpdate {
	u := stateUpdate{state: o.State, attempt: h.attempt, at: now, err: o.Error, runAt: o.RunAt}
	switch o.State {
	case transport.StateReady:
		u.attempt, u.err = h.attempt-1, h.lastErr
	case transport.StateSucceeded, transport.StateFailed, transport.StateCancelled:
		if !h.msg.IgnoreResult {
			u.result = o.Result
		}
	}
	return u
}

// keepFinished bounds how long, with RabbitMQ alone, a producer remembers
// its finished tasks.
const keepFinished = time.Hour

// forgetFinished forgets finished tasks after their result TTL, at most
// keepFinished.
func (a *alone) forgetFinished(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, r := range a.known {
		if r.info.State.Terminal() && now.After(r.info.Finished.Add(min(r.info.ResultTTL, keepFinished))) {
			delete(a.known, id)
		}
	}
}
