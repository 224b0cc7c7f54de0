package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

// outgoing is one message to publish.
type outgoing struct {
	exchange, key string
	mandatory     bool
	msg           amqp.Publishing
}

// route returns where a message for queue goes to wait until at (now if
// zero or past): straight to its queue, or into the delay levels.
func (b *broker) route(ctx context.Context, s *session, queue string, at, now time.Time) (exchange, key string, err error) {
	if err := b.declareQueue(ctx, s, queue); err != nil {
		return "", "", err
	}
	delay, _ := delayMillis(at.Sub(now))
	if delay == 0 {
		return "", b.queueName(queue), nil
	}
	if err := b.declareDelays(ctx, s); err != nil {
		return "", "", err
	}
	return b.levelName(Levels - 1), delayKey(delay, b.queueName(queue)), nil
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
// msgs may have been queued, that failure is definite (ErrBusy for a
// nack), otherwise it too is an *unconfirmedError, since the call's
// other messages may be queued.
// errNotSent: the session's channel was closed (its connection lost, not
// noticed yet) before the first message was written, so nothing was sent.
var errNotSent = errors.New("the connection was closed before anything was sent; nothing was queued")

// publishAgain publishes what build makes for the live session and, when
// that session's channel turns out closed before anything was sent
// (errNotSent), waits for the next session and does it again, until ctx
// ends.
func (b *broker) publishAgain(ctx context.Context, build func(s *session) ([]outgoing, error)) error {
	var failed *session
	for {
		s, err := b.session(ctx)
		if err != nil {
			return err
		}
		if s == failed { // not replaced yet
			select {
			case <-ctx.Done():
				return fmt.Errorf("docket: amqp %s: not connected: %w", b.where, context.Cause(ctx))
			case <-b.done:
				return transport.ErrClosed
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		out, err := build(s)
		if err != nil {
			return err
		}
		if err = b.publish(ctx, s, out); !errors.Is(err, errNotSent) || ctx.Err() != nil {
			return err
		}
		failed = s
	}
}

func (b *broker) publish(ctx context.Context, s *session, msgs []outgoing) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := s.waitUnblocked(ctx); err != nil {
		return b.wrap("publish", err)
	}
	confs, mandatory, err := b.send(ctx, s, msgs)
	if err != nil {
		return err
	}
	nacked, err := b.awaitConfirms(ctx, s, confs)
	if err != nil {
		return err
	}
	var returned []string
	if len(mandatory) > 0 {
		returned = s.wasReturned(mandatory)
	}
	var refused error
	switch {
	case nacked > 0:
		// A quorum queue nacks while it has no leader (a node of its
		// cluster went, and the others elect one), a queue over its
		// limit with reject-publish nacks, and so does a broker's
		// internal error: nothing was queued, and a later try may pass.
		refused = fmt.Errorf("%w: the broker refused %d of %d messages (nack: a queue without a leader while its cluster elects one, or over its limit)", transport.ErrBusy, nacked, len(msgs))
	case len(returned) > 0:
		refused = fmt.Errorf("message %s was unroutable: its queue does not exist", returned[0])
	default:
		return nil
	}
	// A returned message was confirmed (acked) but not queued.
	if nacked+len(returned) < len(msgs) {
		return b.unconfirmed("the broker queued some of the messages and refused others", refused, refused)
	}
	return b.wrap("publish", refused)
}

// send writes msgs to s's confirming channel and returns their pending
// confirms and the ids of the mandatory ones (see publish for its errors).
func (b *broker) send(ctx context.Context, s *session, msgs []outgoing) (confs []*amqp.DeferredConfirmation, mandatory []string, err error) {
	confs = make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		c, err := s.pub.PublishWithDeferredConfirmWithContext(ctx, m.exchange, m.key, m.mandatory, false, m.msg)
		if err != nil {
			if i == 0 {
				// Nothing left: amqp091 checks ctx and the channel
				// before it writes, and a message whose frames were
				// not all written is not routed.
				if errors.Is(err, amqp.ErrClosed) {
					err = fmt.Errorf("%w: %w", transport.ErrBusy, errNotSent)
				}
				return nil, nil, b.wrap("publish", err)
			}
			return nil, nil, b.unconfirmed(fmt.Sprintf("sending message %d of %d failed after the others were sent", i+1, len(msgs)), err, err)
		}
		confs = append(confs, c)
		if m.mandatory {
			mandatory = append(mandatory, m.msg.MessageId)
		}
	}
	return confs, mandatory, nil
}

// awaitConfirms waits for every confirm of confs and returns how many
// were nacks. It fails with an *unconfirmedError when ctx ends first or
// the connection is lost before every confirm arrived.
func (b *broker) awaitConfirms(ctx context.Context, s *session, confs []*amqp.DeferredConfirmation) (nacked int, err error) {
	for _, c := range confs {
		select {
		case <-c.Done():
		default:
			select {
			case <-c.Done():
			case <-ctx.Done():
				cause := context.Cause(ctx)
				return 0, b.unconfirmed("gave up waiting for the broker's confirm", cause, cause)
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
			return 0, b.unconfirmed("the connection was lost before the broker confirmed", cause,
				fmt.Errorf("%v: %w", cause, transport.ErrBusy))
		}
		nacked++
	}
	return nacked, nil
}

// unconfirmedError is a publish failure after messages were sent, when the
// broker may have queued some of them: it matches
// transport.ErrOutcomeUnknown, and its cause. Definite is the failure as
// it stands if nothing was queued after all, for a caller for whom a
// queued message alone is no task (see stored.Enqueue).
type unconfirmedError struct {
	where    string
	what     string
	cause    error // may be nil
	definite error
}

func (b *broker) unconfirmed(what string, cause, definite error) error {
	return &unconfirmedError{where: b.where, what: what, cause: cause, definite: definite}
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

// newMessages returns the messages of new tasks, with no attempt used,
// each routed to wait in the delay levels until its ETA. A zero Created in
// msgs is set to now first.
func (b *broker) newMessages(ctx context.Context, s *session, now time.Time, msgs []transport.Message, replyTo string) ([]outgoing, error) {
	out := make([]outgoing, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if m.Created.IsZero() {
			m.Created = now
		}
		rt := replyTo
		if m.IgnoreResult {
			rt = "" // nobody is told the state of a task that ignores its result
		}
		pub, err := encode(m, 0, "", rt)
		if err != nil {
			return nil, err
		}
		ex, key, err := b.route(ctx, s, m.Queue, m.ETA, now)
		if err != nil {
			return nil, err
		}
		out[i] = outgoing{exchange: ex, key: key, mandatory: true, msg: pub}
	}
	return out, nil
}
