// Package amqp is docket's RabbitMQ transport. Import it for its side
// effect:
//
//	import _ "github.com/docketq/docket/transport/amqp"
//
//	q, err := docket.Open(ctx, "amqp://user:password@host:5672/vhost")
//
// URLs are RabbitMQ URIs (amqp://, or amqps:// for TLS, which verifies the
// server's certificate against the system's roots; to trust a private CA,
// point SSL_CERT_FILE or SSL_CERT_DIR at it) plus docket parameters:
//
//	prefix=NAME          name prefix of every exchange and queue (default "docket")
//	queue_type=TYPE      quorum (default) or classic
//	delivery_limit=N     quorum queues: deliveries before the broker dead-letters a
//	                     message that keeps killing its worker (default 20)
//
// RabbitMQ's own URI parameters are passed to the client: heartbeat
// (seconds, default 10), connection_timeout (milliseconds to dial, default
// 10000), channel_max, auth_mechanism, and for amqps:// cacertfile,
// certfile, keyfile and server_name_indication. Any other parameter is
// refused with an error wrapping ErrInvalid that lists the known ones.
//
// # Delivery
//
// Each docket queue is a durable RabbitMQ queue named PREFIX.q.NAME, quorum
// by default, dead-lettering into PREFIX.dead. Enqueue publishes persistent
// messages with publisher confirms and the mandatory flag, and returns only
// after the broker confirmed every message of the call; concurrent calls
// share the channel's confirm stream, and a batch is published whole before
// its confirms are awaited. While the broker blocks publishers (a memory or
// disk alarm), Enqueue waits for the alarm to clear or its ctx to end.
//
// Queues and exchanges are declared when first needed, once per
// connection, one declaration at a time: a burst of first enqueues from
// many goroutines waits for one declaration instead of making its own.
//
// Workers consume with manual acknowledgements and a prefetch equal to
// their capacity (concurrency plus prefetch). A task is acknowledged only
// after its outcome was published (the result to the producer, or the
// retry's copy to the delay exchanges) or, for a producer on the same
// docket.Queue, recorded in its memory. A lease is the consumer's channel: if
// the worker's connection dies, RabbitMQ redelivers the task to another
// worker and the old worker's late outcome is refused (Lost). Attempts are
// counted across redeliveries from the quorum queue's x-delivery-count (a
// classic queue only says "redelivered", counted as one more attempt); a
// task delivered after its last attempt ends failed ("worker lost") and is
// dead-lettered with that reason in its headers.
//
// Outcomes are acknowledged in as few frames as possible: once every
// delivery up to a tag is settled, one acknowledgement with the multiple
// flag covers them all; deliveries above a gap (a task still running) are
// acknowledged one by one.
//
// # Enqueue errors
//
// An error wrapping ErrOutcomeUnknown means the messages were sent but
// their fate is unknown: the connection or a channel closed before the
// broker's confirm arrived, Enqueue's ctx ended while it waited for the
// confirm, or the broker took some messages of a batch and refused others.
// The tasks may or may not be queued. Every other Enqueue error means
// nothing was queued: no connection before ctx ended, the broker blocking
// publishers until ctx ended, a declaration that failed, or every message
// refused (a nack, ErrStorageFull, or a message the broker could not
// route).
//
// With RabbitMQ alone nothing checks task ids, so docket cannot make a
// retry safe: enqueueing the same id again (WithID) after ErrOutcomeUnknown
// publishes a second message, and if the first was queued the task runs
// twice. A batch of several tasks whose enqueue fails is also cancelled by
// id (broadcast), so that none of it runs unless a worker took a task
// first: retry it with new ids. Use a result store when retries must not
// run a task twice.
//
// With a result store a task exists once the store recorded it, which
// Enqueue does after the broker confirmed every message. A publish that
// failed, confirmed or not, is therefore a definite error: nothing was
// recorded, and a message that reached RabbitMQ finds no task and is
// dropped. An ErrOutcomeUnknown then comes only from the store (its reply
// was lost), and a retry with the same id finds the stored task: the store
// refuses the id with a *DuplicateError naming the task (or returns it,
// with Unique(…, ReturnExisting)), and the message the retry published is
// settled by the store like any duplicate delivery, so the task runs once.
//
// # Messages
//
// A task message has the task id as its message-id and a body of one line
// of docket's fields followed by the task's arguments, byte for byte:
//
//	docket/1 NAME REPLY_TO PRIORITY MAX_ATTEMPTS ATTEMPTS CREATED ETA EXPIRES TIMEOUT RESULT_TTL QUEUE [META]
//	{"to":"ada@example.com"}
//
// REPLY_TO is the producer's reply queue (- for none), times are Unix
// milliseconds and durations milliseconds (0 when unset), and META, when
// set, is JSON of the task's headers, retry backoff and IgnoreResult. The
// fields are in the body, not in headers or properties, because RabbitMQ
// decodes the header table and string properties of every message it
// routes: ten small headers cost RabbitMQ 3.10 about a third of its
// publish rate here, the name and reply queue as properties about a tenth,
// the same bytes in the body next to nothing. Only two headers remain, on
// the copies that need them: docket-last-error on a retry's copy and
// docket-dead-reason on a dead-lettered one. A message without the first
// line is not a docket task and is dead-lettered as undecodable.
//
// RabbitMQ closes a channel whose delivery stays unacknowledged longer than
// its consumer_timeout (30 minutes by default). docket treats that like a
// lost connection: the handler's ctx is cancelled as a lost lease, the task
// is redelivered as its next attempt. Raise consumer_timeout above the
// longest handler run.
//
// # Delays
//
// Countdowns, ETAs and retry backoffs are held by RabbitMQ, never by a
// worker: 32 delay queues PREFIX.delay.00 … PREFIX.delay.31, where level L
// holds a message for 2^L milliseconds and then dead-letters it to the
// next lower level that its delay needs, or to the target queue. The
// routing key spells the delay in binary, one word per level, followed by
// the target queue, so one publish routes a message through exactly the
// levels whose bits are set. The chain covers delays up to 2^32-1 ms
// (about 49.7 days); a longer ETA makes the chain's full trip and is sent
// around again by the worker that receives it early, until it is due.
//
// # Results and state
//
// With RabbitMQ alone, state travels back to the producer over RabbitMQ,
// like Celery's rpc result backend: every message names the producer's
// reply queue (PREFIX.reply.ID, deleted ten minutes after its producer is
// gone), and workers send it each task's retries, releases and final state
// with its result, one message per producer for each batch of outcomes
// (none to a producer on the worker's own docket.Queue, which records
// them directly). A task's start is not reported to a producer elsewhere:
// its Info says ready until the task retries or ends. Wait, Info and
// Cancel work for the tasks a process enqueued itself; it keeps their final states (not their arguments) in
// memory for an hour, or their ResultTTL if shorter. Unique keys, listing,
// lookups of other processes' tasks and periodic schedules need state
// shared by every process, which RabbitMQ does not keep: those calls return
// an error wrapping ErrUnsupported.
//
// With a result store (docket's ResultStore option or $DOCKET_RESULT_URL:
// a Redis URL, or a SQLite file on one host), RabbitMQ carries the tasks and
// the store keeps their state, with everything SQLite and Redis offer:
// results that outlive their producer, lookups from any process, unique
// keys, persisted cancellation, schedules that fire each slot once. Enqueue
// publishes, then records the task in the store; a worker leases each
// delivered task in the store by id, and the store's lease and fence decide
// which copy runs: a copy of a finished task is dropped, a copy of a task
// another worker holds waits in the delay levels until that lease lapses, a
// message whose task was never recorded is dropped after ten seconds.
//
// Cancel is broadcast on the PREFIX.control fanout exchange to every
// connected process: a running handler's ctx is cancelled wherever it runs,
// and a cancelled task that is delivered later is dropped. Workers remember
// cancellations for a day in memory; a worker that starts after a cancel
// was broadcast does not know of it.
//
// # Connections
//
// The connection sends heartbeats every 10 seconds. When it or any of its
// channels fails, docket reconnects with jittered exponential backoff,
// declares its topology again and resumes its consumers; calls made
// meanwhile wait for the connection until their ctx ends.
package amqp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

