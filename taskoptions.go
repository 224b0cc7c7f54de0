package docket

import (
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
	// middleware wraps the handler (a task default only)
	middleware    []Middleware
	badMiddleware bool
}

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
// outcome, with a zero result. With RabbitMQ alone, where a task's state
// reaches its producer only as a message from the worker, such a task is
// not reported at all (fire and forget costs the broker only the task's
// own message): its producer keeps nothing of it, and Info and Wait answer
// ErrNotFound at once.
func IgnoreResult() TaskOption { return func(o *taskOpts) { o.ignoreResult = true } }

// Countdown delays the task by d, as Celery's countdown does.
func Countdown(d time.Duration) TaskOption {
	return func(o *taskOpts) { o.countdown, o.hasCountdown, o.hasETA = d, true, false }
}

// ETA runs the task no earlier than t, as Celery's eta does. A time in the
// past means now.
func ETA(t time.Time) TaskOption {
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
	// RejectDuplicate fails the enqueue with a *DuplicateError naming the
	// holder.
	RejectDuplicate UniquePolicy = iota
	// ReturnExisting returns a handle to the task that holds the key.
	ReturnExisting
)

// Unique admits at most one unfinished task with this key (any name, any
// queue); the store enforces it. The key is free again once that task
// reaches a terminal state.
func Unique(key string, policy UniquePolicy) TaskOption {
	return func(o *taskOpts) { o.uniqueKey, o.uniquePolicy, o.hasUnique = key, policy, true }
}

// TaskID sets the task id instead of a generated ULID. Enqueueing an id that
// exists fails with a *DuplicateError, unless combined with
// Unique(…, ReturnExisting), which makes the enqueue idempotent.
func TaskID(id string) TaskOption { return func(o *taskOpts) { o.id, o.hasID = id, true } }

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
		return invalid("Countdown", o.countdown, "countdown must be zero or positive, under 100 years")
	case o.hasETA && o.eta.IsZero():
		return invalid("ETA", nil, "ETA is the zero time")
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
			return invalid("unique policy", int(o.uniquePolicy), "must be RejectDuplicate or ReturnExisting")
		}
	}
	if o.hasID {
		if !enqueue {
			return invalid("TaskID", o.id, "a task id can only be chosen at enqueue")
		}
		if err := validName("task id", o.id); err != nil {
			return err
		}
	}
	if o.extraHeaders > 0 {
		return invalid("headers", len(o.headers)+o.extraHeaders, "at most 64 headers")
	}
	if o.badMiddleware {
		return invalid("WithMiddleware", nil, "middleware is nil")
	}
	return validHeaders(o.headers)
}

// validHeaders checks a task's headers against the limits every backend
// keeps.
func validHeaders(h map[string]string) error {
	if n := len(h); n > maxHeaders {
		return invalid("headers", n, "at most 64 headers")
	}
	size := 0
	for k, v := range h {
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

// Limits on what a task carries.
const (
	maxUniqueKey  = 512
	maxHeaderSize = 16 << 10
	maxHeaders    = 64
	maxRetries    = 10_000
	// maxDelay keeps every computed time inside SQLite's and Go's ranges.
	maxDelay = 100 * 365 * 24 * time.Hour
)

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
