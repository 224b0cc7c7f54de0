package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// Header names of a task message. The payload is the body, the task id the
// message id, the task name the type, the producer's reply queue reply-to.
const (
	hQueue    = "docket-queue"
	hPriority = "docket-priority"
	hETA      = "docket-eta"     // unix ms; absent when none
	hExpires  = "docket-expires" // unix ms
	hMax      = "docket-max-attempts"
	hTimeout  = "docket-timeout"    // ms
	hTTL      = "docket-result-ttl" // ms
	hAttempts = "docket-attempts"   // attempts used before this copy was published
	hLastErr  = "docket-last-error"
	hCreated  = "docket-created" // unix ms
	hMeta     = "docket-meta"
	hReason   = "docket-dead-reason" // on dead-lettered copies
)

// outgoing is one message to publish.
type outgoing struct {
	exchange, key string
	mandatory     bool
	msg           amqp.Publishing
}

// encode builds the publishing of m, with attempts already used and the
// last error carried over from earlier copies.
func encode(m *transport.Message, attempts int, lastErr, replyTo string) (amqp.Publishing, error) {
	meta, err := wire.EncodeMeta(m)
	if err != nil {
		return amqp.Publishing{}, err
	}
	h := amqp.Table{
		hQueue: m.Queue, hPriority: int64(m.Priority), hMax: int64(m.MaxAttempts),
		hCreated: wire.Millis(m.Created), hAttempts: int64(attempts),
	}
	if !m.ETA.IsZero() {
		h[hETA] = wire.Millis(m.ETA)
	}
	if !m.Expires.IsZero() {
		h[hExpires] = wire.Millis(m.Expires)
	}
	if m.Timeout > 0 {
		h[hTimeout] = m.Timeout.Milliseconds()
	}
	if m.ResultTTL > 0 {
		h[hTTL] = m.ResultTTL.Milliseconds()
	}
	if lastErr != "" {
		h[hLastErr] = lastErr
	}
	if meta != "" {
		h[hMeta] = meta
	}
	prio := m.Priority
	if prio < 0 {
		prio = 0
	}
	return amqp.Publishing{
		Headers: h, ContentType: "application/json", DeliveryMode: amqp.Persistent,
		Priority: uint8(min(prio, 9)), MessageId: m.ID, Type: m.Name, ReplyTo: replyTo,
		Timestamp: m.Created, Body: m.Payload,
	}, nil
}

func hInt(h amqp.Table, k string) int64 {
	switch v := h[k].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int16:
		return int64(v)
	case int8:
		return int64(v)
	case int:
		return int64(v)
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	}
	return 0
}

func hStr(h amqp.Table, k string) string {
	switch v := h[k].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// decode reads a delivered task message. It returns the message, the
// attempts used before this copy was published, and the last error.
func decode(d *amqp.Delivery) (transport.Message, int, string, error) {
	h := d.Headers
	m := transport.Message{
		ID: d.MessageId, Name: d.Type, Queue: hStr(h, hQueue), Payload: d.Body,
		Priority: int(hInt(h, hPriority)), ETA: wire.FromMillis(hInt(h, hETA)), Expires: wire.FromMillis(hInt(h, hExpires)),
		MaxAttempts: int(hInt(h, hMax)), Timeout: time.Duration(hInt(h, hTimeout)) * time.Millisecond,
		ResultTTL: time.Duration(hInt(h, hTTL)) * time.Millisecond, Created: wire.FromMillis(hInt(h, hCreated)),
	}
	switch {
	case m.ID == "":
		return m, 0, "", errors.New("message has no message-id (not a docket task)")
	case m.Name == "":
		return m, 0, "", errors.New("message has no type (the task name)")
	case m.Queue == "":
		return m, 0, "", errors.New("message has no " + hQueue + " header")
	case m.MaxAttempts < 1:
		return m, 0, "", errors.New("message has no valid " + hMax + " header")
	}
	if err := wire.DecodeMeta(hStr(h, hMeta), &m); err != nil {
		return m, 0, "", err
	}
	return m, int(hInt(h, hAttempts)), hStr(h, hLastErr), nil
}

// deliveries returns how often the broker delivered this copy before: the
// quorum queue's count, or 1 for a classic queue's redelivery.
func deliveries(d *amqp.Delivery) int {
	if n := hInt(d.Headers, "x-delivery-count"); n > 0 {
		return int(n)
	}
	if d.Redelivered {
		return 1
	}
	return 0
}

// route returns where a message for queue goes to wait until at (now if
// zero or past): straight to its queue, or into the delay levels.
func (t *Transport) route(ctx context.Context, s *session, queue string, at, now time.Time) (exchange, key string, err error) {
	if err := t.declareQueue(ctx, s, queue); err != nil {
		return "", "", err
	}
	delay, _ := delayMillis(at.Sub(now))
	if delay == 0 {
		return "", t.queueName(queue), nil
	}
	if err := t.declareDelays(s); err != nil {
		return "", "", err
	}
	return t.levelName(Levels - 1), delayKey(delay, t.queueName(queue)), nil
}

// publish sends msgs and waits until the broker confirmed all of them. A
// mandatory message the broker could not route, a message it refused, or a
// connection lost before the confirm is an error; the caller cannot tell
// which of the messages before it were accepted.
func (t *Transport) publish(ctx context.Context, s *session, msgs []outgoing) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := s.waitUnblocked(ctx); err != nil {
		return t.wrap("publish", err)
	}
	confs := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	var mandatory []string
	for i := range msgs {
		m := &msgs[i]
		c, err := s.pub.PublishWithDeferredConfirmWithContext(ctx, m.exchange, m.key, m.mandatory, false, m.msg)
		if err != nil {
			return t.wrap("publish", err)
		}
		confs = append(confs, c)
		if m.mandatory {
			mandatory = append(mandatory, m.msg.MessageId)
		}
	}
	for _, c := range confs {
		select {
		case <-c.Done():
		case <-ctx.Done():
			return t.wrap("publish", fmt.Errorf("waiting for the broker's confirm: %w", context.Cause(ctx)))
		}
		if !c.Acked() {
			if !s.alive() {
				return t.wrap("publish", fmt.Errorf("connection lost before the broker confirmed (the message may or may not be queued): %w", transport.ErrBusy))
			}
			return t.wrap("publish", fmt.Errorf("%w: the broker refused the message (nack)", transport.ErrStorageFull))
		}
	}
	if len(mandatory) > 0 {
		if id, ok := s.wasReturned(mandatory); ok {
			return t.wrap("publish", fmt.Errorf("message %s was unroutable: its queue does not exist", id))
		}
	}
	return nil
}