func init() {
	transport.Register("amqp", open)
	transport.Register("amqps", open)
}

// options are the docket parameters of the URL.
type options struct {
	prefix        string
	quorum        bool
	deliveryLimit int
	dialTimeout   time.Duration // connection_timeout
}

// Transport is the RabbitMQ implementation of transport.Transport.
type Transport struct {
	uri   string // the URI for amqp091, with its credentials
	where string // the redacted URL, for errors and String
	opt   options
	cfg   transport.Config
	id    string // this process's reply and control queue suffix

	replyName atomic.Pointer[string] // this process's reply queue (see consumeReplies)
	replyMove int                    // reply queues given up (under mu)

	mu        sync.Mutex
	sess      *session      // nil while disconnected
	ready     chan struct{} // closed when sess is set
	closed    bool
	done      chan struct{} // closed by Close
	bg        sync.WaitGroup
	listeners transport.Listeners

	// consumer side
	queues   map[string]bool // docket queues this process consumes
	capacity int             // the prefetch of each consumer
	buf      []*held         // delivered, not claimed yet
	inflight map[string]*held

	// the result store, when one is configured
	store   transport.Transport
	claimer transport.IDClaimer
	unsub   func()

	// producer side (RabbitMQ alone)
	replies bool // a reply queue is wanted (this process enqueued)
	known   map[string]*record
	revoked map[string]time.Time
}

