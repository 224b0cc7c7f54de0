package amqp

import (
	"context"
	"encoding/json"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

// Cancel requests are broadcast on the PREFIX.control fanout exchange: every
// process binds its own exclusive queue PREFIX.control.ID to it, so each
// hears every request, cancels the handler it runs for the task, and drops
// the task if it is delivered later. Requests are remembered for revokeFor
// in memory only.

// revokeFor is how long a worker remembers a cancel request.
const revokeFor = 24 * time.Hour

// control is a message on the control exchange.
type control struct {
	Cancel []string `json:"cancel,omitempty"`
}

// declareControl declares the control exchange and this process's control
// queue, and consumes it. The caller holds ctl's right (lockCtl).
func (b *broker) declareControl(s *session) error {
	ctl := b.name("control")
	if err := s.ctl.ExchangeDeclare(ctl, "fanout", true, false, false, false, nil); err != nil {
		return b.wrap("declare "+ctl, err)
	}
	cq := b.name("control." + b.id)
	if _, err := s.ctl.QueueDeclare(cq, false, true, true, false, nil); err != nil {
		return b.wrap("declare "+cq, err)
	}
	if err := s.ctl.QueueBind(cq, "", ctl, false, nil); err != nil {
		return b.wrap("bind "+cq, err)
	}
	msgs, err := s.ctl.Consume(cq, "", true, true, false, false, nil)
	if err != nil {
		return b.wrap("consume "+cq, err)
	}
	go b.controlLoop(msgs)
	return nil
}

func (b *broker) controlLoop(msgs <-chan amqp.Delivery) {
	for d := range msgs {
		var c control
		if err := json.Unmarshal(d.Body, &c); err != nil {
			b.log.Warn("docket: amqp: undecodable control message", "err", err)
			continue
		}
		b.revoke(c.Cancel)
	}
}

// revoke remembers cancel requests, tells the mode, and cancels the
// handlers running here.
func (b *broker) revoke(ids []string) {
	until := b.now().Add(revokeFor)
	var running []string
	b.mu.Lock()
	for _, id := range ids {
		b.revoked[id] = until
		b.mode.cancelHeard(id)
		if b.inflight[id] != nil {
			running = append(running, id)
		}
	}
	b.mu.Unlock()
	if len(running) > 0 {
		b.publishEvent(transport.Event{Kind: transport.EventCancel, IDs: running})
	}
}

// isRevoked reports whether a cancel of id was heard. The caller holds mu.
func (b *broker) isRevoked(id string) bool {
	_, ok := b.revoked[id]
	return ok
}

// forgetRevoked forgets cancel requests older than revokeFor.
func (b *broker) forgetRevoked(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, until := range b.revoked {
		if now.After(until) {
			delete(b.revoked, id)
		}
	}
}

// broadcastCancel sends a cancel request for ids to every connected
// process, this one included.
func (b *broker) broadcastCancel(ctx context.Context, ids []string) error {
	s, err := b.session(ctx)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(control{Cancel: ids})
	return b.publish(ctx, s, []outgoing{{exchange: b.name("control"), msg: amqp.Publishing{
		ContentType: "application/json", DeliveryMode: amqp.Transient, Body: body, Type: "docket.control",
	}}})
}
