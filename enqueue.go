package docket

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/docketq/docket/transport"
	"github.com/oklog/ulid/v2"
)

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
	return newResult[json.RawMessage](q, ids[0], true), nil
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
	return q.store(ctx, tx, name, now, msgs)
}

// store writes built messages in one call, through the enqueue
// middleware, and announces them; name names them in errors.
func (q *Queue) store(ctx context.Context, tx *sql.Tx, name string, now time.Time, msgs []transport.Message) ([]string, error) {
	params := transport.EnqueueParams{Now: now, Messages: msgs}
	var res []transport.EnqueueResult
	var err error
	if tx != nil {
		te, isTx := q.t.(transport.TxEnqueuer)
		if !isTx {
			return nil, fmt.Errorf("docket: enqueue in a transaction: %w", ErrUnsupported)
		}
		err = q.throughEnqueueMW(ctx, msgs, true, "", func(ctx context.Context) (err error) {
			res, err = te.EnqueueTx(ctx, tx, params)
			return err
		})
	} else {
		err = q.throughEnqueueMW(ctx, msgs, false, "", func(ctx context.Context) (err error) {
			res, err = q.t.Enqueue(ctx, params)
			return err
		})
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
		if !r.Existing && !q.quiet(EventEnqueued) {
			q.emit(Event{Kind: EventEnqueued, ID: r.ID, Name: msgs[i].Name, Queue: msgs[i].Queue, InTx: tx != nil})
		}
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
	if len(o.middleware) != len(defaults.middleware) {
		return nil, invalid("WithMiddleware", nil, "middleware is a task default; set it in NewTask, not at enqueue")
	}
	if o.hasID && len(payloads) > 1 {
		return nil, invalid("TaskID", o.id, "cannot name several tasks")
	}
	base := transport.Message{
		Name: name, Queue: o.queue, Headers: o.headers, Priority: o.priority,
		MaxAttempts: o.maxRetries + 1, Timeout: o.timeout, ResultTTL: o.resultTTL,
		IgnoreResult: o.ignoreResult, Created: now,
	}
	var err error
	if base.ETA, err = pickTime(now, "Countdown", o.hasCountdown, o.countdown, o.hasETA, o.eta); err != nil {
		return nil, err
	}
	// Backends keep milliseconds: round up, so that a task never starts
	// before its ETA.
	if r := base.ETA.Truncate(time.Millisecond); r.Before(base.ETA) {
		base.ETA = r.Add(time.Millisecond)
	}
	if base.Expires, err = pickTime(now, "Expires", o.hasExpiresIn, o.expiresIn, o.hasExpiresAt, o.expiresAt); err != nil {
		return nil, err
	}
	// Absolute times obey the bound relative ones do: within 100 years of
	// now.
	if !base.ETA.IsZero() {
		if d := base.ETA.Sub(now); d > maxDelay || d < -maxDelay {
			return nil, invalid("ETA", base.ETA, "ETA more than 100 years away")
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
			msgs[i].ID = newID(now)
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

// newID returns a new task id: a ULID from the real time, not the
// Queue's clock. Ids from the same millisecond of one process increase
// (the library's shared monotonic entropy), which keeps claim order equal
// to enqueue order; ULIDs from several fake clocks would interleave
// milliseconds and lose that.
func newID(time.Time) string { return ulid.Make().String() }