var (
	_ transport.Transport  = (*Transport)(nil)
	_ transport.Subscriber = (*Transport)(nil)
)

func open(ctx context.Context, u *url.URL, cfg transport.Config) (transport.Transport, error) {
	where := transport.Redact(u)
	opt, clean, err := parseOptions(u)
	if err != nil {
		return nil, err
	}
	t := &Transport{
		uri: clean.String(), where: where, opt: opt, cfg: cfg, id: ulid.Make().String(),
		ready: make(chan struct{}), done: make(chan struct{}),
		queues: map[string]bool{}, inflight: map[string]*held{},
		known: map[string]*record{}, revoked: map[string]time.Time{},
	}
	reply := t.name("reply." + t.id)
	t.replyName.Store(&reply)
	if cfg.ResultURL != nil {
		if err := t.openStore(ctx, cfg); err != nil {
			return nil, err
		}
	}
	s, err := t.connect(ctx)
	if err != nil {
		if t.store != nil {
			t.unsub()
			t.store.Close()
		}
		return nil, err
	}
	t.install(s)
	t.bg.Add(1)
	go t.sweep()
	if t.store != nil {
		return &Stored{t}, nil
	}
	return t, nil
}

// openStore opens the result store named by cfg.ResultURL and forwards its
// notifications (finished tasks, cancel requests, other processes'
// writes); new work is announced by RabbitMQ, not by the store.
func (t *Transport) openStore(ctx context.Context, cfg transport.Config) error {
	scfg := cfg
	scfg.ResultURL = nil
	st, err := transport.Open(ctx, cfg.ResultURL, scfg)
	if err != nil {
		return fmt.Errorf("docket: amqp result store: %w", err)
	}
	c, ok := st.(transport.IDClaimer)
	if !ok {
		st.Close()
		return fmt.Errorf("docket: amqp result store %s cannot lease tasks by id", transport.Redact(cfg.ResultURL))
	}
	t.store, t.claimer, t.unsub = st, c, func() {}
	if sub, ok := st.(transport.Subscriber); ok {
		t.unsub = sub.Subscribe(func(e transport.Event) {
			if e.Kind != transport.EventReady {
				t.publishEvent(e)
			}
		})
	}
	return nil
}

// ResultStore implements transport.ResultStorer.
func (t *Transport) ResultStore() transport.Transport { return t.store }

