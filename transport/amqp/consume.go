package amqp

import (
	"context"
	"fmt"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

// held is a delivery this process received: buffered until a Claim hands
// it out, then in flight until its outcome is acknowledged.
type held struct {
	s       *session
	d       amqp.Delivery
	msg     transport.Message
	attempt int    // the attempt this delivery is
	used    int    // attempts used before it (the retry copies' count plus redeliveries)
	lastErr string // the previous attempt's error
	replyTo string // the producer's reply queue, if any
	bad     error  // the message could not be decoded
	owner   string
	// notBefore: a delivery kept in the buffer to be judged again, not
	// before then (see verdict.later).
	notBefore time.Time
}

// setHoldMax sizes how many acknowledgements s may hold back to its
// consumers' prefetch.
func (s *session) setHoldMax(prefetch int) {
	s.ackMu.Lock()
	s.holdMax = holdLimit(prefetch)
	s.ackMu.Unlock()
}

// consuming reports whether s consumes every one of queues.
func (s *session) consuming(queues []string) bool {
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	for _, q := range queues {
		if !s.consumers[q] {
			return false
		}
	}
	return true
}

func (b *broker) consumerTag(queue string) string { return "docket." + b.id + "." + queue }

// consume starts the consumer of a docket queue on s (once per session).
func (b *broker) consume(ctx context.Context, s *session, queue string) error {
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	if s.consumers[queue] {
		return nil
	}
	if err := b.declareQueue(ctx, s, queue); err != nil {
		return err
	}
	if len(s.consumers) == 0 {
		b.mu.Lock()
		capacity := b.capacity
		b.mu.Unlock()
		if err := s.cons.Qos(max(capacity, 1), 0, false); err != nil {
			return b.wrap("set prefetch", err)
		}
		s.setHoldMax(capacity)
	}
	qn := b.queueName(queue)
	// The consumer must outlive ctx (ConsumeWithContext would cancel it
	// when ctx ends), but the call must not: a broker that does not answer
	// ends the session, which unblocks it.
	type started struct {
		msgs <-chan amqp.Delivery
		err  error
	}
	answer := make(chan started, 1)
	go func() {
		msgs, err := s.cons.Consume(qn, b.consumerTag(queue), false, false, false, false, nil)
		answer <- started{msgs, err}
	}()
	var msgs <-chan amqp.Delivery
	select {
	case a := <-answer:
		if a.err != nil {
			return b.wrap("consume "+qn, a.err)
		}
		msgs = a.msgs
	case <-ctx.Done():
		err := fmt.Errorf("consume %s: no answer from the broker: %w", qn, context.Cause(ctx))
		s.fail(err)
		return b.wrap("consume", err)
	}
	s.consumers[queue] = true
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		for d := range msgs {
			b.received(s, queue, d)
		}
	}()
	return nil
}

func (b *broker) received(s *session, queue string, d amqp.Delivery) {
	h := &held{s: s, d: d}
	dec, err := decode(&d)
	h.msg, h.lastErr, h.replyTo, h.bad = dec.msg, dec.lastErr, dec.replyTo, err
	h.used = dec.used + deliveries(&d)
	h.attempt = h.used + 1
	if err == nil && h.msg.Queue != queue {
		h.bad = fmt.Errorf("message for queue %q arrived in queue %q", h.msg.Queue, queue)
	}
	b.mu.Lock()
	if !s.alive() || b.closed {
		b.mu.Unlock()
		return // the session ended: the broker redelivers it
	}
	// s may not be installed yet (its consumers start while it connects);
	// pick hands out only deliveries of the installed session.
	b.buf = append(b.buf, h)
	b.mu.Unlock()
	b.publishEvent(transport.Event{Kind: transport.EventReady, Queue: queue})
}

// resumeConsumers starts, on a new session, the consumers of the queues
// this process consumes.
func (b *broker) resumeConsumers(ctx context.Context, s *session) error {
	b.mu.Lock()
	capacity := b.capacity
	queues := make([]string, 0, len(b.queues))
	for q := range b.queues {
		queues = append(queues, q)
	}
	b.mu.Unlock()
	if len(queues) == 0 {
		return nil
	}
	if err := s.cons.Qos(capacity, 0, false); err != nil {
		return b.wrap("set prefetch", err)
	}
	s.setHoldMax(capacity)
	for _, q := range queues {
		if err := b.consume(ctx, s, q); err != nil {
			return err
		}
	}
	return nil
}

// verdict is what a mode decided about deliveries picked from the buffer.
type verdict struct {
	give   []*held            // to run: handed out by Claim
	settle []settlement       // not to run now
	ended  []transport.Status // tasks the verdict ended (ClaimResult.Ended)
	// later are deliveries to judge again at their notBefore, kept in
	// this process unacknowledged: RabbitMQ keeps them for it, and
	// delivers them again if it dies.
	later []*held
	// beforeAck, when set, runs after the settlements' messages were
	// confirmed and before their deliveries are acknowledged.
	beforeAck func(ctx context.Context) error
}

