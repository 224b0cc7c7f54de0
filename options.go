package docket

import (
	"log/slog"
	"math"
	"time"
	"unicode/utf8"
)

// TaskOption sets a task default (in NewTask) or overrides it for one
// enqueue (in Enqueue). Options never fail when built; invalid values are
// reported by Register or Enqueue as a *ValidationError.
type TaskOption func(*taskOpts)

type taskOpts struct {
	queue        string
	priority     int
	maxRetries   int
	timeout      time.Duration
	backoff      Backoff
	resultTTL    time.Duration
	ignoreResult bool
	countdown    time.Duration
	hasCountdown bool
	eta          time.Time
	hasETA       bool
	expiresIn    time.Duration
	hasExpiresIn bool
	expiresAt    time.Time
	hasExpiresAt bool
	uniqueKey    string
	uniquePolicy UniquePolicy
	hasUnique    bool
	id           string
	hasID        bool
	headers      map[string]string
	extraHeaders int // Header calls past maxHeaders
}

// Defaults of a task that sets none.
const (
	// DefaultQueue is the queue of a task that names none.
	DefaultQueue = "default"
	// DefaultMaxRetries is Celery's: three retries, four attempts in all.
	DefaultMaxRetries = 3
	// DefaultResultTTL is how long a finished task and its result are kept.
	DefaultResultTTL = 24 * time.Hour
	// MaxPriority is the highest priority; 0 is the lowest and the default.
	MaxPriority = 9
)

func defaultTaskOpts() taskOpts {
	return taskOpts{queue: DefaultQueue, maxRetries: DefaultMaxRetries, resultTTL: DefaultResultTTL}
}

// OnQueue routes the task to a queue (default "default").
func OnQueue(name string) TaskOption { return func(o *taskOpts) { o.queue = name } }

// Priority orders tasks within a queue: 0 (default, lowest) to 9 (highest).
func Priority(p int) TaskOption { return func(o *taskOpts) { o.priority = p } }

// MaxRetries is how many times a failing task is retried (default 3); 0
// means one attempt only. Attempts are counted when a worker claims the task,
// so a task that crashes its worker is also bounded.
func MaxRetries(n int) TaskOption { return func(o *taskOpts) { o.maxRetries = n } }

// Timeout bounds each attempt: the handler's ctx is cancelled after d and
// the attempt counts as failed. Zero (the default) means no timeout; the
// lease is kept alive by heartbeats for as long as the handler runs.
func Timeout(d time.Duration) TaskOption { return func(o *taskOpts) { o.timeout = d } }

// RetryBackoff sets the retry delay policy (default Exponential{Base: 1s,
// Max: 10m, Jitter: 0.25}). At enqueue only an Exponential is accepted,
// because the policy travels with the task to whichever worker runs it.
func RetryBackoff(b Backoff) TaskOption { return func(o *taskOpts) { o.backoff = b } }

// ResultTTL is how long the finished task and its result are kept before
// pruning (default 24h).
func ResultTTL(d time.Duration) TaskOption { return func(o *taskOpts) { o.resultTTL = d } }

// IgnoreResult drops the handler's return value; Wait still reports the
// outcome, with a zero result.
func IgnoreResult() TaskOption { return func(o *taskOpts) { o.ignoreResult = true } }

// In delays the task by d (Celery's countdown).
func In(d time.Duration) TaskOption {
	return func(o *taskOpts) { o.countdown, o.hasCountdown, o.hasETA = d, true, false }
}

// At runs the task no earlier than t (Celery's eta). A time in the past
// means now.
func At(t time.Time) TaskOption {
	return func(o *taskOpts) { o.eta, o.hasETA, o.hasCountdown = t, true, false }
}

// Expires gives up on the task if it has not started within d of being
// enqueued: it ends "expired" and never runs. Unlike Timeout it does not
// limit a running attempt.
func Expires(d time.Duration) TaskOption {
	return func(o *taskOpts) { o.expiresIn, o.hasExpiresIn, o.hasExpiresAt = d, true, false }
}

// ExpiresAt is Expires with an absolute time.
func ExpiresAt(t time.Time) TaskOption {
	return func(o *taskOpts) { o.expiresAt, o.hasExpiresAt, o.hasExpiresIn = t, true, false }
}

// UniquePolicy says what Enqueue does when a unique key or task id is taken.
type UniquePolicy uint8