// docketParams are the URL parameters docket reads itself; clientParams
// are RabbitMQ's URI query parameters, passed on to the client.
var (
	docketParams = []string{"prefix", "queue_type", "delivery_limit"}
	clientParams = []string{"heartbeat", "connection_timeout", "channel_max", "auth_mechanism", "cacertfile", "certfile", "keyfile", "server_name_indication"}
)

func parseOptions(u *url.URL) (options, *url.URL, error) {
	opt := options{prefix: "docket", quorum: true, deliveryLimit: 20, dialTimeout: 10 * time.Second}
	q := u.Query()
	for key := range q {
		if !slices.Contains(docketParams, key) && !slices.Contains(clientParams, key) {
			return opt, nil, fmt.Errorf("docket: unknown amqp URL parameter %q (known: %s, %s): %w",
				key, strings.Join(docketParams, ", "), strings.Join(clientParams, ", "), transport.ErrInvalid)
		}
	}
	if p := q.Get("prefix"); p != "" {
		opt.prefix = p
	}
	if !validPrefix(opt.prefix) {
		return opt, nil, fmt.Errorf("docket: amqp prefix %q: use letters, digits, '_' and '-': %w", opt.prefix, transport.ErrInvalid)
	}
	switch v := q.Get("queue_type"); v {
	case "", "quorum":
	case "classic":
		opt.quorum = false
	default:
		return opt, nil, fmt.Errorf("docket: amqp queue_type=%q: want quorum or classic: %w", v, transport.ErrInvalid)
	}
	if v := q.Get("delivery_limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return opt, nil, fmt.Errorf("docket: amqp delivery_limit=%q: want a number from 1 to 1000: %w", v, transport.ErrInvalid)
		}
		opt.deliveryLimit = n
	}
	if v := q.Get("connection_timeout"); v != "" {
		// RabbitMQ's URI parameter, in milliseconds; docket dials the
		// connection itself, so it applies it here.
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return opt, nil, fmt.Errorf("docket: amqp connection_timeout=%q: want milliseconds, at least 1: %w", v, transport.ErrInvalid)
		}
		opt.dialTimeout = time.Duration(n) * time.Millisecond
	}
	for _, k := range docketParams {
		q.Del(k)
	}
	clean := *u
	clean.RawQuery = q.Encode()
	// The client's own parameters are checked now rather than at each
	// connection attempt.
	if _, err := amqp.ParseURI(clean.String()); err != nil {
		return opt, nil, fmt.Errorf("docket: amqp URL %s: %v: %w", transport.Redact(u), redactErr(err, clean.String()), transport.ErrInvalid)
	}
	return opt, &clean, nil
}

func validPrefix(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// String returns the broker URL with the password redacted.
func (t *Transport) String() string { return "amqp transport " + t.where }

// Subscribe implements transport.Subscriber: deliveries, results and cancel
// requests arrive pushed by the broker.
func (t *Transport) Subscribe(fn func(transport.Event)) func() { return t.listeners.Add(fn, nil) }

func (t *Transport) publishEvent(e transport.Event) { t.listeners.Publish(e) }

// Close gives back the deliveries no worker took, and closes the
// connection.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.done)
	s := t.sess
	t.mu.Unlock()
	if s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t.giveBack(ctx, s)
		cancel()
		s.conn.Close()
	}
	t.bg.Wait()
	t.listeners.Stop()
	if t.store != nil {
		t.unsub()
		return t.store.Close()
	}
	return nil
}

// current returns the live session, or an error at once when there is
// none (for the worker's loops, which must not block).
func (t *Transport) current() (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return nil, transport.ErrClosed
	case t.sess == nil:
		return nil, fmt.Errorf("docket: amqp %s: reconnecting: %w", t.where, transport.ErrBusy)
	}
	return t.sess, nil
}

