package amqp

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// session is one connection and its channels. Any failure of the
// connection or of one of its channels ends the whole session: a fresh one
// is simpler to reason about than a half-open one.
type session struct {
	conn *amqp.Connection
	pub  *amqp.Channel // confirm mode: every publish
	cons *amqp.Channel // task consumers and their acks
	ctl  *amqp.Channel // declarations, control and reply consumers (see lockCtl)

	dead    chan struct{} // closed when the session failed
	once    sync.Once
	errMu   sync.Mutex
	err     error
	blocked chan struct{} // non-nil while the broker blocks publishers
	blockMu sync.Mutex

	returnsMu sync.Mutex
	returned  map[string]bool    // ids of messages returned unroutable
	barrier   chan chan struct{} // see collectReturns
	declared  sync.Map           // names declared on this session
	ctlSem    chan struct{}      // held while a call on ctl awaits its answer
	consumeMu sync.Mutex         // guards consumers
	consumers map[string]bool    // docket queues consumed
	loops     sync.WaitGroup     // the consumers' delivery loops

	ackMu sync.Mutex // guards acks and orders the ack frames
	acks  ackBook
}

// ack acknowledges the deliveries of cons with the given tags in as few
// frames as ackBook allows.
func (s *session) ack(tags []uint64) error {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	multiple, single := s.acks.plan(tags)
	if multiple > 0 {
		if err := s.cons.Ack(multiple, true); err != nil {
			return err
		}
	}
	for _, tag := range single {
		if err := s.cons.Ack(tag, false); err != nil {
			return err
		}
	}
	return nil
}

// ackBook keeps which deliveries of a channel are acknowledged, to
// acknowledge new ones in as few frames as possible. Delivery tags number
// a channel's deliveries 1, 2, 3…, so once every tag from the floor up is
// acknowledged or being acknowledged, one frame with the multiple flag
// covers them; tags above a gap (a delivery still running, or not even
// handed to a consumer yet) are acknowledged one by one. A task queue
// finishes tasks roughly in the order they arrive, so a batch of outcomes
// mostly takes one frame instead of one each, for the broker as much as
// for this process.
type ackBook struct {
	floor uint64              // every tag up to this one is acknowledged
	above map[uint64]struct{} // tags above floor acknowledged one by one
}

// plan records tags as acknowledged and returns the frames that do it:
// the tag to acknowledge with the multiple flag (0 for none) and the tags
// to acknowledge alone. Tags already acknowledged are ignored.
func (b *ackBook) plan(tags []uint64) (multiple uint64, single []uint64) {
	mine := make(map[uint64]struct{}, len(tags))
	for _, tag := range tags {
		if _, done := b.above[tag]; tag > b.floor && !done {
			mine[tag] = struct{}{}
		}
	}
	floor := b.floor
	for {
		if _, ok := mine[floor+1]; ok {
			// The multiple frame names one of ours: naming a tag
			// acknowledged before is an error to RabbitMQ.
			multiple = floor + 1
		} else if _, ok := b.above[floor+1]; ok {
			delete(b.above, floor+1) // below the floor from now on
		} else {
			break
		}
		floor++
	}
	for tag := range mine {
		if tag > floor {
			single = append(single, tag)
		}
	}
	slices.Sort(single)
	if b.above == nil {
		b.above = map[uint64]struct{}{}
	}
	for _, tag := range single {
		b.above[tag] = struct{}{}
	}
	b.floor = floor
	return multiple, single
}

// lockCtl takes the right to call synchronous methods on ctl, waiting
// until ctx ends or the session fails. A channel answers its synchronous
// methods in order, and amqp091 hands each answer to whichever caller
// waits for one: two calls in flight on one channel can receive each
// other's answers (the loser fails with 503 "unexpected command
// received"). Every declaration and consumer start on ctl holds this
// right, and checks again under it whether another caller already
// declared what it needs, so concurrent first uses declare once.
func (s *session) lockCtl(ctx context.Context) error {
	select {
	case s.ctlSem <- struct{}{}:
		return nil
	case <-s.dead:
		return fmt.Errorf("connection lost: %w", s.cause())
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// unlockCtl gives back the right taken by lockCtl.
func (s *session) unlockCtl() { <-s.ctlSem }

func (s *session) fail(err error) {
	s.once.Do(func() {
		s.errMu.Lock()
		s.err = err
		s.errMu.Unlock()
		close(s.dead)
	})
}

func (s *session) cause() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

func (s *session) alive() bool {
	select {
	case <-s.dead:
		return false
	default:
		return true
	}
}

// connect dials the broker, opens the channels, and declares this
// process's control queue, its reply queue when it has enqueued before,
// and the consumers of the queues it consumes.
func (t *Transport) connect(ctx context.Context) (*session, error) {
	cfg := amqp.Config{
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
		Properties: amqp.Table{
			"connection_name": "docket " + t.id,
		},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: t.opt.dialTimeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake must not outlive ctx either; amqp091 clears
			// the deadline once the connection is open.
			if dl, ok := ctx.Deadline(); ok {
				conn.SetDeadline(dl)
			} else {
				conn.SetDeadline(time.Now().Add(30 * time.Second))
			}
			return conn, nil
		},
	}
	conn, err := amqp.DialConfig(t.uri, cfg)
	if err != nil {
		return nil, t.wrap("connect", redactErr(err, t.uri))
	}
	s := &session{
		conn: conn, dead: make(chan struct{}), returned: map[string]bool{},
		barrier: make(chan chan struct{}), consumers: map[string]bool{},
		ctlSem: make(chan struct{}, 1),
	}
	if err := t.setup(ctx, s); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// redactErr removes the password of uri from err's text.
func redactErr(err error, uri string) error {
	u, perr := amqp.ParseURI(uri)
	if perr != nil || u.Password == "" || !strings.Contains(err.Error(), u.Password) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), u.Password, "xxxxx"))
}

