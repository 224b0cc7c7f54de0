package amqp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// A task message is the task id as its message id (the one property
// besides persistence) and a body that starts with one line of the fields
// docket needs (see envelope), followed by the payload. The fields travel
// in the body because RabbitMQ decodes the header table and the string
// properties of every message it routes: ten small headers cost it about
// a third of its publish rate here, the task name and reply queue as
// properties about a tenth, the same bytes in the body next to nothing.
// Only the previous attempt's error, free-form text, keeps a header.
const (
	hLastErr = "docket-last-error"  // the previous attempt's error; absent when none
	hReason  = "docket-dead-reason" // on dead-lettered copies
)

// envelopeTag opens the first line of a task message's body; the 1 is the
// format's version.
const envelopeTag = "docket/1"

// envelopeFields is the number of integer fields on the first line.
const envelopeFields = 8

// noReply stands for "no reply queue" on the first line.
const noReply = "-"

// envelope returns the body of m's message: the line
//
//	docket/1 NAME REPLY_TO PRIORITY MAX_ATTEMPTS ATTEMPTS CREATED ETA EXPIRES TIMEOUT RESULT_TTL QUEUE [META]
//
// with the producer's reply queue (- for none), the attempts used before
// this copy, times in Unix ms and durations in ms (0 when none), and meta
// (wire.EncodeMeta: headers, backoff and IgnoreResult as JSON) when set;
// then a newline and the payload, byte for byte. Names, queues and reply
// queues never contain spaces or newlines, and JSON from encoding/json
// never contains a raw newline.
func envelope(m *transport.Message, attempts int, replyTo, meta string) []byte {
	if replyTo == "" {
		replyTo = noReply
	}
	b := make([]byte, 0, 128+len(m.Name)+len(replyTo)+len(m.Queue)+len(meta)+len(m.Payload))
	b = append(b, envelopeTag...)
	b = append(append(b, ' '), m.Name...)
	b = append(append(b, ' '), replyTo...)
	for _, v := range [envelopeFields]int64{
		int64(m.Priority), int64(m.MaxAttempts), int64(attempts), wire.Millis(m.Created), wire.Millis(m.ETA),
		wire.Millis(m.Expires), m.Timeout.Milliseconds(), m.ResultTTL.Milliseconds(),
	} {
		b = append(b, ' ')
		b = strconv.AppendInt(b, v, 10)
	}
	b = append(append(b, ' '), m.Queue...)
	if meta != "" {
		b = append(append(b, ' '), meta...)
	}
	b = append(b, '\n')
	return append(b, m.Payload...)
}

// openEnvelope fills m's name, fields and payload from a task message's
// body and returns the attempts used before this copy and the reply queue.
// The payload shares body's bytes.
func openEnvelope(body []byte, m *transport.Message) (attempts int, replyTo string, err error) {
	line, payload, ok := bytes.Cut(body, []byte{'\n'})
	if !ok || !bytes.HasPrefix(line, []byte(envelopeTag+" ")) {
		return 0, "", fmt.Errorf("the body does not start with a %s line (not a docket task)", envelopeTag)
	}
	rest := string(line[len(envelopeTag)+1:])
	var words [2]string // the name and the reply queue
	for i := range words {
		var ok bool
		if words[i], rest, ok = strings.Cut(rest, " "); !ok || words[i] == "" {
			return 0, "", fmt.Errorf("the %s line ends early", envelopeTag)
		}
	}
	var n [envelopeFields]int64
	for i := range n {
		field, after, ok := strings.Cut(rest, " ")
		if !ok {
			return 0, "", fmt.Errorf("the %s line ends early", envelopeTag)
		}
		x, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("the %s line: field %d: %w", envelopeTag, i+3, err)
		}
		n[i], rest = x, after
	}
	if n[0] != int64(int(n[0])) || n[1] != int64(int(n[1])) || n[2] < 0 || n[2] != int64(int(n[2])) {
		return 0, "", fmt.Errorf("the %s line: a field is out of range", envelopeTag)
	}
	m.Name = words[0]
	m.Priority, m.MaxAttempts = int(n[0]), int(n[1])
	m.Created, m.ETA, m.Expires = wire.FromMillis(n[3]), wire.FromMillis(n[4]), wire.FromMillis(n[5])
	m.Timeout, m.ResultTTL = millis(n[6]), millis(n[7])
	var meta string
	m.Queue, meta, _ = strings.Cut(rest, " ")
	if err := wire.DecodeMeta(meta, m); err != nil {
		return 0, "", err
	}
	m.Payload = payload
	if replyTo = words[1]; replyTo == noReply {
		replyTo = ""
	}
	return int(n[2]), replyTo, nil
}