// session waits for a live session until ctx ends.
func (t *Transport) session(ctx context.Context) (*session, error) {
	for {
		t.mu.Lock()
		s, ready, closed := t.sess, t.ready, t.closed
		t.mu.Unlock()
		if closed {
			return nil, transport.ErrClosed
		}
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-t.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("docket: amqp %s: not connected: %w", t.where, context.Cause(ctx))
		}
	}
}

// install makes s the live session and watches it; when it fails, the
// deliveries it held are forgotten (RabbitMQ redelivers them) and a new
// session is dialled in the background.
func (t *Transport) install(s *session) {
	t.mu.Lock()
	t.sess = s
	close(t.ready)
	t.mu.Unlock()
	t.bg.Add(1)
	go func() {
		defer t.bg.Done()
		select {
		case <-s.dead:
		case <-t.done:
			return
		}
		t.mu.Lock()
		t.sess = nil
		t.ready = make(chan struct{})
		t.buf = t.buf[:0]
		var lost []string
		for id, h := range t.inflight {
			if h.s == s {
				// Alone, the channel was the lease: it is gone, and the
				// broker delivers the task again. With a store, the
				// store's lease lives on, and with it this entry.
				if t.store == nil {
					delete(t.inflight, id)
					lost = append(lost, id)
				}
			}
		}
		closed := t.closed
		t.mu.Unlock()
		if len(lost) > 0 {
			t.publishEvent(transport.Event{Kind: transport.EventLost, IDs: lost})
		}
		s.conn.Close()
		if closed {
			return
		}
		t.cfg.Logger.Warn("docket: amqp connection lost; reconnecting", "server", t.where, "err", s.cause(), "leases_lost", len(lost))
		t.reconnect()
	}()
}

// reconnect dials until it succeeds or the transport is closed, with
// jittered exponential backoff from 100 ms to 5 s.
func (t *Transport) reconnect() {
	for attempt := 0; ; attempt++ {
		backoff := min(5*time.Second, 100*time.Millisecond<<min(attempt, 6))
		select {
		case <-t.done:
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := t.connect(ctx)
		cancel()
		if err != nil {
			if attempt == 0 || attempt%20 == 0 {
				t.cfg.Logger.Warn("docket: amqp reconnect failed", "server", t.where, "err", err, "attempt", attempt+1)
			}
			continue
		}
		t.mu.Lock()
		closed := t.closed
		t.mu.Unlock()
		if closed {
			s.conn.Close()
			return
		}
		t.cfg.Logger.Info("docket: amqp reconnected", "server", t.where)
		t.install(s)
		// Waiters re-check what they wait for: replies sent while the
		// reply consumer was away are in the queue and arrive now, but a
		// Wait may have looked in between.
		t.publishEvent(transport.Event{Kind: transport.EventChanged})
		t.publishEvent(transport.Event{Kind: transport.EventReady})
		return
	}
}

// keepFinished bounds how long, with RabbitMQ alone, a producer remembers
// its finished tasks.
const keepFinished = time.Hour

// sweep forgets finished tasks after their result TTL (at most
// keepFinished) and cancellations after a day.
func (t *Transport) sweep() {
	defer t.bg.Done()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
		}
		now := t.cfg.Now()
		t.mu.Lock()
		for id, r := range t.known {
			if r.info.State.Terminal() && now.After(r.info.Finished.Add(min(r.info.ResultTTL, keepFinished))) {
				delete(t.known, id)
			}
		}
		for id, until := range t.revoked {
			if now.After(until) {
				delete(t.revoked, id)
			}
		}
		t.mu.Unlock()
	}
}

// wrap maps broker refusals to docket's typed errors and hides the
// credentials.
func (t *Transport) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.ResourceError:
			return fmt.Errorf("docket: amqp %s %s: %w: %s", op, t.where, transport.ErrStorageFull, ae.Reason)
		case amqp.AccessRefused, amqp.NotAllowed:
			return fmt.Errorf("docket: amqp %s %s: access refused: %s", op, t.where, ae.Reason)
		}
	}
	return fmt.Errorf("docket: amqp %s %s: %w", op, t.where, err)
}