func (t *Transport) setup(ctx context.Context, s *session) error {
	var err error
	watch := func(c chan *amqp.Error, what string) {
		go func() {
			e, ok := <-c
			if ok && e != nil {
				s.fail(fmt.Errorf("%s closed: %w", what, e))
			} else {
				s.fail(fmt.Errorf("%s closed", what))
			}
			for range c { // drain: amqp091 must never block on us
			}
		}()
	}
	watch(s.conn.NotifyClose(make(chan *amqp.Error, 1)), "connection")
	blocked := s.conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go func() {
		for b := range blocked {
			s.blockMu.Lock()
			if b.Active && s.blocked == nil {
				s.blocked = make(chan struct{})
				t.cfg.Logger.Warn("docket: amqp broker blocks publishers", "server", t.where, "reason", b.Reason)
			} else if !b.Active && s.blocked != nil {
				close(s.blocked)
				s.blocked = nil
			}
			s.blockMu.Unlock()
		}
	}()
	open := func(what string) (*amqp.Channel, error) {
		ch, err := s.conn.Channel()
		if err != nil {
			return nil, t.wrap("open channel", err)
		}
		watch(ch.NotifyClose(make(chan *amqp.Error, 1)), what+" channel")
		return ch, nil
	}
	if s.pub, err = open("publish"); err != nil {
		return err
	}
	if err := s.pub.Confirm(false); err != nil {
		return t.wrap("confirm mode", err)
	}
	returns := s.pub.NotifyReturn(make(chan amqp.Return))
	go s.collectReturns(returns)
	if s.cons, err = open("consume"); err != nil {
		return err
	}
	if s.ctl, err = open("control"); err != nil {
		return err
	}
	// Control: every process hears every cancel request.
	if err := s.lockCtl(ctx); err != nil {
		return t.wrap("declare", err)
	}
	err = t.declareControl(s)
	s.unlockCtl()
	if err != nil {
		return err
	}
	t.mu.Lock()
	replies, capacity := t.replies, t.capacity
	queues := make([]string, 0, len(t.queues))
	for q := range t.queues {
		queues = append(queues, q)
	}
	t.mu.Unlock()
	if replies {
		if err := t.consumeReplies(ctx, s); err != nil {
			return err
		}
	}
	if len(queues) > 0 {
		if err := s.cons.Qos(capacity, 0, false); err != nil {
			return t.wrap("set prefetch", err)
		}
		for _, q := range queues {
			if err := t.consume(ctx, s, q); err != nil {
				return err
			}
		}
	}
	return nil
}

// declareControl declares the control exchange and this process's control
// queue, and consumes it. The caller holds ctl's right (lockCtl).
func (t *Transport) declareControl(s *session) error {
	ctl := t.name("control")
	if err := s.ctl.ExchangeDeclare(ctl, "fanout", true, false, false, false, nil); err != nil {
		return t.wrap("declare "+ctl, err)
	}
	cq := t.name("control." + t.id)
	if _, err := s.ctl.QueueDeclare(cq, false, true, true, false, nil); err != nil {
		return t.wrap("declare "+cq, err)
	}
	if err := s.ctl.QueueBind(cq, "", ctl, false, nil); err != nil {
		return t.wrap("bind "+cq, err)
	}
	msgs, err := s.ctl.Consume(cq, "", true, true, false, false, nil)
	if err != nil {
		return t.wrap("consume "+cq, err)
	}
	go t.controlLoop(msgs)
	return nil
}

// collectReturns records messages the broker returned as unroutable. The
// broker sends a message's basic.return before its confirm, and amqp091
// hands it over before it reads the confirm, so once a publisher saw its
// confirm, a sync (one round through this goroutine) guarantees that a
// return of its message was recorded.
//
// It runs until amqp091 closes returns (when the channel closes), even after
// the session failed: a return left unread would block amqp091's reader,
// and with it the connection's Close.
func (s *session) collectReturns(returns chan amqp.Return) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				return
			}
			s.returnsMu.Lock()
			s.returned[r.MessageId] = true
			s.returnsMu.Unlock()
		case c := <-s.barrier:
			close(c)
		}
	}
}

// wasReturned returns (and forgets) the ids among ids that came back
// unroutable. Call it after their confirms arrived.
func (s *session) wasReturned(ids []string) []string {
	c := make(chan struct{})
	select {
	case s.barrier <- c:
		<-c
	case <-s.dead:
	}
	s.returnsMu.Lock()
	defer s.returnsMu.Unlock()
	var out []string
	for _, id := range ids {
		if s.returned[id] {
			delete(s.returned, id)
			out = append(out, id)
		}
	}
	return out
}

// waitUnblocked returns once the broker accepts publishes, or ctx ended.
func (s *session) waitUnblocked(ctx context.Context) error {
	s.blockMu.Lock()
	b := s.blocked
	s.blockMu.Unlock()
	if b == nil {
		return nil
	}
	select {
	case <-b:
		return nil
	case <-s.dead:
		return fmt.Errorf("connection lost while the broker blocked publishers: %w", s.cause())
	case <-ctx.Done():
		return fmt.Errorf("the broker blocks publishers (memory or disk alarm): %w", context.Cause(ctx))
	}
}
