package amqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

// settlement is a delivery that will not run now, and the messages to
// publish before it is acknowledged.
type settlement struct {
	h   *held
	out []outgoing
}

// settle publishes what each settlement needs, waits for the broker's
// confirms, runs beforeAck (if set), and then acknowledges the deliveries.
func (b *broker) settle(s *session, items []settlement, beforeAck func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []outgoing
	for _, st := range items {
		out = append(out, st.out...)
	}
	if err := b.publish(ctx, s, out); err != nil {
		return err
	}
	if beforeAck != nil {
		if err := beforeAck(ctx); err != nil {
			return err
		}
	}
	hs := make([]*held, len(items))
	for i, st := range items {
		hs[i] = st.h
	}
	if err := ackHeld(hs, true); err != nil {
		return b.wrap("ack", err)
	}
	return nil
}

// undecodable returns the dead-letter copy of a message that could not be
// decoded, with the reason.
func (b *broker) undecodable(h *held) outgoing {
	return b.deadLetter(h, "undecodable: "+h.bad.Error())
}

// deadLetter returns a copy of h for the dead-letter queue, with reason.
func (b *broker) deadLetter(h *held, reason string) outgoing {
	msg := publishingOf(&h.d)
	msg.Headers[hReason] = reason
	return outgoing{exchange: b.name("dead"), msg: msg}
}

// publishingOf returns the message of d as it was published.
func publishingOf(d *amqp.Delivery) amqp.Publishing {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	return amqp.Publishing{
		Headers: h, ContentType: d.ContentType, DeliveryMode: amqp.Persistent, Priority: d.Priority,
		MessageId: d.MessageId, Type: d.Type, ReplyTo: d.ReplyTo, Timestamp: d.Timestamp, Body: d.Body,
	}
}

// copyOf returns a new copy of h's task that counts used attempts and
// waits until at.
func (b *broker) copyOf(ctx context.Context, s *session, h *held, used int, lastErr string, at, now time.Time) (outgoing, error) {
	m := h.msg
	pub, err := encode(&m, used, lastErr, h.replyTo)
	if err != nil {
		return outgoing{}, err
	}
	ex, key, err := b.route(ctx, s, m.Queue, at, now)
	if err != nil {
		return outgoing{}, err
	}
	return outgoing{exchange: ex, key: key, mandatory: true, msg: pub}, nil
}

// checkOutcomes refuses outcome states a worker cannot report.
func checkOutcomes(items []transport.Outcome) error {
	for _, o := range items {
		switch o.State {
		case transport.StateScheduled, transport.StateReady, transport.StateSucceeded, transport.StateFailed, transport.StateCancelled:
		default:
			return fmt.Errorf("docket: finish task %s: invalid outcome state %v: %w", o.ID, o.State, transport.ErrInvalid)
		}
	}
	return nil
}

// heldLease returns the in-flight delivery that lease l names, or nil. The
// caller holds mu.
func (b *broker) heldLease(l transport.Lease) *held {
	h := b.inflight[l.ID]
	if h == nil || h.attempt != l.Attempt || h.owner != l.Owner {
		return nil
	}
	return h
}

