package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/backoff"
	"github.com/docketq/docket/transport"
)

// broker is the RabbitMQ core that both transports are built on: the
// connection and its reconnects, the topology, publishing with confirms,
// the consumers and the deliveries they hold, acknowledgements, and the
// cancel broadcast. It keeps no task state of its own beyond what a
// delivery carries and the cancel requests it heard; what differs between
// RabbitMQ alone and RabbitMQ with a result store is behind mode.
type broker struct {
	uri   string // the URI for amqp091, with its credentials (the first node's)
	where string // the redacted URL, for errors and String
	opt   options
	dial  amqp.Config // the client configuration every connection starts from
	log   *slog.Logger
	now   func() time.Time // for housekeeping only
	id    string           // this process's control (and reply) queue suffix
	mode  mode

	// node is the index in opt.uris of the node the next connection
	// attempt tries first; a failed attempt moves on to the next.
	node int

	mu        sync.Mutex
	sess      *session      // nil while disconnected
	ready     chan struct{} // closed when sess is set
	closed    bool
	done      chan struct{} // closed by Close
	bg        sync.WaitGroup
	listeners transport.Listeners

	// consumer side (under mu)
	queues   map[string]bool  // docket queues this process consumes
	capacity int              // the prefetch of each consumer
	buf      []*held          // delivered, not claimed yet
	inflight map[string]*held // claimed, outcome not acknowledged yet
	revoked  map[string]time.Time
}

// mode is what the broker core asks of the transport built on it, at the
// few points where RabbitMQ alone and RabbitMQ with a result store differ.
type mode interface {
	// sessionStarting prepares a new session before it carries work.
	sessionStarting(ctx context.Context, s *session) error
	// sessionLost runs, under mu, when s failed; it returns the ids of
	// the in-flight tasks whose leases ended with it.
	sessionLost(s *session) []string
	// cancelHeard runs, under mu, for each task whose cancel this process
	// heard.
	cancelHeard(id string)
}

// start connects, and starts the housekeeping that forgets old cancel
// requests. b.mode must be set.
func (b *broker) start(ctx context.Context) error {
	s, err := b.connect(ctx)
	if err != nil {
		return err
	}
	b.install(s)
	b.every(time.Minute, b.forgetRevoked)
	return nil
}

// every calls fn with the time every d until the transport is closed.
func (b *broker) every(d time.Duration, fn func(now time.Time)) {
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-b.done:
				return
			case <-tick.C:
			}
			fn(b.now())
		}
	}()
}

// String returns the broker URL with the password redacted.
func (b *broker) String() string { return "amqp transport " + b.where }

// Subscribe implements transport.Subscriber: deliveries, results and cancel
// requests arrive pushed by the broker.
func (b *broker) Subscribe(fn func(transport.Event)) func() { return b.listeners.Add(fn, nil) }

func (b *broker) publishEvent(e transport.Event) { b.listeners.Publish(e) }

// shutdown gives back the deliveries no worker took and closes the
// connection. It reports whether this call closed the transport (false
// when it was closed already).
func (b *broker) shutdown() bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	b.closed = true
	close(b.done)
	s := b.sess
	b.mu.Unlock()
	if s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b.giveBack(ctx, s)
		cancel()
		s.conn.Close()
	}
	b.bg.Wait()
	b.listeners.Stop()
	return true
}

// current returns the live session, or an error at once when there is
// none (for the worker's loops, which must not block).
func (b *broker) current() (*session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return nil, transport.ErrClosed
	case b.sess == nil:
		return nil, fmt.Errorf("docket: amqp %s: reconnecting: %w", b.where, transport.ErrBusy)
	}
	return b.sess, nil
}

// session waits for a live session until ctx ends.
func (b *broker) session(ctx context.Context) (*session, error) {
	for {
		b.mu.Lock()
		s, ready, closed := b.sess, b.ready, b.closed
		b.mu.Unlock()
		if closed {
			return nil, transport.ErrClosed
		}
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-b.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("docket: amqp %s: not connected: %w", b.where, context.Cause(ctx))
		}
	}
}

// install makes s the live session and watches it; when it fails, the
// deliveries it held are forgotten (RabbitMQ redelivers them) and a new
// session is dialled in the background.
func (b *broker) install(s *session) {
	b.mu.Lock()
	b.sess = s
	close(b.ready)
	b.mu.Unlock()
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		select {
		case <-s.dead:
		case <-b.done:
			return
		}
		b.mu.Lock()
		b.sess = nil
		b.ready = make(chan struct{})
		b.buf = b.buf[:0]
		lost := b.mode.sessionLost(s)
		closed := b.closed
		b.mu.Unlock()
		if len(lost) > 0 {
			b.publishEvent(transport.Event{Kind: transport.EventLost, IDs: lost})
		}
		// A session failed on purpose may still have its channel: the
		// acknowledgements it held back go out if they can.
		_ = s.flushHeldAcks()
		s.conn.Close()
		if closed {
			return
		}
		b.log.Warn("docket: amqp connection lost; reconnecting", "server", b.where, "err", s.cause(), "leases_lost", len(lost))
		b.reconnect()
	}()
}

// reconnectBackoff spaces reconnection attempts.
var reconnectBackoff = backoff.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// reconnect dials until it succeeds or the transport is closed, with
// jittered exponential backoff from 100 ms to 5 s.
func (b *broker) reconnect() {
	for attempt := 0; ; attempt++ {
		select {
		case <-b.done:
			return
		case <-time.After(reconnectBackoff.Delay(attempt)):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := b.connect(ctx)
		cancel()
		if err != nil {
			if attempt == 0 || attempt%20 == 0 {
				b.log.Warn("docket: amqp reconnect failed", "server", b.where, "err", err, "attempt", attempt+1)
			}
			continue
		}
		b.mu.Lock()
		closed := b.closed
		b.mu.Unlock()
		if closed {
			s.conn.Close()
			return
		}
		b.log.Info("docket: amqp reconnected", "server", b.where)
		b.install(s)
		// Waiters re-check what they wait for: replies sent while the
		// reply consumer was away are in the queue and arrive now, but a
		// Wait may have looked in between.
		b.publishEvent(transport.Event{Kind: transport.EventChanged})
		b.publishEvent(transport.Event{Kind: transport.EventReady})
		return
	}
}

// wrap maps broker refusals to docket's typed errors and hides the
// credentials.
func (b *broker) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.ResourceError:
			return fmt.Errorf("docket: amqp %s %s: %w: %s", op, b.where, transport.ErrStorageFull, ae.Reason)
		case amqp.AccessRefused, amqp.NotAllowed:
			return fmt.Errorf("docket: amqp %s %s: access refused: %s", op, b.where, ae.Reason)
		}
	}
	return fmt.Errorf("docket: amqp %s %s: %w", op, b.where, err)
}

// Ping implements transport.Pinger: a passive declaration of the
// broker's amq.direct exchange on the live connection, or an error when
// there is none before ctx ends.
func (b *broker) Ping(ctx context.Context) error {
	s, err := b.session(ctx)
	if err != nil {
		return err
	}
	if err := s.lockCtl(ctx); err != nil {
		return b.wrap("ping", err)
	}
	defer s.unlockCtl()
	return b.wrap("ping", s.ctl.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil))
}
