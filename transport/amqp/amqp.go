// Package amqp is docket's RabbitMQ transport. Import it for its side
// effect:
//
//	import _ "github.com/docketq/docket/transport/amqp"
//
//	q, err := docket.Open(ctx, "amqp://user:password@host:5672/vhost")
//
// or build one with New from connection settings a program already has
// (TLS, SASL, client properties, a result store it opened itself) and hand
// it to docket.New:
//
//	t, err := amqp.New(ctx, amqp.Config{URL: url, AMQP: amqp091.Config{TLSClientConfig: tlsCfg}})
//
// URLs are RabbitMQ URIs (amqp://, or amqps:// for TLS, which verifies the
// server's certificate against the system's roots; to trust a private CA,
// point SSL_CERT_FILE or SSL_CERT_DIR at it) plus docket parameters:
//
//	prefix=NAME          name prefix of every exchange and queue (default "docket")
//	queue_type=TYPE      quorum (default) or classic
//	delivery_limit=N     quorum queues: deliveries before the broker dead-letters a
//	                     message that keeps killing its worker (default 20)
//	quorum_size=N        quorum queues: the number of nodes each queue is
//	                     replicated on when it is declared (default: every node
//	                     of the cluster; 3 or 5 suit a larger one)
//	addr=HOST:PORT       another node of the cluster, with the URL's credentials,
//	                     vhost and parameters; repeat for each. Each connection
//	                     attempt tries the nodes in turn, the node of the session
//	                     that just failed last
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
// flag covers them all. While a worker consumes, a delivery settled above
// a gap (a task still running) is held back for up to 5 ms (at most half
// the prefetch), since the gap usually closes by then and the
// multiple frame covers it too; if it does not, the gap is a long task,
// and deliveries above it are acknowledged alone until it ends. A worker
// that stops consuming sends what it held back and holds nothing more. A
// channel lost in those 5 ms has RabbitMQ deliver the held tasks again: on
// RabbitMQ alone, where the producer already has the outcome, such a task
// runs again after it completed (as when the connection breaks between a
// result and its acknowledgement); with a result store the store drops the
// copy.
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
// refused (a nack, ErrBusy: a quorum queue electing a leader, say; or a
// message the broker could not route).
//
// With RabbitMQ alone nothing checks task ids, so docket cannot make a
// retry safe: enqueueing the same id again (TaskID) after ErrOutcomeUnknown
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
// with its result, one message per producer for each batch of outcomes (a
// busy worker's batches hold tens of outcomes; none is sent to a producer
// on the worker's own docket.Queue, which records them directly). A task
// that ignores its result (IgnoreResult) names no reply queue and is
// reported to nobody. A task's start is not reported to a producer
// elsewhere: its Info says ready until the task retries or ends.
//
// Wait, Info and Cancel work for the tasks a process enqueued itself, as
// long as it keeps them in memory: a task is kept while a handle on its
// result (the *Result that Enqueue or ResultOf returned) is reachable in
// the process, as Celery keeps a pending AsyncResult, and otherwise only
// among the last 10,000 tasks the process enqueued; a final state is
// dropped after an hour, or its ResultTTL if shorter. So a web process
// that enqueues and drops the handles uses the same memory after a million
// tasks as after ten thousand, and a program that keeps the handles it
// will Wait on gets every result. For an id it no longer keeps (a handle
// dropped long ago, a task that ignores its result, another process's
// task), Info and Wait answer ErrNotFound at once.
//
// Unique keys, listing, retention, lookups of other processes'
// tasks and periodic schedules need state shared by every process, which
// RabbitMQ does not keep: the transport does not offer them, and docket
// answers those calls with an error wrapping ErrUnsupported.
//
// With a result store (docket's ResultStore option with a Redis URL, or a
// SQLite file on one host; or Config.ResultStore), RabbitMQ carries the
// tasks and the store keeps their state. The store must lease tasks by id,
// list, prune, keep schedules and workflows (transport.IDClaimer, Lister,
// Pruner, ScheduleStore, Workflows and FlowOutbox); one that cannot is
// refused with an error wrapping ErrUnsupported. The transport then offers
// everything the store does: results that outlive their producer, lookups
// from any process, unique keys, persisted cancellation, schedules that
// fire each slot once, workflows (the store joins; the steps it makes ready
// reach RabbitMQ through its outbox, which every process relays). Enqueue
// publishes, then records the task in the store; a worker leases each
// delivered task in the store by id, and the store's lease and fence decide
// which copy runs: a copy of a finished task is dropped, a copy of a task
// another worker holds waits in the delay levels until that lease lapses, a
// message whose task is still not recorded a minute after its creation is
// given up: the worker records the id as expired before dropping it, so a
// producer that records it later is told nothing was enqueued.
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
// channels fails, docket reconnects with jittered exponential backoff (100
// ms doubling to 5 s), declares its topology again and resumes its
// consumers; calls made meanwhile wait for the connection until their ctx
// ends. What a lost connection costs depends on the mode: with RabbitMQ
// alone the consumer's channel is the lease, so the tasks running on it
// are reported lost and delivered again; with a result store the store's
// leases outlive the connection, so handlers keep running and record their
// outcomes, and the copies RabbitMQ delivers again are settled by the
// store.
package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

