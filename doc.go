// Package docket is a background-task queue and periodic scheduler that runs
// inside your Go binary on one SQLite file, and moves the same program onto
// Redis or RabbitMQ by changing a URL.
//
// A program opens a Queue, defines typed tasks, registers them, runs workers
// and enqueues:
//
//	q, err := docket.Open(ctx, os.Getenv("DOCKET_URL")) // "" means ./docket.db
//	defer q.Close()
//
//	var Add = docket.NewTask("math.add", func(ctx context.Context, a [2]int) (int, error) {
//		return a[0] + a[1], nil
//	}, docket.MaxRetries(5))
//
//	q.Register(Add)
//	go q.Run(ctx) // workers until ctx ends, then a graceful stop
//
//	res, err := Add.Enqueue(ctx, q, [2]int{2, 3}, docket.Countdown(time.Minute))
//	sum, err := res.Wait(ctx)
//
// A program that already holds a client builds the backend itself and
// passes it to New, as sql.OpenDB takes a connector: redis.New with its
// *redis.Client, amqp.New with its connection settings, sqlite.Open with
// options. Every backend implements transport.Transport, and an optional
// interface only when it supports it.
//
// # Delivery contract
//
// At-least-once. A task that was accepted (Enqueue returned nil) reaches
// exactly one terminal state: succeeded, failed (retries exhausted, a
// Permanent error, or its worker lost too often), cancelled, or expired.
// A handler may run more than once for one task (a worker that dies after
// the handler's side effects but before recording the outcome), so handlers
// must be idempotent; docket never claims exactly-once execution.
//
// Enqueue errors. An error from Enqueue means nothing was stored, with one
// exception: an *OutcomeUnknownError (ErrOutcomeUnknown) from a broker whose
// connection broke after the request left, when the task may have been
// stored. It names the task ids; enqueueing again TaskID(id) stores the task
// or fails with a *DuplicateError naming that same id, so a retry never
// makes a second task (on RabbitMQ alone, which keeps no index of ids, it
// may run the task twice).
//
// Leases, heartbeats, fencing. Claiming a task leases it to one worker for
// LeaseDuration (default 30s); the worker renews the lease every third of
// that while the handler runs. A lease that lapses (crash, kill -9, a frozen
// process) makes the task claimable again. Every write a worker makes about
// a task (renew, finish, retry, release) is conditional on the task's id,
// attempt and the worker's identity, so a stale worker can never overwrite a
// newer result or revive a finished task. A worker that learns its lease was
// lost cancels the handler's ctx.
//
// Attempts are counted at claim. A task whose handler crashes the process
// every time ends failed ("worker lost") after MaxRetries+1 claims instead
// of looping.
//
// Retries. A handler's plain error schedules a retry after the task's backoff
// (exponential with jitter and a cap by default); RetryAfter(d) picks the
// delay; Permanent(err) fails at once. A panic is recovered, recorded with
// its stack, and counts as an error. A panic in a goroutine the handler
// started cannot be recovered by Go: it kills the process, and the task is
// rescued by lease expiry like any crash, bounded by its attempts.
//
// ETAs are durable and never held by a worker. Countdown and ETA tasks wait
// in the store (SQLite), a sorted set (Redis) or RabbitMQ's delay queues,
// not in worker memory, so a one-week countdown costs nothing and survives
// restarts.
//
// Expiry is not timeout. A task past its Expires time is never started and
// ends expired. Timeout bounds one running attempt.
//
// Uniqueness. Unique(key, …) admits at most one unfinished task per key,
// enforced by the store (a partial unique index on SQLite).
//
// Cancellation persists. Cancel makes a waiting task end cancelled without
// running; a running task has its handler's ctx cancelled in whichever
// process runs it and ends cancelled (unless the handler still returns
// success). A cancelled task is never put back: a worker that releases it
// at shutdown, a failed attempt that would retry and a redelivery all end
// it cancelled.
//
// Results are stored with the task for ResultTTL (default 24h), then
// pruned in small batches. Wait wakes on completion: at once within the
// process, within PollInterval (default 5ms; 100ms after a quiet second)
// for completions in another process on the same SQLite file; it returns typed results and typed errors
// (*TaskError matching ErrTaskFailed, ErrTaskCancelled, ErrTaskExpired).
//
// Transactional enqueue (SQLite). task.Enqueue(ctx, q.Tx(tx), args) writes
// the task inside the caller's *sql.Tx; it exists, and workers see it, only
// if tx commits.
//
// Graceful shutdown. When Run's ctx ends (or Shutdown is called) the worker
// stops claiming, returns tasks it holds but has not started, lets running
// handlers finish for ShutdownGrace, then cancels their ctx and releases
// their tasks without consuming an attempt. docket never installs signal
// handlers and never writes to stdout; pass a *slog.Logger to see it.
//
// Periodic tasks (beat). Task.Schedule registers a task to run on a Cron
// spec or Every interval. Any number of processes may run the scheduler
// (it runs inside Run): each slot is recorded in the store, unique forever,
// in the same transaction that enqueues its task, so a slot fires once
// across all of them; the next slot is persisted, so restarts neither skip
// nor repeat one. A slot at most the misfire grace late fires; older slots
// were missed and are skipped, or with CatchUp run once — never once per
// missed slot. Cron specs run on wall-clock time in their zone (UTC unless
// given): a slot in a spring-forward gap runs once, right after the gap; a
// slot in a fall-back repeat runs once, at its first occurrence.
//
// Bounded memory. A worker holds at most Concurrency+Prefetch tasks.
// Arguments and results have size limits (1 MiB by default) enforced with
// typed errors.
//
// # Names
//
// Task names, queue names, task ids and header keys match
// [A-Za-z0-9][A-Za-z0-9._:-]{0,127}; anything else is a *ValidationError.
// Names become SQL values, Redis keys and log labels, so they stay plain.
//
// # Testing
//
// Open "memory:" for a private scratch database (a WAL file in RAM, where
// /dev/shm exists, removed by Close), inject a clock with
// WithClock, and call Drain to run every due task synchronously through the
// real execution path. Package dockettest wraps this for tests.
package docket
