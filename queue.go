package docket

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	_ "github.com/docketq/docket/store/sqlite" // the default transport: sqlite: and memory:
	"github.com/docketq/docket/transport"
)

// Queue is a handle on one docket backend: it enqueues tasks, runs workers
// (Run) and answers questions about results. It is safe for concurrent use.
// Open one per process and Close it when done.
type Queue struct {
	t     transport.Transport
	url   string // redacted
	cfg   config
	unsub func()

	mu     sync.RWMutex
	tasks  map[string]Registrable
	queues map[string]bool // queues this process enqueued to or registered
	worker *worker         // non-nil while Run is active
	// schedules registered in this process, by name
	schedules map[string]*scheduleEntry

	waiters  hub
	wake     chan struct{} // new work may be due
	recheck  chan struct{} // another process wrote: re-check waiters and running tasks
	beatWake chan struct{} // schedules changed
	closing  chan struct{}
	// life is the Queue's lifetime: background loops run under it, and
	// Close ends it.
	life    context.Context
	endLife context.CancelFunc
	// pushed: the Queue hears of other processes' writes (a Subscriber or
	// a ChangeCounter), so Wait polls only as a safety net.
	pushed   bool
	bg       sync.WaitGroup
	closeMu  sync.Once
}

// Open connects to the backend named by rawURL and returns a Queue.
//
//	""                       ./docket.db (the same as "sqlite:docket.db")
//	"sqlite:app.db"          a SQLite file (a bare path works too)
//	"sqlite::memory:"        a private in-memory database (also "memory:")
//	"memory:NAME"            an in-memory database shared by this process's
//	                         Queues opened with the same NAME
//	"redis://host:6379/0"    needs import _ ".../transport/redis"
//	"amqp://host:5672/vhost" needs import _ ".../transport/amqp"; task state
//	                         in the store named by the ResultStore option
//
// Open reads no environment variable: a program that takes its backend from
// the environment says so, as the examples do with
// docket.Open(ctx, os.Getenv("DOCKET_URL")). An unknown scheme fails with an
// error naming the import that registers it.
func Open(ctx context.Context, rawURL string, opts ...Option) (*Queue, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if rawURL == "" {
		rawURL = "sqlite:docket.db"
	}
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	tcfg := transport.Config{
		Logger:       cfg.logger,
		Now:          cfg.clock.Now,
		PollInterval: cfg.pollInterval,
	}
	if cfg.resultURL != "" {
		if tcfg.ResultURL, err = parseURL(cfg.resultURL); err != nil {
			return nil, fmt.Errorf("docket: result store: %w", err)
		}
	}
	t, err := transport.Open(ctx, u, tcfg)
	if err != nil {
		return nil, err
	}
	if tcfg.ResultURL != nil {
		if rs, ok := t.(transport.ResultStorer); !ok || rs.ResultStore() == nil {
			t.Close()
			return nil, fmt.Errorf("docket: a result store (%s) is for broker transports; %s keeps its own state: %w", transport.Redact(tcfg.ResultURL), u.Scheme, ErrInvalid)
		}
	}
	return newQueue(t, transport.Redact(u), cfg), nil
}

