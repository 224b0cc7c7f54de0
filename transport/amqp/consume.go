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
}

func (t *Transport) consumerTag(queue string) string { return "docket." + t.id + "." + queue }

// consume starts the consumer of a docket queue on s (once per session).
func (t *Transport) consume(ctx context.Context, s *session, queue string) error {
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	if s.consumers[queue] {
		return nil
	}
	if err := t.declareQueue(ctx, s, queue); err != nil {
		return err
	}
	if len(s.consumers) == 0 {
		t.mu.Lock()
		capacity := t.capacity
		t.mu.Unlock()
		if err := s.cons.Qos(max(capacity, 1), 0, false); err != nil {
			return t.wrap("set prefetch", err)
		}
	}
	qn := t.queueName(queue)
	// The consumer must outlive ctx (ConsumeWithContext would cancel it
	// when ctx ends), but the call must not: a broker that does not answer
	// ends the session, which unblocks it.
	type started struct {
		msgs <-chan amqp.Delivery
		err  error
	}
	answer := make(chan started, 1)
	go func() {
		msgs, err := s.cons.Consume(qn, t.consumerTag(queue), false, false, false, false, nil)
		answer <- started{msgs, err}
	}()
	var msgs <-chan amqp.Delivery
	select {
	case a := <-answer:
		if a.err != nil {
			return t.wrap("consume "+qn, a.err)
		}
		msgs = a.msgs
	case <-ctx.Done():
		err := fmt.Errorf("consume %s: no answer from the broker: %w", qn, context.Cause(ctx))
		s.fail(err)
		return t.wrap("consume", err)
	}
	s.consumers[queue] = true
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		for d := range msgs {
			t.received(s, queue, d)
		}
	}()
	return nil
}

func (t *Transport) received(s *session, queue string, d amqp.Delivery) {
	h := &held{s: s, d: d}
	dec, err := decode(&d)
	h.msg, h.lastErr, h.replyTo, h.bad = dec.msg, dec.lastErr, dec.replyTo, err
	h.used = dec.used + deliveries(&d)
	h.attempt = h.used + 1
	if err == nil && h.msg.Queue != queue {
		h.bad = fmt.Errorf("message for queue %q arrived in queue %q", h.msg.Queue, queue)
	}
	t.mu.Lock()
	if !s.alive() || t.closed {
		t.mu.Unlock()
		return // the session ended: the broker redelivers it
	}
	// s may not be installed yet (its consumers start while it connects);
	// pick hands out only deliveries of the installed session.
	t.buf = append(t.buf, h)
	t.mu.Unlock()
	t.publishEvent(transport.Event{Kind: transport.EventReady, Queue: queue})
}

// Claim implements transport.Transport. It starts consumers for queues not
// consumed yet and hands out what they delivered, highest priority first;
// RabbitMQ pushes, so NextAt is always zero and workers are woken by
// EventReady.
func (t *Transport) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	if p.Limit <= 0 || len(p.Queues) == 0 {
		return res, nil
	}
	s, err := t.current()
	if err != nil {
		return res, err
	}
	t.mu.Lock()
	if t.capacity == 0 {
		t.capacity = max(p.Capacity, p.Limit)
	}
	for _, q := range p.Queues {
		t.queues[q] = true
	}
	t.mu.Unlock()
	// The worker's ctx never ends; a broker that does not answer must not
	// hold the worker's loop forever.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, q := range p.Queues {
		if err := t.consume(cctx, s, q); err != nil {
			return res, err
		}
	}
	ctx = cctx
	t.mu.Lock()
	picked := t.pick(p)
	t.mu.Unlock()
	if len(picked) == 0 {
		return res, nil
	}

	var give []*held
	var settle []settlement
	var rs reports
	if t.store != nil {
		give, settle, res.Ended, err = t.leaseStored(ctx, s, p, picked)
		if err != nil {
			t.requeue(picked)
			return res, err
		}
	} else {
		give, settle, res.Ended, rs = t.leaseAlone(ctx, s, p, picked)
	}
	if len(settle) > 0 {
		if err := t.settle(s, settle, rs); err != nil {
			t.cfg.Logger.Warn("docket: amqp: could not settle undeliverable tasks; reconnecting", "err", err)
			s.fail(err)
		}
	}
	t.mu.Lock()
	for _, h := range give {
		h.owner = p.Owner
		t.inflight[h.msg.ID] = h
	}
	t.mu.Unlock()
	for _, h := range give {
		d := transport.Delivery{Message: h.msg, Attempt: h.attempt, Owner: p.Owner, LeaseUntil: p.LeaseUntil, LastError: h.lastErr}
		res.Deliveries = append(res.Deliveries, d)
		// A producer in this process sees the start; others are not told
		// (a message per start would double the broker's work per task).
		t.apply(h.msg.ID, stateUpdate{state: transport.StateRunning, attempt: h.attempt, at: p.Now})
	}
	return res, nil
}