// outcomeCopies returns the new copies the outcomes need: a retry's,
// waiting until its RunAt with one more attempt used, and a release's,
// due now with its attempt given back. hs holds each outcome's delivery;
// nil entries are skipped.
func (b *broker) outcomeCopies(ctx context.Context, s *session, now time.Time, items []transport.Outcome, hs []*held) ([]outgoing, error) {
	var out []outgoing
	for i, o := range items {
		h := hs[i]
		if h == nil {
			continue
		}
		var c outgoing
		var err error
		switch o.State {
		case transport.StateScheduled:
			c, err = b.copyOf(ctx, s, h, h.attempt, o.Error, o.RunAt, now)
		case transport.StateReady:
			c, err = b.copyOf(ctx, s, h, h.attempt-1, h.lastErr, time.Time{}, now)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// release drops the in-flight entries of the outcomes' deliveries hs
// (nil entries aside), once they were acknowledged or could not be.
func (b *broker) release(items []transport.Outcome, hs []*held) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, o := range items {
		if hs[i] != nil {
			delete(b.inflight, o.ID)
		}
	}
}

// forget drops the in-flight entries of outcomes whose leases were lost.
func (b *broker) forget(items []transport.Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, o := range items {
		if h := b.inflight[o.ID]; h != nil && h.attempt == o.Attempt && h.owner == o.Owner {
			delete(b.inflight, o.ID)
		}
	}
}

// StopClaims implements transport.ClaimStopper: it cancels this process's
// consumers and gives back every delivery no Claim handed out, as a new
// copy with its attempts unchanged (a plain requeue would count one more
// delivery), so a worker that stops holds nothing another could run.
func (b *broker) StopClaims(ctx context.Context, owner string) error {
	b.mu.Lock()
	b.queues = map[string]bool{}
	b.capacity = 0
	s := b.sess
	b.mu.Unlock()
	if s == nil {
		return nil
	}
	return b.giveBack(ctx, s)
}

// giveBack cancels s's consumers, waits until their deliveries are
// buffered, republishes and acknowledges the buffer, and sends the
// acknowledgements held back.
func (b *broker) giveBack(ctx context.Context, s *session) (err error) {
	defer func() {
		if ferr := s.flushHeldAcks(); ferr != nil && err == nil {
			err = b.wrap("ack", ferr)
		}
	}()
	s.consumeMu.Lock()
	for q := range s.consumers {
		if err := s.cons.Cancel(b.consumerTag(q), false); err != nil {
			s.consumeMu.Unlock()
			return b.wrap("cancel consumer", err)
		}
	}
	s.consumers = map[string]bool{}
	s.consumeMu.Unlock()
	s.loops.Wait()
	b.mu.Lock()
	// Deliveries of an earlier session need nothing: the broker put them
	// back when it ended.
	buf := slices.DeleteFunc(b.buf, func(h *held) bool { return h.s != s })
	b.buf = nil
	b.mu.Unlock()
	var out []outgoing
	now := b.now()
	for _, h := range buf {
		if h.bad != nil {
			out = append(out, b.undecodable(h))
			continue
		}
		c, err := b.copyOf(ctx, s, h, h.used, h.lastErr, h.msg.ETA, now)
		if err != nil {
			return err
		}
		out = append(out, c)
	}
	if err := b.publish(ctx, s, out); err != nil {
		return err
	}
	if err := ackHeld(buf, false); err != nil {
		return b.wrap("ack", err)
	}
	return nil
}

// ackHeld acknowledges each of hs (nil entries aside) on the channel that
// delivered it (see session.ack); hold lets the book hold acknowledgements
// back, which it must not once this process stopped consuming (nothing
// would close the gap, and nothing may be left unsent when the program
// exits). A delivery of a session that ended cannot be acknowledged: the
// broker has put it back.
func ackHeld(hs []*held, hold bool) error {
	tags := map[*session][]uint64{}
	for _, h := range hs {
		if h != nil {
			tags[h.s] = append(tags[h.s], h.d.DeliveryTag)
		}
	}
	var errs []error
	for s, list := range tags {
		if !s.alive() {
			errs = append(errs, fmt.Errorf("the channel that delivered %d of the tasks is closed: %w", len(list), s.cause()))
			continue
		}
		if err := s.ack(list, hold); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ack acknowledges the deliveries of cons with the given tags in as few
// frames as ackBook allows; tags it holds back are sent by a timer (see
// flushHeldAcks).
func (s *session) ack(tags []uint64, hold bool) error {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	limit := 0
	if hold {
		limit = s.holdMax
	}
	multiple, single := s.acks.plan(tags, time.Now(), limit)
	if multiple > 0 {
		if err := s.cons.Ack(multiple, true); err != nil {
			return err
		}
	}
	if err := s.ackAlone(single); err != nil {
		return err
	}
	s.armAckTimer()
	return nil
}

// ackAlone acknowledges each tag in its own frame. The caller holds ackMu.
func (s *session) ackAlone(tags []uint64) error {
	for _, tag := range tags {
		if err := s.cons.Ack(tag, false); err != nil {
			return err
		}
	}
	return nil
}

// armAckTimer makes sure the tags the book holds back are sent once due.
// The caller holds ackMu.
func (s *session) armAckTimer() {
	next := s.acks.next()
	if next.IsZero() || s.ackTimer != nil {
		return
	}
	s.ackTimer = time.AfterFunc(max(time.Until(next), 0), func() {
		s.ackMu.Lock()
		defer s.ackMu.Unlock()
		s.ackTimer = nil
		if err := s.ackAlone(s.acks.due(time.Now(), false)); err != nil {
			s.fail(fmt.Errorf("acknowledge: %w", err))
			return
		}
		s.armAckTimer()
	})
}

// flushHeldAcks sends every acknowledgement the book holds back, before
// the session is closed on purpose: a delivery left unacknowledged would
// be delivered again.
func (s *session) flushHeldAcks() error {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.ackTimer != nil {
		s.ackTimer.Stop()
		s.ackTimer = nil
	}
	return s.ackAlone(s.acks.due(time.Time{}, true))
}

// ackHold is how long ackBook holds back the acknowledgement of a delivery
// above a gap.
const ackHold = 5 * time.Millisecond

// holdLimit is how many acknowledgements a consumer with the given
// prefetch may hold back: half of it, so that the broker keeps delivering
// while they wait. At high concurrency the spread between the oldest
// delivery not yet finished and the newest finished is itself most of the
// prefetch: a smaller limit sends most acknowledgements alone.
func holdLimit(prefetch int) int { return prefetch / 2 }

// ackBook keeps which deliveries of a channel are acknowledged, to
// acknowledge new ones in as few frames as possible. Delivery tags number
// a channel's deliveries 1, 2, 3…, so once every tag from the floor up is
// settled, one frame with the multiple flag covers them. Tasks finish
// roughly in the order they arrive, but not exactly: a settled tag above a
// gap (a delivery still running) is held back for ackHold, since the gap
// usually closes within that time and the multiple frame then covers it
// too; if it does not (a long task), the held tag is acknowledged alone,
// and so is every tag after it until the floor moves: holding back behind
// a long task would only slow the consumer down. A busy worker's batch of
// outcomes so takes one frame instead of one each, for the broker as much
// as for this process. Holding back delays nothing but the broker's
// deletion of the message and the prefetch slot it occupies (hence a
// limit per call, a fraction of the prefetch); a channel lost meanwhile
// redelivers the held tasks, as it would had their outcomes not been
// recorded.
type ackBook struct {
	floor uint64               // every tag up to this one is acknowledged
	above map[uint64]struct{}  // tags above floor acknowledged one by one
	held  map[uint64]time.Time // tags above floor settled, not sent yet, since when
	stuck bool                 // a held tag came due with the floor unmoved
}

// plan records tags as settled at now and returns the frames to send: the
// tag to acknowledge with the multiple flag (0 for none) and the tags to
// acknowledge alone. It holds back at most limit tags (none with 0). Tags
// already settled are ignored.
func (b *ackBook) plan(tags []uint64, now time.Time, limit int) (multiple uint64, single []uint64) {
	if b.above == nil {
		b.above, b.held = map[uint64]struct{}{}, map[uint64]time.Time{}
	}
	mine := make(map[uint64]struct{}, len(tags))
	for _, tag := range tags {
		_, sent := b.above[tag]
		_, held := b.held[tag]
		if tag > b.floor && !sent && !held {
			mine[tag] = struct{}{}
		}
	}
	floor := b.floor
	for {
		next := floor + 1
		_, ok := mine[next]
		_, held := b.held[next]
		if ok || held {
			// The multiple frame names a tag not acknowledged yet:
			// naming one acknowledged before is an error to RabbitMQ.
			multiple = next
			delete(b.held, next)
		} else if _, sent := b.above[next]; sent {
			delete(b.above, next) // below the floor from now on
		} else {
			break
		}
		floor++
	}
	if floor > b.floor {
		b.stuck = false
	}
	b.floor = floor
	for tag := range mine {
		if tag > floor {
			b.held[tag] = now
		}
	}
	single = b.due(now, false) // may find the book stuck
	if b.stuck || len(b.held) > limit {
		single = append(single, b.due(now, true)...)
		slices.Sort(single)
	}
	return multiple, single
}

// due returns, in order, the held tags settled ackHold or more before now
// (all of them with all), and records them as acknowledged alone. A tag
// that came due means the gap below it is a long task: the book is stuck
// until the floor moves.
func (b *ackBook) due(now time.Time, all bool) []uint64 {
	var out []uint64
	for tag, since := range b.held {
		if all || now.Sub(since) >= ackHold {
			out = append(out, tag)
			b.stuck = b.stuck || !all
		}
	}
	slices.Sort(out)
	for _, tag := range out {
		delete(b.held, tag)
		b.above[tag] = struct{}{}
	}
	return out
}

// next returns when the first held tag falls due, or the zero time.
func (b *ackBook) next() time.Time {
	var first time.Time
	for _, since := range b.held {
		if first.IsZero() || since.Before(first) {
			first = since
		}
	}
	if first.IsZero() {
		return first
	}
	return first.Add(ackHold)
}
