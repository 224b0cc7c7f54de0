package amqp

import (
	"context"
	"errors"
	"fmt"
	"net"
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

	ackMu    sync.Mutex // guards acks and ackTimer, and orders the ack frames
	acks     ackBook
	ackTimer *time.Timer // sends the acknowledgements acks holds back
	holdMax  int         // how many acknowledgements acks may hold back (see holdLimit)
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
// process's control queue, what its mode needs (see mode.sessionStarting),
// and the consumers of the queues it consumes.
func (b *broker) connect(ctx context.Context) (*session, error) {
	// A cluster's nodes in turn, from the one after the node of the last
	// attempt: the node of a session that just failed is tried last.
	var errs []error
	for left := len(b.opt.uris); left > 0; left-- {
		b.mu.Lock()
		i := b.node % len(b.opt.uris)
		b.node = i + 1
		b.mu.Unlock()
		// Each node gets its share of the time left, so that one that
		// accepts the connection and never answers leaves time for the
		// others (half a minute each when the caller set no deadline).
		actx, cancel := ctx, context.CancelFunc(func() {})
		if left > 1 {
			share := 30 * time.Second
			if dl, ok := ctx.Deadline(); ok {
				share = time.Until(dl) / time.Duration(left)
			}
			actx, cancel = context.WithTimeout(ctx, share)
		}
		s, err := b.connectTo(actx, b.opt.uris[i])
		cancel()
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// connectTo connects to the node at uri and sets the session up.
func (b *broker) connectTo(ctx context.Context, uri string) (*session, error) {
	conn, err := amqp.DialConfig(uri, b.clientConfig(ctx))
	if err != nil {
		return nil, b.wrap("connect", redactErr(err, uri))
	}
	s := &session{
		conn: conn, dead: make(chan struct{}), returned: map[string]bool{},
		barrier: make(chan chan struct{}), consumers: map[string]bool{},
		ctlSem: make(chan struct{}, 1),
	}
	// amqp091's channel calls take no context, and a broker that accepted
	// the connection may not answer one (a node still recovering its
	// queues). Closing the connection when ctx ends is what returns them,
	// so an attempt never outlives its ctx.
	expired := context.AfterFunc(ctx, func() { conn.Close() })
	err = b.setup(ctx, s)
	if !expired() {
		return nil, b.wrap("connect", fmt.Errorf("setting up the connection: %w", context.Cause(ctx)))
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// clientConfig returns the client configuration of one connection
// attempt: the configured one with docket's defaults, and a dialer bounded
// by ctx and connection_timeout. What amqp091 modifies (the TLS
// configuration, the properties) is copied first.
func (b *broker) clientConfig(ctx context.Context) amqp.Config {
	cfg := b.dial
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.Locale == "" {
		cfg.Locale = "en_US"
	}
	props := amqp.Table{}
	for k, v := range b.dial.Properties {
		props[k] = v
	}
	if _, ok := props["connection_name"]; !ok {
		props["connection_name"] = "docket " + b.id
	}
	cfg.Properties = props
	if cfg.TLSClientConfig != nil {
		cfg.TLSClientConfig = cfg.TLSClientConfig.Clone()
	}
	dial := cfg.Dial
	if dial == nil {
		dial = func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: b.opt.dialTimeout}
			return d.DialContext(ctx, network, addr)
		}
	}
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		conn, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		// The handshake must not outlive ctx either; amqp091 clears the
		// deadline once the connection is open.
		if dl, ok := ctx.Deadline(); ok {
			conn.SetDeadline(dl)
		} else {
			conn.SetDeadline(time.Now().Add(30 * time.Second))
		}
		return conn, nil
	}
	return cfg
}

// setup watches s, opens its channels, declares the control queue, lets
// the mode prepare s, and resumes this process's consumers.
func (b *broker) setup(ctx context.Context, s *session) error {
	b.watch(s)
	if err := b.openChannels(s); err != nil {
		return err
	}
	// Control: every process hears every cancel request.
	if err := s.lockCtl(ctx); err != nil {
		return b.wrap("declare", err)
	}
	err := b.declareControl(s)
	s.unlockCtl()
	if err != nil {
		return err
	}
	if err := b.mode.sessionStarting(ctx, s); err != nil {
		return err
	}
	return b.resumeConsumers(ctx, s)
}

// watchClosed fails s when c reports that what it watches closed.
func (s *session) watchClosed(c chan *amqp.Error, what string) {
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

// watch fails s when its connection closes, and follows the broker's
// blocking of publishers (see waitUnblocked).
func (b *broker) watch(s *session) {
	s.watchClosed(s.conn.NotifyClose(make(chan *amqp.Error, 1)), "connection")
	blocked := s.conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go func() {
		for bl := range blocked {
			s.blockMu.Lock()
			if bl.Active && s.blocked == nil {
				s.blocked = make(chan struct{})
				b.log.Warn("docket: amqp broker blocks publishers", "server", b.where, "reason", bl.Reason)
			} else if !bl.Active && s.blocked != nil {
				close(s.blocked)
				s.blocked = nil
			}
			s.blockMu.Unlock()
		}
	}()
}

// openChannels opens s's channels, each watched, and puts the publishing
// one in confirm mode.
func (b *broker) openChannels(s *session) error {
	open := func(what string) (*amqp.Channel, error) {
		ch, err := s.conn.Channel()
		if err != nil {
			return nil, b.wrap("open channel", err)
		}
		s.watchClosed(ch.NotifyClose(make(chan *amqp.Error, 1)), what+" channel")
		return ch, nil
	}
	var err error
	if s.pub, err = open("publish"); err != nil {
		return err
	}
	if err := s.pub.Confirm(false); err != nil {
		return b.wrap("confirm mode", err)
	}
	returns := s.pub.NotifyReturn(make(chan amqp.Return))
	go s.collectReturns(returns)
	if s.cons, err = open("consume"); err != nil {
		return err
	}
	if s.ctl, err = open("control"); err != nil {
		return err
	}
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
