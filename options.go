package docket

import (
	"log/slog"
	"math"
	"time"
)

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
	middleware    []Middleware
	enqueueMW     []EnqueueMiddleware
	onEvent       []func(Event)
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

// PollInterval bounds how long a write by another process to a shared
// SQLite file (a task enqueued, finished or cancelled) goes unnoticed by
// this one (default 5ms). The check is a single cheap read; after a second
// in which no other process wrote, it slows to 20 times the interval (100ms
// by default), so an idle Queue uses well under 1% of a core, and speeds up
// again with the next write it sees. Writes in this process wake its
// workers and waiters at once, whatever the interval; Redis and RabbitMQ
// push other processes' writes and need no polling.
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
