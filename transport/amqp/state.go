package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// revokeFor is how long a worker remembers a cancel request.
const revokeFor = 24 * time.Hour

// replyExpires is how long a reply queue outlives its producer.
const replyExpires = 10 * time.Minute

// record is what a producer knows of a task it enqueued.
type record struct {
	info transport.Info
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
func (t *Transport) apply(id string, u stateUpdate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.known[id]
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
func (t *Transport) replyQueue() string { return *t.replyName.Load() }

// ownReply reports whether q is one of this process's reply queues.
func (t *Transport) ownReply(q string) bool {
	own := t.name("reply." + t.id)
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
func (t *Transport) consumeReplies(ctx context.Context, s *session) error {
	rq := t.replyQueue()
	if err := s.lockCtl(ctx); err != nil {
		return t.wrap("declare "+rq, err)
	}
	defer s.unlockCtl()
	if _, err := s.ctl.QueueDeclare(rq, true, false, false, false, amqp.Table{
		"x-queue-type": "classic", "x-expires": replyExpires.Milliseconds(),
	}); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			t.mu.Lock()
			t.replyMove++
			next := t.name(fmt.Sprintf("reply.%s.%d", t.id, t.replyMove))
			t.mu.Unlock()
			t.replyName.Store(&next)
			t.cfg.Logger.Warn("docket: amqp: reply queue unavailable (its node is down?); using a new one", "queue", rq, "new", next)
		}
		return t.wrap("declare "+rq, err)
	}
	msgs, err := s.ctl.Consume(rq, "", true, false, false, false, nil)
	if err != nil {
		return t.wrap("consume "+rq, err)
	}
	s.declared.Store(rq, true)
	go func() {
		for d := range msgs {
			t.reply(&d)
		}
	}()
	return nil
}

func (t *Transport) reply(d *amqp.Delivery) {
	var list []report
	if err := json.Unmarshal(d.Body, &list); err != nil {
		t.cfg.Logger.Warn("docket: amqp: undecodable state report", "err", err)
		return
	}
	t.applyReports(list)
}

// applyReports applies state reports to this process's tasks.
func (t *Transport) applyReports(list []report) {
	var finished []string
	for _, r := range list {
		if !r.State.Valid() || r.ID == "" {
			continue
		}
		t.apply(r.ID, stateUpdate{state: r.State, attempt: r.Attempt, at: wire.FromMillis(r.At), err: r.Error, runAt: wire.FromMillis(r.RunAt), result: r.Result})
		if r.State.Terminal() {
			finished = append(finished, r.ID)
		}
	}
	if len(finished) > 0 {
		t.publishEvent(transport.Event{Kind: transport.EventFinished, IDs: finished})
	}
}

// control is a message on the control exchange.
type control struct {
	Cancel []string `json:"cancel,omitempty"`
}

func (t *Transport) controlLoop(msgs <-chan amqp.Delivery) {
	for d := range msgs {
		var c control
		if err := json.Unmarshal(d.Body, &c); err != nil {
			t.cfg.Logger.Warn("docket: amqp: undecodable control message", "err", err)
			continue
		}
		t.revoke(c.Cancel)
	}
}

// revoke remembers cancel requests, flags the tasks this process produced,
// and cancels the handlers running here.
func (t *Transport) revoke(ids []string) {
	until := t.cfg.Now().Add(revokeFor)
	var running []string
	t.mu.Lock()
	for _, id := range ids {
		t.revoked[id] = until
		if r := t.known[id]; r != nil && !r.info.State.Terminal() {
			r.info.CancelRequested = true
		}
		if t.inflight[id] != nil {
			running = append(running, id)
		}
	}
	t.mu.Unlock()
	if len(running) > 0 {
		t.publishEvent(transport.Event{Kind: transport.EventCancel, IDs: running})
	}
}

func (t *Transport) isRevoked(id string) bool {
	_, ok := t.revoked[id]
	return ok
}

// cancelledAtRelease is the error recorded for a task whose worker gave it
// back (at shutdown) while a cancel was pending; the stores record the
// same text.
const cancelledAtRelease = "cancelled; its worker released it before it finished"

// withPendingCancels returns items with every retry or release of a task
// whose cancel this process received turned into the task's cancellation:
// with RabbitMQ alone, publishing the task again would lose the cancel for
// every process that did not receive the broadcast. (With a result store,
// the store does the same under its fence.) items is not modified.
func (t *Transport) withPendingCancels(items []transport.Outcome) []transport.Outcome {
	if t.store != nil {
		return items
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []transport.Outcome
	for i, o := range items {
		if (o.State != transport.StateReady && o.State != transport.StateScheduled) || !t.isRevoked(o.ID) {
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

// Enqueue implements transport.Transport: it publishes every message and
// returns once the broker confirmed them all. RabbitMQ cannot check ids or
// unique keys; a message with a unique key is refused (ErrUnsupported).
// When a batch fails part way, the messages already accepted are cancelled
// (broadcast), so none of the batch runs unless a worker took one first.
// A failure after the messages were sent, before every confirm arrived,
// matches ErrOutcomeUnknown (see publish).
func (t *Transport) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if len(p.Messages) == 0 {
		return nil, nil
	}
	if t.store != nil {
		return t.enqueueStored(ctx, p)
	}
	for i := range p.Messages {
		if k := p.Messages[i].UniqueKey; k != "" {
			return nil, fmt.Errorf("docket: amqp: unique key %q: %w: RabbitMQ alone keeps no shared task state to enforce it; give it a result store (the ResultStore option or $DOCKET_RESULT_URL)", k, transport.ErrUnsupported)
		}
	}
	s, err := t.session(ctx)
	if err != nil {
		return nil, err
	}
	if err := t.wantReplies(ctx, s); err != nil {
		return nil, err
	}
	out := make([]outgoing, len(p.Messages))
	res := make([]transport.EnqueueResult, len(p.Messages))
	for i := range p.Messages {
		m := &p.Messages[i]
		if m.Created.IsZero() {
			m.Created = p.Now
		}
		pub, err := encode(m, 0, "", t.replyQueue())
		if err != nil {
			return nil, err
		}
		ex, key, err := t.route(ctx, s, m.Queue, m.ETA, p.Now)
		if err != nil {
			return nil, err
		}
		out[i] = outgoing{exchange: ex, key: key, mandatory: true, msg: pub}
		res[i].ID = m.ID
	}
	// Known before publishing: a fast worker's report may arrive before
	// the confirm does.
	t.mu.Lock()
	for i := range p.Messages {
		in := transport.Info{Message: p.Messages[i], State: transport.StateReady}
		in.ReturnExisting = false
		if p.Now.Before(in.ETA) {
			in.State, in.RunAt = transport.StateScheduled, in.ETA
		}
		t.known[in.ID] = &record{info: in}
	}
	t.mu.Unlock()
	if err := t.publish(ctx, s, out); err != nil {
		ids := make([]string, len(res))
		t.mu.Lock()
		for i, r := range res {
			ids[i] = r.ID
			delete(t.known, r.ID)
		}
		t.mu.Unlock()
		if len(ids) > 1 {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if cerr := t.broadcastCancel(cctx, ids); cerr != nil {
				err = fmt.Errorf("%w (and cancelling the accepted part of the batch failed: %v)", err, cerr)
			}
			cancel()
		}
		return nil, err
	}
	return res, nil
}

// enqueueStored publishes the messages and then records them in the result
// store, which checks ids and unique keys, all or nothing. A message whose
// task the store did not record (the store refused it, or this process
// died in between) finds no task when it is delivered, and is dropped: the
// task was never accepted. Publishing first leaves no task in the store
// without a message.
func (t *Transport) enqueueStored(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	for i := range p.Messages {
		if p.Messages[i].Created.IsZero() {
			p.Messages[i].Created = p.Now
		}
	}
	if err := t.publishNew(ctx, p.Now, p.Messages); err != nil {
		return nil, unrecorded(err)
	}
	return t.store.Enqueue(ctx, p)
}

// publishNew publishes new tasks, with no attempt used.
func (t *Transport) publishNew(ctx context.Context, now time.Time, msgs []transport.Message) error {
	s, err := t.session(ctx)
	if err != nil {
		return err
	}
	out := make([]outgoing, len(msgs))
	for i := range msgs {
		pub, err := encode(&msgs[i], 0, "", "")
		if err != nil {
			return err
		}
		ex, key, err := t.route(ctx, s, msgs[i].Queue, msgs[i].ETA, now)
		if err != nil {
			return err
		}
		out[i] = outgoing{exchange: ex, key: key, mandatory: true, msg: pub}
	}
	return t.publish(ctx, s, out)
}

// wantReplies makes sure this process consumes its reply queue.
func (t *Transport) wantReplies(ctx context.Context, s *session) error {
	if _, ok := s.declared.Load(t.replyQueue()); ok {
		return nil
	}
	t.mu.Lock()
	t.replies = true
	t.mu.Unlock()
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	if _, ok := s.declared.Load(t.replyQueue()); ok {
		return nil
	}
	return t.consumeReplies(ctx, s)
}

func (t *Transport) broadcastCancel(ctx context.Context, ids []string) error {
	s, err := t.session(ctx)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(control{Cancel: ids})
	return t.publish(ctx, s, []outgoing{{exchange: t.name("control"), msg: amqp.Publishing{
		ContentType: "application/json", DeliveryMode: amqp.Transient, Body: body, Type: "docket.control",
	}}})
}

// Cancel implements transport.Transport: it broadcasts the request to
// every connected process. The state returned is what this process knows:
// Running when the task started, the final state when it ended, and
// Cancelled otherwise (the worker that receives it drops it and reports
// Cancelled).
func (t *Transport) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	if t.store != nil {
		res, err := t.store.Cancel(ctx, p)
		if err != nil || res.State != transport.StateRunning {
			return res, err
		}
		// Running: the store flagged it; the broadcast reaches its handler
		// at once, wherever it runs.
		t.revoke([]string{p.ID})
		return res, t.broadcastCancel(ctx, []string{p.ID})
	}
	t.revoke([]string{p.ID})
	if err := t.broadcastCancel(ctx, []string{p.ID}); err != nil {
		return transport.CancelResult{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.known[p.ID]
	switch {
	case r == nil:
		return transport.CancelResult{State: transport.StateCancelled}, nil
	case r.info.State.Terminal(), r.info.State == transport.StateRunning:
		return transport.CancelResult{State: r.info.State}, nil
	}
	return transport.CancelResult{State: transport.StateCancelled}, nil
}

// Get implements transport.Transport: from the result store, or, with
// RabbitMQ alone, for the tasks this process enqueued.
func (t *Transport) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	if t.store != nil {
		return t.store.Get(ctx, p)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.known[p.ID]
	if r == nil {
		return transport.Info{}, fmt.Errorf("docket: task %s: %w (with RabbitMQ alone a process knows only the tasks it enqueued; a result store shares them)", p.ID, transport.ErrNotFound)
	}
	return r.info, nil
}

// Lookup implements transport.Transport: from the result store, or, with
// RabbitMQ alone, for the tasks this process enqueued.
func (t *Transport) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	if t.store != nil {
		return t.store.Lookup(ctx, p)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]transport.Status, 0, len(p.IDs))
	for _, id := range p.IDs {
		if r := t.known[id]; r != nil {
			out = append(out, transport.Status{ID: id, State: r.info.State, CancelRequested: r.info.CancelRequested})
		}
	}
	return out, nil
}
