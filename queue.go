package docket

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	_ "github.com/docketq/docket/store/sqlite" // the default transport: sqlite: and memory:
	"github.com/docketq/docket/transport"
)

// Queue is a handle on one docket backend: it enqueues tasks, runs workers
// (Run) and answers questions about results. It is safe for concurrent use.
// Open one per process and Close it when done.
type Queue struct {
	t  transport.Transport
	ss transport.ScheduleStore // t's schedules; nil when it keeps none
	// flows is set when t keeps workflows: a step's end may make the
	// next step ready, so ends wake the workers.
	flows bool
	// retainer is t when it keeps task state in memory for as long as
	// handles on it live (see newResult); nil otherwise.
	retainer transport.Retainer
	url      string // redacted
	cfg      config
	unsub    func()

	mu    sync.RWMutex
	tasks map[string]Registrable
	// handlers holds the middleware chain of each task that has one
	handlers map[string]Handler
	queues   map[string]bool // queues this process enqueued to or registered
	worker   *worker         // non-nil while Run is active
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
	pushed  bool
	bg      sync.WaitGroup
	closeMu sync.Once
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
		Logger: cfg.logger,
		Now:    cfg.clock.Now,
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
		if _, ok := t.(transport.ResultStorer); !ok {
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
// closes it. If New fails, backend stays the caller's to close. Options that name a backend (ResultStore) are refused; give
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
	name := fmt.Sprintf("%T", backend)
	if s, ok := backend.(fmt.Stringer); ok {
		name = s.String()
	}
	return newQueue(backend, name, cfg), nil
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
		handlers: map[string]Handler{},
		queues:   map[string]bool{},
		wake:     make(chan struct{}, 1),
		recheck:  make(chan struct{}, 1),
		beatWake: make(chan struct{}, 1),
		closing:  make(chan struct{}),
	}
	q.ss, _ = t.(transport.ScheduleStore)
	q.retainer, _ = t.(transport.Retainer)
	_, q.flows = t.(transport.Workflows)
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

// URL names the backend: the URL given to Open with any password
// replaced by "xxxxx", or the backend's own description for a Queue made
// with New. It is safe to log or show.
func (q *Queue) URL() string { return q.url }

// Close stops any running workers (without grace), and releases the backend.
// It is safe to call more than once.
func (q *Queue) Close() error {
	var err error
	q.closeMu.Do(func() {
		if w := q.running(); w != nil {
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
// EnqueueByName (a Remote task only known: other workers run it). It reports an invalid task definition, and a different
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
		if isRemote(t) {
			continue // known to EnqueueByName; run by other workers
		}
		q.queues[t.taskOptions().queue] = true
		if h := q.handlerFor(t); h != nil {
			q.handlers[t.taskName()] = h
		}
	}
	return nil
}

func (q *Queue) lookupTask(name string) Registrable {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.tasks[name]
}

// lookupHandler returns the task registered under name and its middleware
// chain (nil without middleware).
func (q *Queue) lookupHandler(name string) (Registrable, Handler) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	t := q.tasks[name]
	if t != nil && isRemote(t) {
		return nil, nil // no handler here: the task fails as not registered
	}
	if len(q.handlers) == 0 {
		return t, nil
	}
	return t, q.handlers[name]
}

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