// pick removes from the buffer up to p.Limit deliveries of p's queues whose
// names are not excluded, highest priority first, then oldest first. A copy
// of a task in flight here on the same connection (a duplicate) waits for
// its twin to finish.
func (t *Transport) pick(p transport.ClaimParams) []*held {
	var cand []int
	stale := 0
	for i, h := range t.buf {
		if h.s != t.sess {
			stale++
			continue
		}
		if h.bad == nil && (!slices.Contains(p.Queues, h.msg.Queue) || slices.Contains(p.Exclude, h.msg.Name)) {
			continue
		}
		if twin := t.inflight[h.msg.ID]; h.bad == nil && twin != nil && twin.s == h.s {
			continue
		}
		cand = append(cand, i)
	}
	slices.SortStableFunc(cand, func(a, b int) int { return t.buf[b].msg.Priority - t.buf[a].msg.Priority })
	cand = cand[:min(len(cand), p.Limit)]
	taken := make(map[int]bool, len(cand))
	out := make([]*held, 0, len(cand))
	for _, i := range cand {
		taken[i] = true
		out = append(out, t.buf[i])
	}
	keep := t.buf[:0]
	for i, h := range t.buf {
		if !taken[i] && (stale == 0 || h.s == t.sess) {
			keep = append(keep, h)
		}
	}
	clear(t.buf[len(keep):])
	t.buf = keep
	return out
}

// requeue puts picked deliveries back at the front of the buffer.
func (t *Transport) requeue(hs []*held) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sess == nil || len(hs) == 0 || hs[0].s != t.sess {
		return
	}
	t.buf = append(append([]*held(nil), hs...), t.buf...)
}

// settlement is a delivery that will not run now, and the messages to
// publish before it is acknowledged.
type settlement struct {
	h   *held
	out []outgoing
	end string // the id of a task this ended, for EventFinished (rpc mode)
}

// leaseAlone decides, with RabbitMQ alone, which deliveries run: the
// message's headers and this process's memory of cancellations are all
// there is to go by.
func (t *Transport) leaseAlone(ctx context.Context, s *session, p transport.ClaimParams, picked []*held) (give []*held, settle []settlement, ended []transport.Status, rs reports) {
	rs = reports{}
	for _, h := range picked {
		id := h.msg.ID
		var state transport.State
		var reason string
		t.mu.Lock()
		revoked := t.isRevoked(id)
		t.mu.Unlock()
		switch {
		case h.bad != nil:
			settle = append(settle, settlement{h: h, out: []outgoing{t.undecodable(h)}})
			continue
		case revoked:
			state, reason = transport.StateCancelled, "cancelled before it started"
		case !h.msg.Expires.IsZero() && !p.Now.Before(h.msg.Expires):
			state, reason = transport.StateExpired, "expired before it started"
		case p.Now.Before(h.msg.ETA):
			// Early (an ETA beyond one trip through the delay levels, or
			// another host's clock): around the levels again.
			c, err := t.copyOf(ctx, s, h, h.used, h.lastErr, h.msg.ETA, p.Now)
			if err != nil {
				t.requeue([]*held{h})
				continue
			}
			settle = append(settle, settlement{h: h, out: []outgoing{c}})
			continue
		case h.attempt > h.msg.MaxAttempts:
			state = transport.StateFailed
			reason = fmt.Sprintf("worker lost: delivered %d times without an outcome (max attempts %d)", h.attempt-1, h.msg.MaxAttempts)
		default:
			give = append(give, h)
			continue
		}
		st := settlement{h: h, end: id}
		if state == transport.StateFailed {
			st.out = append(st.out, t.deadLetter(h, reason))
		}
		u := stateUpdate{state: state, attempt: h.attempt - 1, at: p.Now, err: reason}
		rs.add(h, u)
		t.apply(id, u)
		settle = append(settle, st)
		ended = append(ended, transport.Status{ID: id, State: state})
	}
	return give, settle, ended, rs
}