const (
	// Reject fails the enqueue with a *DuplicateError naming the holder.
	Reject UniquePolicy = iota
	// ReturnExisting returns a handle to the task that holds the key.
	ReturnExisting
)

// Unique admits at most one unfinished task with this key (any name, any
// queue); the store enforces it. The key is free again once that task
// reaches a terminal state.
func Unique(key string, policy UniquePolicy) TaskOption {
	return func(o *taskOpts) { o.uniqueKey, o.uniquePolicy, o.hasUnique = key, policy, true }
}

// WithID sets the task id instead of a generated ULID. Enqueueing an id that
// exists fails with a *DuplicateError, unless combined with
// Unique(…, ReturnExisting), which makes the enqueue idempotent.
func WithID(id string) TaskOption { return func(o *taskOpts) { o.id, o.hasID = id, true } }

// Header attaches metadata to the task, readable by the handler through
// FromContext and by anyone through Info.
func Header(key, value string) TaskOption {
	return func(o *taskOpts) {
		if _, replace := o.headers[key]; !replace && len(o.headers) >= maxHeaders {
			o.extraHeaders++ // refused by validate, without growing the map
			return
		}
		h := make(map[string]string, len(o.headers)+1)
		for k, v := range o.headers {
			h[k] = v
		}
		h[key] = value
		o.headers = h
	}
}

// Limits on what a task carries.
const (
	maxUniqueKey  = 512
	maxHeaderSize = 16 << 10
	maxHeaders    = 64
	maxRetries    = 10_000
	// maxDelay keeps every computed time inside SQLite's and Go's ranges.
	maxDelay = 100 * 365 * 24 * time.Hour
)

func (o *taskOpts) validate(enqueue bool) error {
	if err := validName("queue", o.queue); err != nil {
		return err
	}
	switch {
	case o.priority < 0 || o.priority > MaxPriority:
		return invalid("Priority", o.priority, "must be within 0..9")
	case o.maxRetries < 0 || o.maxRetries > maxRetries:
		return invalid("MaxRetries", o.maxRetries, "must be within 0..10000")
	case o.timeout < 0 || o.timeout > maxDelay:
		return invalid("Timeout", o.timeout, "must be zero (none) or positive, under 100 years")
	case o.resultTTL < 0 || o.resultTTL > maxDelay:
		return invalid("ResultTTL", o.resultTTL, "must be zero or positive, under 100 years")
	case o.hasCountdown && (o.countdown < 0 || o.countdown > maxDelay):
		return invalid("In", o.countdown, "countdown must be zero or positive, under 100 years")
	case o.hasETA && o.eta.IsZero():
		return invalid("At", nil, "ETA is the zero time")
	case o.hasExpiresIn && (o.expiresIn <= 0 || o.expiresIn > maxDelay):
		return invalid("Expires", o.expiresIn, "must be positive, under 100 years")
	case o.hasExpiresAt && o.expiresAt.IsZero():
		return invalid("ExpiresAt", nil, "expiry is the zero time")
	}
	if o.backoff != nil {
		if e, ok := o.backoff.(Exponential); ok {
			if err := e.validate(); err != nil {
				return err
			}
		} else if enqueue {
			return invalid("RetryBackoff", nil, "only an Exponential policy can be set per enqueue; set custom policies on the task")
		}
	}
	if o.hasUnique {
		if err := validKey("unique key", o.uniqueKey, maxUniqueKey); err != nil {
			return err
		}
		if o.uniquePolicy > ReturnExisting {
			return invalid("unique policy", int(o.uniquePolicy), "must be Reject or ReturnExisting")
		}
	}
	if o.hasID {
		if !enqueue {
			return invalid("WithID", o.id, "a task id can only be chosen at enqueue")
		}
		if err := validName("task id", o.id); err != nil {
			return err
		}
	}
	if n := len(o.headers) + o.extraHeaders; n > maxHeaders {
		return invalid("headers", n, "at most 64 headers")
	}
	size := 0
	for k, v := range o.headers {
		if err := validName("header key", k); err != nil {
			return err
		}
		if !utf8.ValidString(v) {
			return invalid("header value", v, "must be valid UTF-8")
		}
		size += len(k) + len(v)
	}
	if size > maxHeaderSize {
		return &TooLargeError{What: "headers", Size: size, Limit: maxHeaderSize}
	}
	return nil
}