// decideFunc is a mode's judgement of picked deliveries. On an error the
// deliveries go back to the buffer.
type decideFunc func(ctx context.Context, s *session, p transport.ClaimParams, picked []*held) (verdict, error)

// claim starts consumers for queues not consumed yet and hands out what
// they delivered that decide lets run, highest priority first. RabbitMQ
// pushes, and workers are woken by EventReady; NextAt is the time of the
// earliest delivery kept to be judged again.
func (b *broker) claim(ctx context.Context, p transport.ClaimParams, decide decideFunc) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	if p.Limit <= 0 || len(p.Queues) == 0 {
		return res, nil
	}
	s, err := b.current()
	if err != nil {
		return res, err
	}
	// However long the caller's ctx, a broker that does not answer must
	// not hold the worker's loop for more than half a minute. (A worker's
	// own bound is usually that already: no second timer per claim.)
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > claimWait {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, claimWait)
		defer cancel()
	}
	if err := b.startConsumers(ctx, s, p); err != nil {
		return res, err
	}
	b.mu.Lock()
	picked, next := b.pick(p)
	b.mu.Unlock()
	res.NextAt = next
	if len(picked) == 0 {
		return res, nil
	}
	v, err := decide(ctx, s, p, picked)
	if err != nil {
		b.requeue(picked)
		return res, err
	}
	res.Ended = v.ended
	if len(v.later) > 0 {
		b.mu.Lock()
		if b.sess == s {
			b.buf = append(b.buf, v.later...)
		}
		b.mu.Unlock()
		for _, h := range v.later {
			if res.NextAt.IsZero() || h.notBefore.Before(res.NextAt) {
				res.NextAt = h.notBefore
			}
		}
	}
	if len(v.settle) > 0 {
		if err := b.settle(s, v.settle, v.beforeAck); err != nil {
			b.log.Warn("docket: amqp: could not settle undeliverable tasks; reconnecting", "err", err)
			s.fail(err)
		}
	}
	b.mu.Lock()
	for _, h := range v.give {
		h.owner = p.Owner
		b.inflight[h.msg.ID] = h
	}
	b.mu.Unlock()
	res.Deliveries = make([]transport.Delivery, 0, len(v.give))
	for _, h := range v.give {
		d := transport.Delivery{Message: h.msg, Attempt: h.attempt, Owner: p.Owner, LeaseUntil: p.LeaseUntil, LastError: h.lastErr}
		res.Deliveries = append(res.Deliveries, d)
	}
	return res, nil
}

// claimWait bounds how long a claim waits for the broker.
const claimWait = 30 * time.Second

// startConsumers records p's queues and capacity as this process's
// consumers and starts those not started on s yet.
func (b *broker) startConsumers(ctx context.Context, s *session, p transport.ClaimParams) error {
	b.mu.Lock()
	if b.capacity == 0 {
		b.capacity = max(p.Capacity, p.Limit)
	}
	for _, q := range p.Queues {
		b.queues[q] = true
	}
	b.mu.Unlock()
	if s.consuming(p.Queues) {
		return nil
	}
	for _, q := range p.Queues {
		if err := b.consume(ctx, s, q); err != nil {
			return err
		}
	}
	return nil
}

// pick removes from the buffer up to p.Limit deliveries of p's queues whose
// names are not excluded, highest priority first, then oldest first. A copy
// of a task in flight here on the same connection (a duplicate) waits for
// its twin to finish.
func (b *broker) pick(p transport.ClaimParams) (picked []*held, next time.Time) {
	var cand []int
	stale := 0
	for i, h := range b.buf {
		if h.s != b.sess {
			stale++
			continue
		}
		if h.bad == nil && (!slices.Contains(p.Queues, h.msg.Queue) || slices.Contains(p.Exclude, h.msg.Name)) {
			continue
		}
		if h.notBefore.After(p.Now) {
			if next.IsZero() || h.notBefore.Before(next) {
				next = h.notBefore
			}
			continue
		}
		if twin := b.inflight[h.msg.ID]; h.bad == nil && twin != nil && twin.s == h.s {
			continue
		}
		cand = append(cand, i)
	}
	slices.SortStableFunc(cand, func(x, y int) int { return b.buf[y].msg.Priority - b.buf[x].msg.Priority })
	cand = cand[:min(len(cand), p.Limit)]
	out := make([]*held, 0, len(cand))
	for _, i := range cand {
		out = append(out, b.buf[i])
		b.buf[i] = nil
	}
	keep := b.buf[:0]
	for _, h := range b.buf {
		if h != nil && (stale == 0 || h.s == b.sess) {
			keep = append(keep, h)
		}
	}
	clear(b.buf[len(keep):])
	b.buf = keep
	return out, next
}

// requeue puts picked deliveries back at the front of the buffer.
func (b *broker) requeue(hs []*held) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess == nil || len(hs) == 0 || hs[0].s != b.sess {
		return
	}
	b.buf = append(append([]*held(nil), hs...), b.buf...)
}

// consumingAny reports whether this process consumes any docket queue (it
// stops at StopClaims).
func (b *broker) consumingAny() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queues) > 0
}
