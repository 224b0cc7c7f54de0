package amqp

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
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
	handles int // handles on it not yet garbage (see Retain)
	recent  int // its places in the ring of recent tasks (an id enqueued twice has two)
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
	a.applyLocked(id, u)
}

// applyLocked is apply for a caller that holds mu.
func (a *alone) applyLocked(id string, u stateUpdate) {
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

// Report messages: their type names the encoding of the body.
const (
	// reportsType is a list of reports, each as: the id, the state (one
	// byte), the attempt, the two times, the error and the result, with
	// lengths and numbers as varints. It costs a fraction of JSON to
	// write and read, on a path that carries every task's outcome.
	reportsType = "docket.states.2"
	// reportsJSONType is the JSON array of reports that workers before
	// reportsType sent; producers still read it.
	reportsJSONType = "docket.states"
)

// reportsOf decodes a report message of type typ.
func reportsOf(typ string, body []byte) ([]report, error) {
	switch typ {
	case reportsJSONType:
		var list []report
		err := json.Unmarshal(body, &list)
		return list, err
	case reportsType:
		return decodeReports(body)
	}
	return nil, fmt.Errorf("%w: unknown type %q", errBadReports, typ)
}

// encodeReports returns the body of a reportsType message.
func encodeReports(list []report) []byte {
	n := 0
	for i := range list {
		n += len(list[i].ID) + len(list[i].Error) + len(list[i].Result) + 4*binary.MaxVarintLen64 + 1
	}
	b := make([]byte, 0, n)
	for i := range list {
		r := &list[i]
		b = binary.AppendUvarint(b, uint64(len(r.ID)))
		b = append(b, r.ID...)
		b = append(b, byte(r.State))
		b = binary.AppendUvarint(b, uint64(max(r.Attempt, 0)))
		b = binary.AppendVarint(b, r.At)
		b = binary.AppendVarint(b, r.RunAt)
		b = binary.AppendUvarint(b, uint64(len(r.Error)))
		b = append(b, r.Error...)
		b = binary.AppendUvarint(b, uint64(len(r.Result)))
		b = append(b, r.Result...)
	}
	return b
}

// errBadReports is a report message that could not be decoded.
var errBadReports = errors.New("malformed state report")

// decodeReports reads the body of a reportsType message.
func decodeReports(b []byte) ([]report, error) {
	var list []report
	bytesOf := func() ([]byte, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, false
		}
		v := b[k : k+int(n)]
		b = b[k+int(n):]
		return v, true
	}
	intOf := func() (int64, bool) {
		v, k := binary.Varint(b)
		if k <= 0 {
			return 0, false
		}
		b = b[k:]
		return v, true
	}
	for len(b) > 0 {
		var r report
		id, ok := bytesOf()
		if !ok || len(b) < 1 {
			return nil, errBadReports
		}
		r.ID, r.State, b = string(id), transport.State(b[0]), b[1:]
		attempt, k := binary.Uvarint(b)
		if k <= 0 || attempt > math.MaxInt32 {
			return nil, errBadReports
		}
		r.Attempt, b = int(attempt), b[k:]
		var ok1, ok2 bool
		r.At, ok1 = intOf()
		r.RunAt, ok2 = intOf()
		e, ok3 := bytesOf()
		v, ok4 := bytesOf()
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return nil, errBadReports
		}
		r.Error = string(e)
		if len(v) > 0 {
			r.Result = slices.Clone(v)
		}
		list = append(list, r)
	}
	return list, nil
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
		out = append(out, outgoing{key: q, msg: amqp.Publishing{
			Type: reportsType, ContentType: "application/octet-stream", Body: encodeReports(list), DeliveryMode: amqp.Transient,
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
	list, err := reportsOf(d.Type, d.Body)
	if err != nil {
		a.log.Warn("docket: amqp: undecodable state report", "err", err, "type", d.Type)
		return
	}
	a.applyReports(list)
}

// applyReports applies state reports to this process's tasks.
func (a *alone) applyReports(list []report) {
	var finished []string
	a.mu.Lock()
	for _, r := range list {
		if !r.State.Valid() || r.ID == "" {
			continue
		}
		a.applyLocked(r.ID, stateUpdate{state: r.State, attempt: r.Attempt, at: wire.FromMillis(r.At), err: r.Error, runAt: wire.FromMillis(r.RunAt), result: r.Result})
		if r.State.Terminal() {
			finished = append(finished, r.ID)
		}
	}
	a.mu.Unlock()
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