func init() {
	transport.Register("amqp", open)
	transport.Register("amqps", open)
}

// Config configures a transport built by New.
type Config struct {
	// URL is the broker's amqp:// or amqps:// URL, with docket's and
	// RabbitMQ's parameters (see the package documentation). Required.
	URL string
	// AMQP is the client's connection configuration: TLS, SASL, vhost,
	// heartbeat, channel and frame limits, client properties. As with
	// amqp091.DialConfig, a field that is set wins over the URL (SASL over
	// its credentials, TLSClientConfig over its cacertfile, certfile and
	// keyfile), except the heartbeat, where the URL's parameter wins; zero
	// fields take the URL's values or docket's defaults (a 10 s heartbeat,
	// a connection_name naming docket among the properties). Dial, when
	// set, replaces docket's dialer, which bounds the dial by the URL's
	// connection_timeout and the ctx of the call that connects. Recovery
	// must be nil: docket reconnects itself. The transport copies what
	// amqp091 would modify (TLSClientConfig, Properties), so the values
	// given are left as they are.
	AMQP amqp.Config
	// ResultStore, when set, keeps task state while RabbitMQ carries the
	// tasks; nil means RabbitMQ alone. It must implement
	// transport.IDClaimer, Lister, Pruner and ScheduleStore (docket's
	// SQLite and Redis transports do), or New fails with an error wrapping
	// transport.ErrUnsupported. The transport does not close it: close it
	// after the transport.
	ResultStore transport.Transport
	// Logger receives the transport's diagnostics; nil discards them, as
	// docket's Logger option does by default.
	Logger *slog.Logger
	// Now is the clock of the transport's housekeeping (forgetting old
	// cancel requests and finished tasks); nil means time.Now.
	Now func() time.Time
}

// New connects to RabbitMQ and returns the transport c describes: with a
// result store when c.ResultStore is set, RabbitMQ alone otherwise. It
// waits for the first connection until ctx ends; later connection losses
// are repaired in the background. Closing the transport closes its
// connection, not c.ResultStore.
func New(ctx context.Context, c Config) (transport.Transport, error) {
	if c.URL == "" {
		return nil, fmt.Errorf("docket: amqp: Config.URL is empty: %w", transport.ErrInvalid)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a password
		}
		return nil, fmt.Errorf("docket: amqp URL: %v: %w", err, transport.ErrInvalid)
	}
	return build(ctx, u, c, false)
}