// New returns a Queue on a backend the caller built, as sql.OpenDB does for
// a driver.Connector: for example redis.New with the application's own
// *redis.Client, amqp.New with its connection settings, or sqlite.Open with
// options a URL cannot carry. The Queue owns backend from then on: Close
// closes it. Options that name a backend (ResultStore) are refused; give
// the result store to the broker's constructor instead.
func New(backend transport.Transport, opts ...Option) (*Queue, error) {
	if backend == nil {
		return nil, invalid("backend", nil, "is nil")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.resultURL != "" {
		return nil, invalid("ResultStore", cfg.resultURL, "applies to Open; pass the result store to the broker's constructor")
	}
	return newQueue(backend, fmt.Sprintf("%T", backend), cfg), nil
}

func newConfig(opts []Option) (config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := errors.Join(cfg.errs...); err != nil {
		return cfg, err
	}
	if cfg.prefetch < 0 {
		cfg.prefetch = 4 * cfg.concurrency
	}
	return cfg, nil
}

func newQueue(t transport.Transport, name string, cfg config) *Queue {
	q := &Queue{
		t:        t,
		url:      name,
		cfg:      cfg,
		tasks:    map[string]Registrable{},
		queues:   map[string]bool{},
		wake:     make(chan struct{}, 1),
		recheck:  make(chan struct{}, 1),
		beatWake: make(chan struct{}, 1),
		closing:  make(chan struct{}),
	}
	q.life, q.endLife = context.WithCancel(context.Background())
	q.waiters.m = map[string][]chan struct{}{}
	if s, ok := t.(transport.Subscriber); ok {
		q.unsub = s.Subscribe(q.onEvent)
		q.pushed = true
	}
	if cc, ok := t.(transport.ChangeCounter); ok {
		q.pushed = true
		q.bg.Add(1)
		go q.watchChanges(q.life, cc)
	}
	q.bg.Add(1)
	go q.rechecker()
	return q
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// parseURL accepts URLs and bare file paths (which mean sqlite).
func parseURL(raw string) (*url.URL, error) {
	if !schemeRE.MatchString(raw) {
		return &url.URL{Scheme: "sqlite", Opaque: url.PathEscape(raw)}, nil
	}
	if strings.HasPrefix(raw, "sqlite::memory:") {
		raw = "memory:" + strings.TrimPrefix(raw, "sqlite::memory:")
	}
	sqlite := strings.HasPrefix(strings.ToLower(raw), "sqlite:")
	if sqlite {
		// A SQLite URL names a file and has no fragment: a '#' is part of
		// the file name, never the end of it.
		raw = strings.ReplaceAll(raw, "#", "%23")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL; it may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if sqlite {
			return nil, fmt.Errorf("%w: URL: %w (a '%%' in a file name must be written %%25)", ErrInvalid, err)
		}
		return nil, fmt.Errorf("%w: URL: %w", ErrInvalid, err)
	}
	return u, nil
}

// String returns the backend URL with any password redacted.
func (q *Queue) String() string { return "docket.Queue(" + q.url + ")" }

// Close stops any running workers (without grace), and releases the backend.
// It is safe to call more than once.
func (q *Queue) Close() error {
	var err error
	q.closeMu.Do(func() {
		q.mu.RLock()
		w := q.worker
		q.mu.RUnlock()
		if w != nil {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			w.shutdown(ctx)
		}
		close(q.closing)
		q.endLife()
		if q.unsub != nil {
			q.unsub()
		}
		q.bg.Wait()
		err = q.t.Close()
	})
	return err
}

func (q *Queue) isClosed() bool {
	select {
	case <-q.closing:
		return true
	default:
		return false
	}
}

func (q *Queue) now() time.Time { return q.cfg.clock.Now() }

// Register makes tasks runnable by this Queue's workers and known to
// EnqueueByName. It reports an invalid task definition, and a different
// task already registered under the same name.
func (q *Queue) Register(tasks ...Registrable) error {
	for _, t := range tasks {
		if t == nil {
			return invalid("task", nil, "is nil")
		}
		if err := t.taskErr(); err != nil {
			return err
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, t := range tasks {
		if old, ok := q.tasks[t.taskName()]; ok && old != t {
			return invalid("task name", t.taskName(), "is already registered with another task")
		}
	}
	for _, t := range tasks {
		q.tasks[t.taskName()] = t
		q.queues[t.taskOptions().queue] = true
	}
	return nil
}

func (q *Queue) lookupTask(name string) Registrable {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.tasks[name]
}

// Enqueuer is where a task is enqueued: a *Queue, or a transaction bound to
// one by Queue.Tx.
type Enqueuer interface {
	target() (*Queue, *sql.Tx)
}

func (q *Queue) target() (*Queue, *sql.Tx) { return q, nil }

type txEnqueuer struct {
	q  *Queue
	tx *sql.Tx
}

func (t txEnqueuer) target() (*Queue, *sql.Tx) { return t.q, t.tx }

// Tx binds a database transaction: tasks enqueued through it are written in
// tx and exist only if tx commits; workers here and in other processes pick
// them up after the commit. tx must be on the same SQLite database (use
// q.DB() to get a pool on it). Inside tx, enqueue only through q.Tx(tx):
// a plain enqueue would wait for tx's write lock.
func (q *Queue) Tx(tx *sql.Tx) Enqueuer { return txEnqueuer{q: q, tx: tx} }

// DB returns a connection pool on the queue's SQLite database, configured
// like docket's own (WAL, busy_timeout, BEGIN IMMEDIATE), for the
// application's tables; it is closed by Close. It returns ErrUnsupported for
// other backends.
func (q *Queue) DB() (*sql.DB, error) {
	if d, ok := q.t.(transport.DBProvider); ok && d.DB() != nil {
		return d.DB(), nil
	}
	return nil, fmt.Errorf("docket: DB: %w", ErrUnsupported)
}

// EnqueueByName submits a task by name with untyped arguments (any value
// that encodes to JSON; json.RawMessage passes through). The name must be
// registered with this Queue, so a typo fails here rather than on a worker.
func (q *Queue) EnqueueByName(ctx context.Context, name string, args any, opts ...TaskOption) (*Result[json.RawMessage], error) {
	if err := validName("task name", name); err != nil {
		return nil, err
	}
	t := q.lookupTask(name)
	if t == nil {
		return nil, &UnknownTaskError{Name: name}
	}
	p, err := encodeArgs(args, q.cfg.maxPayload)
	if err == nil {
		err = t.checkArgs(p)
	}
	if err != nil {
		return nil, fmt.Errorf("docket: enqueue %s: %w", name, err)
	}
	ids, err := q.enqueue(ctx, nil, name, t.taskOptions(), [][]byte{p}, opts)
	if err != nil {
		return nil, err
	}
	return &Result[json.RawMessage]{q: q, id: ids[0]}, nil
}

// enqueue validates, builds messages and stores them in one call.
func (q *Queue) enqueue(ctx context.Context, tx *sql.Tx, name string, defaults *taskOpts, payloads [][]byte, opts []TaskOption) ([]string, error) {
	if q.isClosed() {
		return nil, ErrClosed
	}
	now := q.now()
	msgs, err := buildMessages(now, name, defaults, payloads, opts)
	if err != nil {
		return nil, err
	}
	params := transport.EnqueueParams{Now: now, Messages: msgs}
	var res []transport.EnqueueResult
	if tx != nil {
		te, isTx := q.t.(transport.TxEnqueuer)
		if !isTx {
			return nil, fmt.Errorf("docket: enqueue in a transaction: %w", ErrUnsupported)
		}
		res, err = te.EnqueueTx(ctx, tx, params)
	} else {
		res, err = q.t.Enqueue(ctx, params)
		if err == nil {
			q.enqueued(msgs)
		}
	}
	if err != nil {
		if errors.Is(err, ErrOutcomeUnknown) {
			ids := make([]string, len(msgs))
			for i := range msgs {
				ids[i] = msgs[i].ID
			}
			return nil, &OutcomeUnknownError{Name: name, IDs: ids, Err: err}
		}
		return nil, fmt.Errorf("docket: enqueue %s: %w", name, err)
	}
	q.noteQueue(msgs[0].Queue)
	ids := make([]string, len(res))
	for i, r := range res {
		ids[i] = r.ID
	}
	return ids, nil
}

// pickTime resolves a relative (now+d) or absolute option to a time.
func pickTime(now time.Time, field string, hasRel bool, rel time.Duration, hasAbs bool, abs time.Time) (time.Time, error) {
	switch {
	case hasRel:
		t, ok := addDelay(now, rel)
		if !ok {
			return t, invalid(field, rel, "out of range")
		}
		return t, nil
	case hasAbs:
		return abs, nil
	}
	return time.Time{}, nil
}

// buildMessages applies opts over a task's defaults, validates the result
// and returns one message per payload.
func buildMessages(now time.Time, name string, defaults *taskOpts, payloads [][]byte, opts []TaskOption) ([]transport.Message, error) {
	o := *defaults
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(true); err != nil {
		return nil, err
	}
	if o.hasID && len(payloads) > 1 {
		return nil, invalid("WithID", o.id, "cannot name several tasks")
	}
	base := transport.Message{
		Name: name, Queue: o.queue, Headers: o.headers, Priority: o.priority,
		MaxAttempts: o.maxRetries + 1, Timeout: o.timeout, ResultTTL: o.resultTTL,
		IgnoreResult: o.ignoreResult, Created: now,
	}
	var err error
	if base.ETA, err = pickTime(now, "In", o.hasCountdown, o.countdown, o.hasETA, o.eta); err != nil {
		return nil, err
	}
	if base.Expires, err = pickTime(now, "Expires", o.hasExpiresIn, o.expiresIn, o.hasExpiresAt, o.expiresAt); err != nil {
		return nil, err
	}
	// Absolute times obey the bound relative ones do: within 100 years of
	// now.
	if !base.ETA.IsZero() {
		if d := base.ETA.Sub(now); d > maxDelay || d < -maxDelay {
			return nil, invalid("At", base.ETA, "ETA more than 100 years away")
		}
	}
	if !base.Expires.IsZero() {
		if d := base.Expires.Sub(now); d > maxDelay || d < -maxDelay {
			return nil, invalid("ExpiresAt", base.Expires, "expiry more than 100 years away")
		}
		if !base.ETA.IsZero() && !base.Expires.After(base.ETA) {
			return nil, invalid("Expires", base.Expires, "expiry is not after the ETA")
		}
	}
	if e, isExp := o.backoff.(Exponential); isExp {
		base.Backoff = &transport.Backoff{Base: e.Base, Max: e.Max, Jitter: e.Jitter}
	}
	if o.hasUnique {
		if len(payloads) > 1 {
			return nil, invalid("Unique", o.uniqueKey, "one key cannot be shared by several tasks of one batch")
		}
		base.UniqueKey, base.ReturnExisting = o.uniqueKey, o.uniquePolicy == ReturnExisting
	}
	msgs := make([]transport.Message, len(payloads))
	for i, p := range payloads {
		msgs[i] = base
		msgs[i].Payload = p
		if o.hasID {
			msgs[i].ID = o.id
		} else {
			msgs[i].ID = ulid.Make().String()
		}
	}
	return msgs, nil
}

func (q *Queue) noteQueue(name string) {
	q.mu.RLock()
	known := q.queues[name]
	q.mu.RUnlock()
	if !known {
		q.mu.Lock()
		q.queues[name] = true
		q.mu.Unlock()
	}
}

// allQueues lists every queue this process knows of, sorted.
func (q *Queue) allQueues() []string {
	q.mu.RLock()
	defer q.mu.RUnlock()
	seen := map[string]bool{DefaultQueue: true}
	for name := range q.queues {
		seen[name] = true
	}
	for name := range q.cfg.queues {
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// Info returns what the backend knows about a task.
func (q *Queue) Info(ctx context.Context, id string) (*TaskInfo, error) {
	in, err := q.t.Get(ctx, transport.GetParams{Now: q.now(), ID: id})
	if err != nil {
		return nil, err
	}
	return infoFrom(&in), nil
}

// Cancel cancels a task: one that has not started never will (it ends
// cancelled at once); a running one has its handler's ctx cancelled, in
// whichever process runs it, and ends cancelled unless the handler still
// returns success. Cancelling a finished task does nothing.
func (q *Queue) Cancel(ctx context.Context, id string) error {
	_, err := q.cancel(ctx, id)
	return err
}

// ListOptions filter Queue.List.
type ListOptions struct {
	Name   string  // exact task name
	Queue  string  // exact queue
	States []State // any of these states
	After  string  // ids after this one (paging)
	Limit  int     // default 1000
}

// List returns tasks in id (enqueue) order. It returns ErrUnsupported for
// backends that cannot enumerate.
func (q *Queue) List(ctx context.Context, opts ListOptions) ([]*TaskInfo, error) {
	l, ok := q.t.(transport.Lister)
	if !ok {
		return nil, fmt.Errorf("docket: List: %w", ErrUnsupported)
	}
	ins, err := l.List(ctx, transport.ListParams{Now: q.now(), Name: opts.Name, Queue: opts.Queue, States: opts.States, After: opts.After, Limit: opts.Limit})
	if err != nil {
		return nil, err
	}
	out := make([]*TaskInfo, len(ins))
	for i := range ins {
		out[i] = infoFrom(&ins[i])
	}
	return out, nil
}

// onEvent receives the transport's notifications. It must not block.
func (q *Queue) onEvent(e transport.Event) {
	switch e.Kind {
	case transport.EventReady:
		signal(q.wake)
	case transport.EventFinished:
		q.waiters.notify(e.IDs)
	case transport.EventCancel:
		q.mu.RLock()
		w := q.worker
		q.mu.RUnlock()
		if w != nil {
			w.cancelTasks(e.IDs, errCancelRequested)
		}
	case transport.EventLost:
		q.mu.RLock()
		w := q.worker
		q.mu.RUnlock()
		if w != nil {
			w.cancelTasks(e.IDs, errLeaseLost)
		}
	case transport.EventChanged:
		signal(q.wake)
		signal(q.recheck)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// rechecker looks up the tasks this process waits on or runs whenever
// another process wrote, so that results and cancels made elsewhere are
// seen within the poll interval.
func (q *Queue) rechecker() {
	defer q.bg.Done()
	ctx := q.life
	for {
		select {
		case <-q.closing:
			return
		case <-q.recheck:
		}
		ids := q.waiters.ids()
		q.mu.RLock()
		w := q.worker
		q.mu.RUnlock()
		var running []string
		if w != nil {
			running = w.runningIDs()
		}
		if len(ids)+len(running) == 0 {
			continue
		}
		sts, err := q.t.Lookup(ctx, transport.LookupParams{Now: q.now(), IDs: append(ids, running...)})
		if err != nil {
			q.cfg.logger.Warn("docket: look up tasks", "err", err)
			continue
		}
		var done, cancels []string
		for _, st := range sts {
			if st.State.Terminal() {
				done = append(done, st.ID)
			}
			if st.CancelRequested {
				cancels = append(cancels, st.ID)
			}
		}
		q.waiters.notify(done)
		if w != nil && len(cancels) > 0 {
			w.cancelTasks(cancels, errCancelRequested)
		}
	}
}

// hub wakes Wait calls when their task finishes.
type hub struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

func (h *hub) add(id string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	h.m[id] = append(h.m[id], ch)
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.m[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(h.m, id)
		} else {
			h.m[id] = list
		}
	}
}

func (h *hub) notify(ids []string) {
	if len(ids) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		for _, ch := range h.m[id] {
			signal(ch)
		}
	}
}

func (h *hub) ids() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Keys(h.m))
}