// validName checks task names, queue names, ids and header keys:
// [A-Za-z0-9][A-Za-z0-9._:-]{0,127}. Names become SQL values, Redis keys,
// AMQP queue names and log labels, so they are kept plain.
func validName(field, s string) error {
	if s == "" {
		return invalid(field, s, "must not be empty")
	}
	if len(s) > 128 {
		return invalid(field, s, "longer than 128 bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == ':' || c == '-') {
			continue
		}
		return invalid(field, s, "must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
	}
	return nil
}

// validKey checks free-form keys: non-empty valid UTF-8 without NUL.
func validKey(field, s string, max int) error {
	switch {
	case s == "":
		return invalid(field, s, "must not be empty")
	case len(s) > max:
		return invalid(field, s, "too long")
	case !utf8.ValidString(s):
		return invalid(field, s, "must be valid UTF-8")
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return invalid(field, s, "must not contain NUL")
		}
	}
	return nil
}

// addDelay returns t+d, or false if it would leave the representable range.
func addDelay(t time.Time, d time.Duration) (time.Time, bool) {
	if d > maxDelay || d < -maxDelay {
		return time.Time{}, false
	}
	r := t.Add(d)
	if r.UnixMilli() > math.MaxInt64/4 || r.Year() > 9999 {
		return time.Time{}, false
	}
	return r, true
}

// Option configures a Queue (Open).
type Option func(*config)

// Clock tells docket the time. Tests inject a fake one (see dockettest) so
// that ETAs, retries, leases and schedules move without sleeping.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

type config struct {
	concurrency   int
	prefetch      int
	queues        map[string]int
	lease         time.Duration
	grace         time.Duration
	logger        *slog.Logger
	clock         Clock
	pollInterval  time.Duration
	pruneInterval time.Duration
	maxPayload    int
	maxResult     int
	nameLimits    map[string]int
	rateLimits    map[string]rateLimit
	resultURL     string
	errs          []error
}

type rateLimit struct {
	perSecond float64
	burst     int
}

func defaultConfig() config {
	return config{
		concurrency:   10,
		prefetch:      -1,
		lease:         30 * time.Second,
		grace:         10 * time.Second,
		logger:        slog.New(slog.DiscardHandler),
		clock:         systemClock{},
		pollInterval:  5 * time.Millisecond,
		pruneInterval: time.Minute,
		maxPayload:    1 << 20,
		maxResult:     1 << 20,
	}
}

// check records err unless ok, and returns ok.
func (c *config) check(ok bool, err error) bool {
	if !ok {
		c.errs = append(c.errs, err)
	}
	return ok
}

// Concurrency is how many handlers run at once in this process (default 10).
func Concurrency(n int) Option {
	return func(c *config) {
		if c.check(!(n < 1 || n > 100_000), invalid("Concurrency", n, "must be within 1..100000")) {
			c.concurrency = n
		}
	}
}

// Prefetch caps how many tasks a worker may hold, waiting, beyond those its
// handlers run (default 4×Concurrency, Celery's multiplier). Within the cap
// the worker adapts: it holds about 5ms worth of work at the pace tasks are
// finishing, so fast tasks are claimed in large batches while slow ones are
// taken one at a time and never wait behind a long task in one worker while
// another is idle. Held tasks keep their lease alive. Prefetch(0) disables
// it: a task is claimed only when a handler is free.
func Prefetch(n int) Option {
	return func(c *config) {
		if c.check(!(n < 0 || n > 10_000), invalid("Prefetch", n, "must be within 0..10000")) {
			c.prefetch = n
		}
	}
}

// Queues sets the queues this process works on, with relative weights: with
// {"critical": 6, "default": 3, "low": 1} a worker picks critical first six
// times in ten. By default a worker takes every queue its registered tasks
// use, plus "default", with equal weight.
func Queues(weights map[string]int) Option {
	return func(c *config) {
		if len(weights) == 0 {
			c.errs = append(c.errs, invalid("Queues", nil, "at least one queue"))
			return
		}
		c.queues = map[string]int{}
		for q, w := range weights {
			if err := validName("queue", q); err != nil {
				c.errs = append(c.errs, err)
				return
			}
			if w < 1 || w > 1000 {
				c.errs = append(c.errs, invalid("queue weight", w, "must be within 1..1000"))
				return
			}
			c.queues[q] = w
		}
	}
}