// leaseStored leases the delivered tasks in the result store, which keeps
// their state and fences every write. A task the store does not lease is
// settled: dropped when it is final (a duplicate copy, or a cancelled
// task) or was never recorded; sent around the delay levels until the
// store says it is due (a retry not due yet, a copy of a task another
// worker holds under a live lease, or a task not recorded yet);
// dead-lettered when its worker was lost too often.
func (t *Transport) leaseStored(ctx context.Context, s *session, p transport.ClaimParams, picked []*held) (give []*held, settle []settlement, ended []transport.Status, err error) {
	var ids []string
	var good []*held
	for _, h := range picked {
		if h.bad != nil {
			settle = append(settle, settlement{h: h, out: []outgoing{t.undecodable(h)}})
			continue
		}
		ids = append(ids, h.msg.ID)
		good = append(good, h)
	}
	if len(ids) == 0 {
		return nil, settle, nil, nil
	}
	res, err := t.claimer.ClaimIDs(ctx, transport.ClaimIDsParams{Now: p.Now, Owner: p.Owner, LeaseUntil: p.LeaseUntil, IDs: ids})
	if err != nil {
		return nil, nil, nil, err
	}
	for i, r := range res {
		h := good[i]
		switch {
		case r.Delivery != nil:
			h.msg, h.attempt, h.lastErr = r.Delivery.Message, r.Delivery.Attempt, r.Delivery.LastError
			give = append(give, h)
		case r.Ended:
			st := settlement{h: h}
			if r.State == transport.StateFailed {
				st.out = append(st.out, t.deadLetter(h, "worker lost: delivered again after its last attempt"))
			}
			settle = append(settle, st)
			ended = append(ended, transport.Status{ID: ids[i], State: r.State})
		case r.State == 0 && p.Now.Sub(h.msg.Created) < unrecordedWait:
			// Published, but its producer has not recorded it yet: ask
			// again soon, later the longer it has been missing.
			retry := min(max(p.Now.Sub(h.msg.Created)/2, 10*time.Millisecond), time.Second)
			c, err := t.copyOf(ctx, s, h, h.used, h.lastErr, p.Now.Add(retry), p.Now)
			if err != nil {
				return nil, nil, nil, err
			}
			settle = append(settle, settlement{h: h, out: []outgoing{c}})
		case r.State == 0 || r.State.Terminal():
			// Never accepted (its producer failed to record it), or a
			// copy of a task that already ended.
			settle = append(settle, settlement{h: h})
		default:
			c, err := t.copyOf(ctx, s, h, h.used, h.lastErr, r.RunAt, p.Now)
			if err != nil {
				return nil, nil, nil, err
			}
			settle = append(settle, settlement{h: h, out: []outgoing{c}})
		}
	}
	return give, settle, ended, nil
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
func (t *Transport) sendReports(ctx context.Context, s *session, rs reports) error {
	for q, list := range rs {
		if t.ownReply(q) {
			t.applyReports(list)
			delete(rs, q)
		}
	}
	for _, o := range rs.messages() {
		if err := s.cons.PublishWithContext(ctx, o.exchange, o.key, false, false, o.msg); err != nil {
			return t.wrap("report", err)
		}
	}
	return nil
}

// A delivered task the result store does not know is tried again, after
// half its age (10 ms to 1 s), until it is unrecordedWait old, then
// dropped: its producer publishes before it records the task.
const unrecordedWait = 10 * time.Second

// settle publishes what each settlement needs, waits for the broker's
// confirms, sends the state reports, and then acknowledges the deliveries.
func (t *Transport) settle(s *session, items []settlement, rs reports) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []outgoing
	var finished []string
	for _, st := range items {
		out = append(out, st.out...)
		if st.end != "" {
			finished = append(finished, st.end)
		}
	}
	if err := t.publish(ctx, s, out); err != nil {
		return err
	}
	if err := t.sendReports(ctx, s, rs); err != nil {
		return err
	}
	hs := make([]*held, len(items))
	for i, st := range items {
		hs[i] = st.h
	}
	if err := ackHeld(hs); err != nil {
		return t.wrap("ack", err)
	}
	if len(finished) > 0 {
		t.publishEvent(transport.Event{Kind: transport.EventFinished, IDs: finished})
	}
	return nil
}

