package amqp

import (
	"context"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Levels is the number of delay levels: level L holds a message for 2^L
// milliseconds, so one trip through the chain covers up to MaxDelay.
const Levels = 32

// MaxDelay is the longest delay one trip through the delay levels holds.
const MaxDelay = time.Duration(1<<Levels-1) * time.Millisecond

// name returns the full name of an exchange or queue.
func (b *broker) name(s string) string { return b.opt.prefix + "." + s }

// queueName returns the RabbitMQ queue of a docket queue.
func (b *broker) queueName(queue string) string { return b.name("q." + queue) }

func (b *broker) levelName(level int) string {
	if level < 0 {
		return b.name("deliver")
	}
	return fmt.Sprintf("%s.delay.%02d", b.opt.prefix, level)
}

// delayKey returns the routing key that carries a message through the
// delay levels whose bits are set in ms, and then to the RabbitMQ queue
// target: one word per level, highest first ("1" to wait at that level,
// "0" to pass), then the target's own words.
func delayKey(ms uint64, target string) string {
	var b strings.Builder
	b.Grow(2*Levels + len(target))
	for l := Levels - 1; l >= 0; l-- {
		if ms>>l&1 == 1 {
			b.WriteString("1.")
		} else {
			b.WriteString("0.")
		}
	}
	b.WriteString(target)
	return b.String()
}

// levelPattern matches the routing keys whose bit at level is bit.
func levelPattern(level int, bit string) string {
	return strings.Repeat("*.", Levels-1-level) + bit + ".#"
}

// delayMillis splits a wait into the part one trip through the levels
// holds (in milliseconds) and whether the message must go around again.
func delayMillis(d time.Duration) (ms uint64, again bool) {
	if d <= 0 {
		return 0, false
	}
	if d > MaxDelay {
		return uint64(MaxDelay / time.Millisecond), true
	}
	// Round up: a message must never arrive before its time.
	return uint64((d + time.Millisecond - 1) / time.Millisecond), false
}

func (b *broker) queueArgs() amqp.Table {
	args := amqp.Table{"x-dead-letter-exchange": b.name("dead")}
	if b.opt.quorum {
		args["x-queue-type"] = "quorum"
		args["x-delivery-limit"] = int64(b.opt.deliveryLimit)
		b.quorumArgs(args)
	} else {
		args["x-queue-type"] = "classic"
		args["x-max-priority"] = int64(9)
	}
	return args
}

// quorumArgs adds to a quorum queue's arguments the number of nodes it is
// replicated on, when the URL sets one (quorum_size).
func (b *broker) quorumArgs(args amqp.Table) {
	if b.opt.quorumSize > 0 {
		args["x-quorum-initial-group-size"] = int64(b.opt.quorumSize)
	}
}

// declareQueue declares the queue of a docket queue (once per session):
// durable, dead-lettering into PREFIX.dead, and reachable from the delay
// levels through PREFIX.deliver.
func (b *broker) declareQueue(ctx context.Context, s *session, queue string) error {
	qn := b.queueName(queue)
	if _, ok := s.declared.Load(qn); ok {
		return nil
	}
	if err := s.lockCtl(ctx); err != nil {
		return b.wrap("declare queue "+qn, err)
	}
	defer s.unlockCtl()
	if _, ok := s.declared.Load(qn); ok {
		return nil // declared while this call waited
	}
	if err := b.declareBase(s); err != nil {
		return err
	}
	if _, err := s.ctl.QueueDeclare(qn, true, false, false, false, b.queueArgs()); err != nil {
		return b.wrap("declare queue "+qn, err)
	}
	if err := s.ctl.QueueBind(qn, strings.Repeat("*.", Levels)+qn, b.levelName(-1), false, nil); err != nil {
		return b.wrap("bind queue "+qn, err)
	}
	s.declared.Store(qn, true)
	return nil
}

// declareBase declares the dead-letter exchange and queue and the final
// delivery exchange of the delay chain (once per session). The caller
// holds ctl's right (lockCtl).
func (b *broker) declareBase(s *session) error {
	if _, ok := s.declared.Load("base"); ok {
		return nil
	}
	dead := b.name("dead")
	if err := s.ctl.ExchangeDeclare(dead, "fanout", true, false, false, false, nil); err != nil {
		return b.wrap("declare "+dead, err)
	}
	args := amqp.Table{"x-queue-type": "classic"}
	if b.opt.quorum {
		args["x-queue-type"] = "quorum"
		b.quorumArgs(args)
	}
	if _, err := s.ctl.QueueDeclare(dead, true, false, false, false, args); err != nil {
		return b.wrap("declare "+dead, err)
	}
	if err := s.ctl.QueueBind(dead, "", dead, false, nil); err != nil {
		return b.wrap("bind "+dead, err)
	}
	if err := s.ctl.ExchangeDeclare(b.levelName(-1), "topic", true, false, false, false, nil); err != nil {
		return b.wrap("declare "+b.levelName(-1), err)
	}
	s.declared.Store("base", true)
	return nil
}

// declareDelays declares the delay levels (once per session). Level L is a
// topic exchange and a queue with a message TTL of 2^L ms: keys with bit L
// set go into the queue, whose expired messages are dead-lettered (keeping
// their key) to level L-1; keys with bit L clear pass straight to level
// L-1. Quorum delay queues dead-letter at least once, so a message is never
// dropped between levels.
func (b *broker) declareDelays(ctx context.Context, s *session) error {
	if _, ok := s.declared.Load("delays"); ok {
		return nil
	}
	if err := s.lockCtl(ctx); err != nil {
		return b.wrap("declare the delay levels", err)
	}
	defer s.unlockCtl()
	if _, ok := s.declared.Load("delays"); ok {
		return nil // declared while this call waited
	}
	if err := b.declareBase(s); err != nil {
		return err
	}
	for l := 0; l < Levels; l++ {
		x := b.levelName(l)
		if err := s.ctl.ExchangeDeclare(x, "topic", true, false, false, false, nil); err != nil {
			return b.wrap("declare "+x, err)
		}
		args := amqp.Table{
			"x-message-ttl":          int64(1) << l,
			"x-dead-letter-exchange": b.levelName(l - 1),
		}
		if b.opt.quorum {
			args["x-queue-type"] = "quorum"
			args["x-dead-letter-strategy"] = "at-least-once"
			args["x-overflow"] = "reject-publish"
			b.quorumArgs(args)
		} else {
			args["x-queue-type"] = "classic"
		}
		if _, err := s.ctl.QueueDeclare(x, true, false, false, false, args); err != nil {
			return b.wrap("declare "+x, err)
		}
		if err := s.ctl.QueueBind(x, levelPattern(l, "1"), x, false, nil); err != nil {
			return b.wrap("bind "+x, err)
		}
		if err := s.ctl.ExchangeBind(b.levelName(l-1), levelPattern(l, "0"), x, false, nil); err != nil {
			return b.wrap("bind "+x, err)
		}
	}
	s.declared.Store("delays", true)
	return nil
}