// millis returns ms as a duration, 0 for values a duration cannot hold.
func millis(ms int64) time.Duration {
	if ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

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
	var h amqp.Table
	if lastErr != "" {
		h = amqp.Table{hLastErr: lastErr}
	}
	prio := m.Priority
	if prio < 0 {
		prio = 0
	}
	return amqp.Publishing{
		Headers: h, DeliveryMode: amqp.Persistent, Priority: uint8(min(prio, 9)),
		MessageId: m.ID, Body: envelope(m, attempts, replyTo, meta),
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

// decoded is a delivered task message, read.
type decoded struct {
	msg     transport.Message
	used    int    // attempts used before this copy was published
	lastErr string // the previous attempt's error
	replyTo string // the producer's reply queue, if any
}

// decode reads a delivered task message.
func decode(d *amqp.Delivery) (decoded, error) {
	out := decoded{msg: transport.Message{ID: d.MessageId}}
	m := &out.msg
	if m.ID == "" {
		return out, errors.New("message has no message-id (not a docket task)")
	}
	var err error
	out.used, out.replyTo, err = openEnvelope(d.Body, m)
	switch {
	case err != nil:
		return out, err
	case m.Queue == "":
		return out, errors.New("message names no queue")
	case m.MaxAttempts < 1:
		return out, fmt.Errorf("message has max attempts %d", m.MaxAttempts)
	}
	out.lastErr = hStr(d.Headers, hLastErr)
	return out, nil
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
	if err := t.declareDelays(ctx, s); err != nil {
		return "", "", err
	}
	return t.levelName(Levels - 1), delayKey(delay, t.queueName(queue)), nil
}

// publish sends msgs and waits until the broker confirmed all of them.
//
// A failure before any message was sent (the broker blocks publishers
// until ctx ends, the channel is closed) means nothing was queued and
// wraps what caused it. Once a message was sent, a failure that leaves its
// fate open (the connection or channel closed before its confirm arrived,
// ctx ended while waiting for it, sending a later message of msgs failed)
// is an *unconfirmedError, which matches transport.ErrOutcomeUnknown: the
// broker may or may not have queued it. A message the broker refused
// (nack) or returned as unroutable was not queued; when no message of
// msgs may have been queued, that failure is definite (ErrStorageFull for
// a nack), otherwise it too is an *unconfirmedError, since the call's
// other messages may be queued.
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
			if i == 0 {
				// Nothing left: amqp091 checks ctx and the channel
				// before it writes, and a message whose frames were
				// not all written is not routed.
				return t.wrap("publish", err)
			}
			return t.unconfirmed(fmt.Sprintf("sending message %d of %d failed after the others were sent", i+1, len(msgs)), err, err)
		}
		confs = append(confs, c)
		if m.mandatory {
			mandatory = append(mandatory, m.msg.MessageId)
		}
	}
	nacked := 0
	for _, c := range confs {
		select {
		case <-c.Done():
		default:
			select {
			case <-c.Done():
			case <-ctx.Done():
				cause := context.Cause(ctx)
				return t.unconfirmed("gave up waiting for the broker's confirm", cause, cause)
			}
		}
		if c.Acked() {
			continue
		}
		// amqp091 marks the channel closed before it releases the
		// confirms still awaited as nacks.
		if s.pub.IsClosed() || !s.alive() {
			cause := s.cause()
			if cause == nil {
				cause = amqp.ErrClosed
			}
			return t.unconfirmed("the connection was lost before the broker confirmed", cause,
				fmt.Errorf("%v: %w", cause, transport.ErrBusy))
		}
		nacked++
	}
	var returned []string
	if len(mandatory) > 0 {
		returned = s.wasReturned(mandatory)
	}
	var refused error
	switch {
	case nacked > 0:
		refused = fmt.Errorf("%w: the broker refused %d of %d messages (nack)", transport.ErrStorageFull, nacked, len(msgs))
	case len(returned) > 0:
		refused = fmt.Errorf("message %s was unroutable: its queue does not exist", returned[0])
	default:
		return nil
	}
	// A returned message was confirmed (acked) but not queued.
	if nacked+len(returned) < len(msgs) {
		return t.unconfirmed("the broker queued some of the messages and refused others", refused, refused)
	}
	return t.wrap("publish", refused)
}

// unconfirmedError is a publish failure after messages were sent, when the
// broker may have queued some of them: it matches
// transport.ErrOutcomeUnknown, and its cause. Definite is the failure as
// it stands if nothing was queued after all, for a caller for whom a
// queued message alone is no task (see enqueueStored).
type unconfirmedError struct {
	where    string
	what     string
	cause    error // may be nil
	definite error
}

func (t *Transport) unconfirmed(what string, cause, definite error) error {
	return &unconfirmedError{where: t.where, what: what, cause: cause, definite: definite}
}

func (e *unconfirmedError) Error() string {
	s := "docket: amqp publish " + e.where + ": " + e.what
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s + " (the messages may or may not be queued): " + transport.ErrOutcomeUnknown.Error()
}

// Unwrap returns transport.ErrOutcomeUnknown and the cause.
func (e *unconfirmedError) Unwrap() []error {
	if e.cause == nil {
		return []error{transport.ErrOutcomeUnknown}
	}
	return []error{transport.ErrOutcomeUnknown, e.cause}
}

// unrecorded returns the error of a failed publish of new tasks that a
// result store was to record next: the store recorded nothing, and a
// message whose task was never recorded is dropped when delivered, so
// the outcome is known after all: no task was stored, whatever reached
// the broker. Other errors are returned as they are.
func unrecorded(err error) error {
	var ue *unconfirmedError
	if !errors.As(err, &ue) {
		return err
	}
	return fmt.Errorf("docket: amqp publish %s: %s; no task was recorded (a message that reached RabbitMQ finds no task and is dropped): %w", ue.where, ue.what, ue.definite)
}