// undecodable returns the dead-letter copy of a message that could not be
// decoded, with the reason.
func (t *Transport) undecodable(h *held) outgoing {
	return t.deadLetter(h, "undecodable: "+h.bad.Error())
}

// deadLetter returns a copy of h for the dead-letter queue, with reason.
func (t *Transport) deadLetter(h *held, reason string) outgoing {
	msg := publishingOf(&h.d)
	msg.Headers[hReason] = reason
	return outgoing{exchange: t.name("dead"), msg: msg}
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
func (t *Transport) copyOf(ctx context.Context, s *session, h *held, used int, lastErr string, at, now time.Time) (outgoing, error) {
	m := h.msg
	pub, err := encode(&m, used, lastErr, h.replyTo)
	if err != nil {
		return outgoing{}, err
	}
	ex, key, err := t.route(ctx, s, m.Queue, at, now)
	if err != nil {
		return outgoing{}, err
	}
	return outgoing{exchange: ex, key: key, mandatory: true, msg: pub}, nil
}

// lease returns the in-flight delivery l holds. With RabbitMQ alone the
// lease is the channel that delivered the task, so it must still be open;
// with a result store the lease is the store's.
func (t *Transport) lease(l transport.Lease) *held {
	h := t.inflight[l.ID]
	if h == nil || h.attempt != l.Attempt || h.owner != l.Owner {
		return nil
	}
	if t.store == nil && (h.s != t.sess || !h.s.alive()) {
		return nil
	}
	return h
}

// Extend implements transport.Transport. With RabbitMQ alone the lease is
// the consumer's channel, which RabbitMQ keeps while the connection lives:
// Extend reports it lost once the session that delivered the task is gone.
// With a result store, Extend renews the store's lease.
func (t *Transport) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	if t.store != nil {
		out, err := t.store.Extend(ctx, p)
		if err != nil {
			return nil, err
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		for i, l := range p.Leases {
			out[i].CancelRequested = out[i].CancelRequested || t.isRevoked(l.ID)
		}
		return out, nil
	}
	out := make([]transport.ExtendResult, len(p.Leases))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, l := range p.Leases {
		if t.lease(l) == nil {
			out[i].Lost = true
			continue
		}
		out[i].CancelRequested = t.isRevoked(l.ID)
	}
	return out, nil
}

// Finish implements transport.Transport. For each outcome it publishes what
// must follow (the final state to the producer; a retry's or a release's
// new copy), waits for the broker's confirms, and then acknowledges the
// delivery. A crash in between leaves the delivery unacknowledged: it is
// delivered again (at least once). With a result store, the outcome is
// written to the store first, fenced on its lease; a delivery whose
// connection died meanwhile is delivered again, and the store settles it.
func (t *Transport) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	res := make([]transport.FinishResult, len(p.Items))
	if len(p.Items) == 0 {
		return res, nil
	}
	for _, o := range p.Items {
		switch o.State {
		case transport.StateScheduled, transport.StateReady, transport.StateSucceeded, transport.StateFailed, transport.StateCancelled:
		default:
			return nil, fmt.Errorf("docket: finish task %s: invalid outcome state %v", o.ID, o.State)
		}
	}
	if t.store != nil {
		var err error
		if res, err = t.store.Finish(ctx, p); err != nil {
			return nil, err
		}
	}
	p.Items = t.withPendingCancels(p.Items)
	hs := make([]*held, len(p.Items))
	t.mu.Lock()
	for i, o := range p.Items {
		if hs[i] = t.lease(o.Lease); hs[i] == nil && t.store == nil {
			res[i].Lost = true
		}
	}
	t.mu.Unlock()
	s, err := t.current()
	if err != nil {
		// The session that delivered these tasks is gone: with RabbitMQ
		// alone, so are their leases; with a store, the outcomes are
		// written and the redelivered copies will be settled by it.
		t.forget(p.Items)
		if t.store == nil {
			for i := range res {
				res[i].Lost = true
			}
		}
		return res, nil
	}
	var out []outgoing
	rs := reports{}
	for i, o := range p.Items {
		h := hs[i]
		if h == nil || res[i].Lost {
			continue
		}
		u := t.update(h, o, p.Now)
		switch o.State {
		case transport.StateScheduled:
			c, err := t.copyOf(ctx, s, h, h.attempt, o.Error, o.RunAt, p.Now)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		case transport.StateReady:
			c, err := t.copyOf(ctx, s, h, h.attempt-1, h.lastErr, time.Time{}, p.Now)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		rs.add(h, u)
	}
	if err := t.publish(ctx, s, out); err != nil {
		return nil, err
	}
	if err := t.sendReports(ctx, s, rs); err != nil {
		return nil, err
	}
	// A delivery whose outcome the store refused is an obsolete copy:
	// acknowledged, like a settled one. (A producer on this queue already
	// has the outcomes: sendReports applied them.)
	if err := ackHeld(hs); err != nil && t.store == nil {
		// The channel is gone; the broker redelivers the tasks, and the
		// copies or results just published may run or count twice.
		for i := range res {
			res[i].Lost = true
		}
	}
	t.mu.Lock()
	for i, o := range p.Items {
		if hs[i] != nil {
			delete(t.inflight, o.ID)
		}
	}
	t.mu.Unlock()
	return res, nil
}

// update is the state change an outcome reports to the producer.
func (t *Transport) update(h *held, o transport.Outcome, now time.Time) stateUpdate {
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

// forget drops the in-flight entries of outcomes whose leases were lost.
func (t *Transport) forget(items []transport.Outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range items {
		if h := t.inflight[o.ID]; h != nil && h.attempt == o.Attempt && h.owner == o.Owner {
			delete(t.inflight, o.ID)
		}
	}
}

var _ transport.ClaimStopper = (*Transport)(nil)

// StopClaims implements transport.ClaimStopper: it cancels this process's
// consumers and gives back every delivery no Claim handed out, as a new
// copy with its attempts unchanged (a plain requeue would count one more
// delivery), so a worker that stops holds nothing another could run.
func (t *Transport) StopClaims(ctx context.Context, owner string) error {
	t.mu.Lock()
	t.queues = map[string]bool{}
	t.capacity = 0
	s := t.sess
	t.mu.Unlock()
	if s == nil {
		return nil
	}
	return t.giveBack(ctx, s)
}

// giveBack cancels s's consumers, waits until their deliveries are
// buffered, and republishes and acknowledges the buffer.
func (t *Transport) giveBack(ctx context.Context, s *session) error {
	s.consumeMu.Lock()
	for q := range s.consumers {
		if err := s.cons.Cancel(t.consumerTag(q), false); err != nil {
			s.consumeMu.Unlock()
			return t.wrap("cancel consumer", err)
		}
	}
	s.consumers = map[string]bool{}
	s.consumeMu.Unlock()
	s.loops.Wait()
	t.mu.Lock()
	// Deliveries of an earlier session need nothing: the broker put them
	// back when it ended.
	buf := slices.DeleteFunc(t.buf, func(h *held) bool { return h.s != s })
	t.buf = nil
	t.mu.Unlock()
	var out []outgoing
	now := t.cfg.Now()
	for _, h := range buf {
		if h.bad != nil {
			out = append(out, t.undecodable(h))
			continue
		}
		c, err := t.copyOf(ctx, s, h, h.used, h.lastErr, h.msg.ETA, now)
		if err != nil {
			return err
		}
		out = append(out, c)
	}
	if err := t.publish(ctx, s, out); err != nil {
		return err
	}
	if err := ackHeld(buf); err != nil {
		return t.wrap("ack", err)
	}
	return nil
}

// ackHeld acknowledges each of hs (nil entries aside) on the channel that
// delivered it (see session.ack). A delivery of a session that ended cannot
// be acknowledged: the broker has put it back.
func ackHeld(hs []*held) error {
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
		if err := s.ack(list); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