// open is the OpenFunc of the amqp and amqps schemes. A result store named
// by cfg.ResultURL is opened here, and closed with the transport.
func open(ctx context.Context, u *url.URL, cfg transport.Config) (transport.Transport, error) {
	c := Config{Logger: cfg.Logger, Now: cfg.Now}
	if cfg.ResultURL == nil {
		return build(ctx, u, c, false)
	}
	// A bad broker URL is refused before the store is opened.
	if _, _, err := parseOptions(u); err != nil {
		return nil, err
	}
	scfg := cfg
	scfg.ResultURL = nil
	st, err := transport.Open(ctx, cfg.ResultURL, scfg)
	if err != nil {
		return nil, fmt.Errorf("docket: amqp result store: %w", err)
	}
	c.ResultStore = st
	t, err := build(ctx, u, c, true)
	if err != nil {
		st.Close()
		return nil, err
	}
	return t, nil
}

// build connects and returns the transport of c's mode. It is the one
// place that tells the modes apart. ownStore says whether Close closes
// c.ResultStore.
func build(ctx context.Context, u *url.URL, c Config, ownStore bool) (transport.Transport, error) {
	b, err := newBroker(u, c)
	if err != nil {
		return nil, err
	}
	if c.ResultStore == nil {
		a := newAlone(b)
		if err := a.start(ctx); err != nil {
			return nil, err
		}
		return a, nil
	}
	st, err := newStored(b, c.ResultStore, ownStore)
	if err != nil {
		return nil, err
	}
	if err := st.start(ctx); err != nil {
		return nil, err
	}
	if cc, ok := c.ResultStore.(transport.ChangeCounter); ok {
		return &storedCounted{stored: st, counter: cc}, nil
	}
	return st, nil
}

// newBroker returns the core for u, not connected yet.
func newBroker(u *url.URL, c Config) (*broker, error) {
	opt, clean, err := parseOptions(u)
	if err != nil {
		return nil, err
	}
	if c.AMQP.Recovery != nil {
		return nil, fmt.Errorf("docket: amqp: Config.AMQP.Recovery must be nil: docket reconnects itself: %w", transport.ErrInvalid)
	}
	b := &broker{
		uri: clean.String(), where: transport.Redact(u), opt: opt, dial: c.AMQP,
		log: c.Logger, now: c.Now, id: ulid.Make().String(),
		ready: make(chan struct{}), done: make(chan struct{}),
		queues: map[string]bool{}, inflight: map[string]*held{}, revoked: map[string]time.Time{},
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b, nil
}

// requiredOfStore lists what a result store must implement, and names it.
var requiredOfStore = []struct {
	name string
	has  func(transport.Transport) bool
}{
	{"transport.IDClaimer (lease tasks by id)", func(t transport.Transport) bool { _, ok := t.(transport.IDClaimer); return ok }},
	{"transport.Lister (list tasks)", func(t transport.Transport) bool { _, ok := t.(transport.Lister); return ok }},
	{"transport.Pruner (delete expired results)", func(t transport.Transport) bool { _, ok := t.(transport.Pruner); return ok }},
	{"transport.ScheduleStore (periodic schedules)", func(t transport.Transport) bool { _, ok := t.(transport.ScheduleStore); return ok }},
	{"transport.Admin (the operations API)", func(t transport.Transport) bool { _, ok := t.(transport.Admin); return ok }},
	{"transport.ScheduleAdmin (pause and trigger schedules)", func(t transport.Transport) bool { _, ok := t.(transport.ScheduleAdmin); return ok }},
	{"transport.Workflows (workflows)", func(t transport.Transport) bool { _, ok := t.(transport.Workflows); return ok }},
	{"transport.FlowOutbox (workflow steps carried by RabbitMQ)", func(t transport.Transport) bool { _, ok := t.(transport.FlowOutbox); return ok }},
}

// checkStore returns an error wrapping transport.ErrUnsupported that names
// what st lacks of requiredOfStore, or nil.
func checkStore(st transport.Transport) error {
	var missing []string
	for _, r := range requiredOfStore {
		if !r.has(st) {
			missing = append(missing, r.name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	name := fmt.Sprintf("%T", st)
	if sn, ok := st.(fmt.Stringer); ok {
		name = sn.String()
	}
	return fmt.Errorf("docket: amqp result store %s: %w: it does not implement %s", name, transport.ErrUnsupported, strings.Join(missing, ", "))
}
