// Package celery lets docket share queues with Celery: a docket worker runs
// the tasks a Python producer sends with Celery's protocol 2, and a docket
// producer sends tasks that Celery's workers run, each side reading the
// other's results. It registers the scheme celery+redis:// (and
// celery+rediss://):
//
//	import _ "github.com/docketq/docket/transport/celery"
//
//	q, err := docket.Open(ctx, "celery+redis://127.0.0.1:6379/0")
//
// The queues of such a Queue are Celery's: kombu's Redis lists (a task
// named by OnQueue("celery") is LPUSHed on the list "celery", in kombu's
// envelope), fetched the way kombu fetches them (kept in the unacked hash
// until the result is written, restored after the visibility timeout), and
// results are Celery's Redis backend's records (celery-task-meta-<id>, set
// and published). A docket Queue is either Celery-format or docket-format;
// a program that needs both opens two Queues.
//
// URL parameters, beside go-redis's own:
//
//	backend=redis://host/1      Celery's result backend (default: the broker's URL)
//	result_expires=24h          how long a result is kept (Celery's result_expires)
//	visibility_timeout=1h       how long a fetched task stays unacknowledged
//	                            before any worker, Celery's or docket's,
//	                            gives it to another (kombu's default)
//	max_retries=3               attempts a Celery task may be retried (Celery's
//	                            Task.max_retries); the retries header counts them
//	track_started=true          write STARTED when a task starts (Celery's
//	                            task_track_started)
//	default_queue=celery        where a link or a chain's next step that names
//	                            no queue is sent (Celery's task_default_queue)
//
// How arguments map: a task's Celery args become its docket argument as a
// JSON array (a tuple, a slice or docket.Args), its kwargs a JSON object (a
// struct); a call with both is refused. A docket producer's argument is sent
// the other way: an array as args, an object as kwargs, another value as the
// only positional argument.
//
// What is not done: workflows (use Celery's canvas; chains and links that
// Celery sends are followed, chords are refused), unique keys, cancel of a
// task (Celery's revoke is a broadcast to its workers), and listings.
package celery

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
	goredis "github.com/redis/go-redis/v9"
)

func init() {
	for _, scheme := range []string{"celery+redis", "celery+rediss", "celery+amqp", "celery+amqps"} {
		transport.Register(scheme, open)
	}
}

// Options configure a Transport.
type Options struct {
	// ResultExpires is how long a result record is kept (default 24h, as
	// Celery's result_expires).
	ResultExpires time.Duration
	// VisibilityTimeout is how long a fetched task stays unacknowledged
	// before it is given to another worker (default 1h, as kombu's). It
	// must exceed the longest countdown and run time, as with Celery.
	VisibilityTimeout time.Duration
	// MaxRetries is how many times a task may be retried (default 3, as
	// Celery's Task.max_retries); a negative value means none.
	MaxRetries int
	// TrackStarted writes a STARTED record when a task starts.
	TrackStarted bool
	// DefaultQueue is where a follow-up (a link, a chain's next step)
	// that names no queue is sent: Celery's task_default_queue (default
	// "celery"). Celery's own worker routes such a task with the app's
	// routes, which docket does not know.
	DefaultQueue string
	// Logger receives what is refused (default: discard).
	Logger *slog.Logger
}