// LeaseDuration is how long a claimed task stays leased without a heartbeat
// (default 30s); workers renew it every third of that while the handler
// runs. A worker that dies loses its tasks to other workers after at most
// this long.
func LeaseDuration(d time.Duration) Option {
	return func(c *config) {
		if c.check(!(d < 100*time.Millisecond || d > 24*time.Hour), invalid("LeaseDuration", d, "must be within 100ms..24h")) {
			c.lease = d
		}
	}
}

// ShutdownGrace is how long a stopping worker lets running handlers finish
// before it cancels their ctx and releases their tasks (default 10s).
func ShutdownGrace(d time.Duration) Option {
	return func(c *config) {
		if c.check(!(d < 0), invalid("ShutdownGrace", d, "must not be negative")) {
			c.grace = d
		}
	}
}

// Logger receives docket's diagnostics (default: discarded). docket never
// writes to stdout or stderr on its own.
func Logger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithClock replaces the system clock (for tests; see dockettest.Clock).
func WithClock(clk Clock) Option {
	return func(c *config) {
		if clk != nil {
			c.clock = clk
		}
	}
}

// PollInterval bounds how long a write by another process (a task enqueued,
// finished or cancelled) goes unnoticed by this one (default 5ms). The check
// is a single cheap read and runs only while workers or waiters are active;
// after a second in which no other process wrote, it slows to 20 times the
// interval (100ms by default), so an idle worker uses well under 1% of a
// core, and speeds up again with the next write it sees. Writes in this
// process wake its workers and waiters at once, whatever the interval.
func PollInterval(d time.Duration) Option {
	return func(c *config) {
		if c.check(!(d < time.Millisecond || d > time.Minute), invalid("PollInterval", d, "must be within 1ms..1m")) {
			c.pollInterval = d
		}
	}
}

// ResultStore names the store that keeps task state for a broker
// transport (RabbitMQ): a Redis URL for several hosts, or a SQLite file on
// one. With it, results outlive their producer, any process can look a task
// up, unique keys and cancellation are enforced durably, and schedules fire
// each slot once; the broker still carries every task. An empty url means
// none, so that ResultStore(os.Getenv("DOCKET_RESULT_URL")) reads it from
// the environment when set. Transports that keep their own state (SQLite,
// Redis) refuse it.
func ResultStore(url string) Option {
	return func(c *config) { c.resultURL = url }
}

// PruneInterval is how often a running worker deletes finished tasks whose
// result TTL passed (default 1m), in batches of 1000.
func PruneInterval(d time.Duration) Option {
	return func(c *config) {
		if c.check(!(d < time.Millisecond), invalid("PruneInterval", d, "must be at least 1ms")) {
			c.pruneInterval = d
		}
	}
}

// MaxPayloadSize limits encoded task arguments (default 1 MiB).
func MaxPayloadSize(n int) Option {
	return func(c *config) {
		if c.check(!(n < 1), invalid("MaxPayloadSize", n, "must be positive")) {
			c.maxPayload = n
		}
	}
}

// MaxResultSize limits encoded task results (default 1 MiB); a bigger
// result fails the task.
func MaxResultSize(n int) Option {
	return func(c *config) {
		if c.check(!(n < 1), invalid("MaxResultSize", n, "must be positive")) {
			c.maxResult = n
		}
	}
}

// TaskConcurrency caps how many tasks named name run at once in this
// process. The limit is per process, not global.
func TaskConcurrency(name string, n int) Option {
	return func(c *config) {
		if err := validName("task name", name); err != nil {
			c.errs = append(c.errs, err)
			return
		}
		if n < 1 {
			c.errs = append(c.errs, invalid("TaskConcurrency", n, "must be positive"))
			return
		}
		if c.nameLimits == nil {
			c.nameLimits = map[string]int{}
		}
		c.nameLimits[name] = n
	}
}

// TaskRateLimit caps how often tasks named name start in this process: at
// most perSecond on average, with bursts of up to burst. The limit is per
// process, not global.
func TaskRateLimit(name string, perSecond float64, burst int) Option {
	return func(c *config) {
		if err := validName("task name", name); err != nil {
			c.errs = append(c.errs, err)
			return
		}
		if !(perSecond > 0) || math.IsInf(perSecond, 0) || burst < 1 {
			c.errs = append(c.errs, invalid("TaskRateLimit", perSecond, "rate must be positive and burst at least 1"))
			return
		}
		if c.rateLimits == nil {
			c.rateLimits = map[string]rateLimit{}
		}
		c.rateLimits[name] = rateLimit{perSecond, burst}
	}
}