func (o Options) normalize() (Options, error) {
	if o.ResultExpires == 0 {
		o.ResultExpires = 24 * time.Hour
	}
	if o.VisibilityTimeout == 0 {
		o.VisibilityTimeout = time.Hour
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 3
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.ResultExpires < time.Second || o.VisibilityTimeout < time.Second {
		return o, fmt.Errorf("docket: celery result_expires (%s) and visibility_timeout (%s) must be at least a second: %w", o.ResultExpires, o.VisibilityTimeout, transport.ErrInvalid)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DefaultQueue == "" {
		o.DefaultQueue = "celery"
	}
	return o, nil
}

// Transport speaks Celery's protocol on kombu's Redis layout or on
// RabbitMQ. It is safe for concurrent use.
type Transport struct {
	b      broker
	res    results
	atomic bool // the result backend is the Redis broker: records go in the acknowledgement's step
	opts   Options
	where  string
	ev     *hook

	mu        sync.Mutex
	running   map[string]*fetched           // by task id: delivered to a worker
	held      []*fetched                    // fetched, not delivered yet: a future ETA, or an excluded name
	refreshed time.Time                     // the last refresh of the held messages
	settled   map[transport.Lease]time.Time // leases finished in the last ten minutes
	pruned    time.Time                     // the last pruning of settled
	closed    bool
}

// New returns a Transport on a Redis broker, writing results to backend
// (the broker when nil), as Celery's Redis transport and result backend
// do. The caller keeps ownership of the clients.
func New(broker, backend goredis.UniversalClient, opts Options) (*Transport, error) {
	if broker == nil {
		return nil, fmt.Errorf("docket: celery: the broker client is nil: %w", transport.ErrInvalid)
	}
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	if backend == nil {
		backend = broker
	}
	b := &redisBroker{client: broker, vt: o.VisibilityTimeout, expires: o.ResultExpires, log: o.Logger}
	ev := &hook{}
	return newTransport(b, &redisResults{client: backend, expires: o.ResultExpires, ev: ev}, backend == broker, o, "redis", ev), nil
}

func newTransport(b broker, res results, atomic bool, o Options, where string, ev *hook) *Transport {
	return &Transport{b: b, res: res, atomic: atomic, opts: o, where: where, ev: ev,
		running: map[string]*fetched{}, settled: map[transport.Lease]time.Time{}}
}

// hook holds the Queue's callback for the events the broker and the
// result backend report (transport.Subscriber).
type hook struct {
	mu sync.Mutex
	fn func(transport.Event)
}

func (h *hook) set(fn func(transport.Event)) {
	h.mu.Lock()
	h.fn = fn
	h.mu.Unlock()
}

func (h *hook) emit(e transport.Event) {
	h.mu.Lock()
	fn := h.fn
	h.mu.Unlock()
	if fn != nil {
		fn(e)
	}
}

// Subscribe reports what reaches this process unasked: on RabbitMQ,
// deliveries (EventReady), rpc replies (EventFinished) and the loss of
// the connection that held running tasks (EventLost); on Celery's Redis
// backend, the records of the tasks being watched (EventFinished).
func (t *Transport) Subscribe(fn func(transport.Event)) (unsubscribe func()) {
	t.ev.set(fn)
	return func() { t.ev.set(nil) }
}

// Watch listens for the result records of task id until stop is called,
// reporting them as EventFinished (transport.Watcher). Celery's Redis
// backend publishes each record on a channel of the task's own, and
// docket subscribes to it as Celery's own client does; the rpc backend's
// replies come unasked.
func (t *Transport) Watch(ctx context.Context, id string) (stop func()) {
	if r, ok := t.res.(*redisResults); ok {
		return r.watch(ctx, id)
	}
	return func() {}
}

func open(ctx context.Context, u *url.URL, cfg transport.Config) (transport.Transport, error) {
	where := transport.Redact(u)
	q := u.Query()
	var opts Options
	opts.Logger = cfg.Logger
	for name, dst := range map[string]*time.Duration{"result_expires": &opts.ResultExpires, "visibility_timeout": &opts.VisibilityTimeout} {
		if v := q.Get(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				if n, nerr := strconv.Atoi(v); nerr == nil { // Celery's settings are seconds
					d, err = time.Duration(n)*time.Second, nil
				}
			}
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("docket: celery URL %s: %s=%q: want a duration such as 1h or seconds: %w", where, name, v, transport.ErrInvalid)
			}
			*dst = d
		}
		q.Del(name)
	}
	if v := q.Get("max_retries"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("docket: celery URL %s: max_retries=%q: want a number of retries: %w", where, v, transport.ErrInvalid)
		}
		opts.MaxRetries = n
		if n == 0 {
			opts.MaxRetries = -1
		}
	}
	q.Del("max_retries")
	if v := q.Get("track_started"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("docket: celery URL %s: track_started=%q: want true or false: %w", where, v, transport.ErrInvalid)
		}
		opts.TrackStarted = b
	}
	q.Del("track_started")
	opts.DefaultQueue = q.Get("default_queue")
	q.Del("default_queue")
	backendURL := q.Get("backend")
	q.Del("backend")
	opts, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	plain := *u
	plain.Scheme = strings.TrimPrefix(strings.ToLower(u.Scheme), "celery+")
	plain.RawQuery = q.Encode()
	if plain.Scheme == "amqp" || plain.Scheme == "amqps" {
		return openAMQP(ctx, plain.String(), backendURL, opts, where)
	}
	rb, err := client(plain.String(), where)
	if err != nil {
		return nil, err
	}
	b := &redisBroker{client: rb, owned: true, vt: opts.VisibilityTimeout, expires: opts.ResultExpires, log: opts.Logger}
	ev := &hook{}
	res, err := redisBackend(backendURL, rb, opts, ev)
	if err != nil {
		b.close()
		return nil, err
	}
	t := newTransport(b, res, res.client == rb, opts, where, ev)
	if err := t.Ping(ctx); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// redisBackend returns Celery's Redis result backend at raw, or on
// dflt when raw is empty.
func redisBackend(raw string, dflt goredis.UniversalClient, opts Options, ev *hook) (*redisResults, error) {
	if raw == "" {
		return &redisResults{client: dflt, expires: opts.ResultExpires, ev: ev}, nil
	}
	c, err := client(raw, "result backend")
	if err != nil {
		return nil, err
	}
	return &redisResults{client: c, expires: opts.ResultExpires, owned: true, ev: ev}, nil
}

func client(raw, where string) (goredis.UniversalClient, error) {
	o, err := goredis.ParseURL(raw)
	if err != nil {
		u, _ := url.Parse(raw)
		return nil, fmt.Errorf("docket: celery %s: %s: %w", where, strings.ReplaceAll(err.Error(), raw, transport.Redact(u)), transport.ErrInvalid)
	}
	o.DisableIdentity = true
	return goredis.NewClient(o), nil
}

// String names the transport and its broker, without a password.
func (t *Transport) String() string { return "celery transport " + t.where }

// Ping makes a round trip to the broker.
func (t *Transport) Ping(ctx context.Context) error {
	if err := t.b.ping(ctx); err != nil {
		return fmt.Errorf("docket: celery broker %s: %w", t.where, err)
	}
	return nil
}

// Close gives back the messages fetched and not delivered (on Redis to
// the head of their lists, as kombu does at shutdown; on RabbitMQ by
// closing the channel) and closes what the transport opened.
func (t *Transport) Close() error {
	t.mu.Lock()
	held := t.held
	t.held, t.closed = nil, true
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, f := range held {
		t.b.settle(ctx, f, settlement{giveBack: true})
	}
	return errors.Join(t.b.close(), t.res.close())
}

// Enqueue sends each message to its queue: on Redis in one transaction,
// on RabbitMQ each confirmed.
func (t *Transport) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	out := make([]transport.EnqueueResult, len(p.Messages))
	tasks := make([]next, len(p.Messages))
	for i := range p.Messages {
		m := &p.Messages[i]
		switch {
		case m.Flow != nil:
			return nil, fmt.Errorf("docket: celery: a workflow step (task %s): use Celery's canvas on Celery queues: %w", m.ID, transport.ErrUnsupported)
		case m.UniqueKey != "":
			return nil, fmt.Errorf("docket: celery: unique keys (task %s): %w", m.ID, transport.ErrUnsupported)
		}
		task := wire.Task{ID: m.ID, Name: m.Name, ETA: m.ETA, Expires: m.Expires, HardLimit: m.Timeout,
			IgnoreResult: m.IgnoreResult, RootID: m.ID, Priority: m.Priority}
		task.Args, task.Kwargs = wire.Split(m.Payload)
		for k, v := range m.Headers {
			if task.Other == nil {
				task.Other = map[string]any{}
			}
			task.Other[k] = v
		}
		tasks[i] = next{task, m.Queue}
		out[i] = transport.EnqueueResult{ID: m.ID}
	}
	if err := t.b.send(ctx, tasks); err != nil {
		if !errors.Is(err, transport.ErrInvalid) && !errors.Is(err, transport.ErrBusy) && !errors.Is(err, transport.ErrClosed) {
			// A broken connection or an answer that never came: the
			// messages may have been sent.
			err = fmt.Errorf("%w: %w", transport.ErrOutcomeUnknown, err)
		}
		return nil, t.wrap(err)
	}
	return out, nil
}

// envelope returns kombu's envelope of task for queue, under a fresh
// delivery tag, and the list it goes on.
func envelope(task wire.Task, queue string) (list string, env []byte, err error) {
	if queue == "" {
		return "", nil, fmt.Errorf("docket: celery: task %s has no queue: %w", task.ID, transport.ErrInvalid)
	}
	env, err = wire.EncodeEnvelope(task, queue, uuid4())
	if err != nil {
		return "", nil, fmt.Errorf("docket: celery: task %s: %w: %w", task.ID, transport.ErrInvalid, err)
	}
	return wire.PriorityList(queue, task.Priority), env, nil
}

// sep is kombu's separator in binding entries and priority list names.
const sep = "\x06\x16"

// Cancel is not supported: Celery revokes a task by a broadcast to its
// workers, which keep the revoked ids in memory.
func (t *Transport) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	return transport.CancelResult{}, fmt.Errorf("docket: celery: cancel of task %s: Celery revokes by a broadcast to its workers: %w", p.ID, transport.ErrUnsupported)
}

func (t *Transport) wrap(err error) error {
	if err == nil || strings.HasPrefix(err.Error(), "docket:") {
		return err
	}
	return fmt.Errorf("docket: celery %s: %w", t.where, err)
}

// uuid4 returns a random UUID, as kombu's delivery tags and Celery's task
// ids are.
func uuid4() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// compile-time checks
var (
	_ transport.Transport = (*Transport)(nil)
	_ transport.Pinger    = (*Transport)(nil)
)
