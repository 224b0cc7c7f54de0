package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the one SQLite driver every system here uses
)

// ErrUnsupported marks a measurement a system cannot take part in; the
// table shows n/a with the reason.
var ErrUnsupported = errors.New("not supported")

// NA is an error that explains why a cell is n/a.
type NA struct{ Reason string }

// Error implements error.
func (e *NA) Error() string { return "n/a: " + e.Reason }

// Is makes errors.Is(err, ErrUnsupported) true for every *NA.
func (e *NA) Is(target error) bool { return target == ErrUnsupported }

// Options configure one instance of a system under test.
type Options struct {
	// Dir is a fresh directory for this instance's files.
	Dir string
	// Concurrency is how many tasks the workers run at once after Start.
	Concurrency int
	// Poll is the poll interval given to the peers' fetch loops; zero
	// leaves every library at its own defaults.
	Poll time.Duration
	// Handler runs at the start of every task with the task's stamp (the
	// UnixNano time it was enqueued, or 0 for plain no-op tasks).
	Handler func(stamp int64)
	// ShortRetention asks the system to remove finished tasks as soon as
	// its retention mechanism allows (for the size measurement).
	ShortRetention bool
	// Fresh asks for an empty store where the system cannot get one from a
	// new directory (asynq: FLUSHDB of its own Redis database).
	Fresh bool
	// Results asks for each task's result to be kept for its producer
	// (docket: tasks without IgnoreResult). Systems without results
	// ignore it.
	Results bool
	// Untracked says the harness will not call Unfinished: an instance
	// that keeps what it enqueued for that check need not.
	Untracked bool
}

// System is one queue under test. Open either creates a fresh store in
// Options.Dir or attaches to the one an earlier Open created there (another
// process may have it open too).
type System interface {
	// Name is the column title.
	Name() string
	// Available returns nil if the system can run on this machine.
	Available(ctx context.Context) error
	// Open opens the system's store in o.Dir.
	Open(ctx context.Context, o Options) (Instance, error)
	// Storage reports the bytes the store in dir occupies; every Instance
	// on it is closed.
	Storage(ctx context.Context, dir string) (int64, error)
}

// Instance is an open system: a producer, and workers once started.
type Instance interface {
	// Enqueue submits one task and returns after it is durably accepted.
	Enqueue(ctx context.Context, stamp int64) error
	// EnqueueBatch submits n no-op tasks in one call, or returns an *NA.
	EnqueueBatch(ctx context.Context, n int) error
	// Start starts the workers; they run Options.Handler for each task.
	Start(ctx context.Context) error
	// Stop stops the workers gracefully and returns once they stopped.
	Stop(ctx context.Context) error
	// Unfinished reports whether any task is not yet recorded as finished.
	Unfinished(ctx context.Context) (bool, error)
	// Cleanup waits (workers running) until the system's own retention has
	// removed finished tasks, and says what it relied on.
	Cleanup(ctx context.Context) (how string, poll *PollErrors, err error)
	// Close releases the instance; it stops the workers if still running.
	Close() error
}

// resultWaiter is an Instance that can wait for a task's result.
type resultWaiter interface {
	// EnqueueWait submits one task and waits until its result is known.
	EnqueueWait(ctx context.Context) error
}

// flowRunner is an Instance that runs workflows (docket's chains and
// chords). Every call enqueues, then waits for the last result; the
// workers must be started.
type flowRunner interface {
	// Chain runs a chain of n steps, each adding one to the previous
	// result.
	Chain(ctx context.Context, n int) error
	// Independent runs n tasks of the chain's step, enqueued in one call.
	Independent(ctx context.Context, n int) error
	// Chord runs a group of n members and a body that sums their results.
	Chord(ctx context.Context, n int) error
}

// sqliteDSN is the DSN every SQLite-based peer uses: the same settings as
// docket's own (see store/sqlite fileDSN): WAL, synchronous=NORMAL,
// busy_timeout 5000 ms, BEGIN IMMEDIATE for transactions, journal size limit.
func sqliteDSN(path string) string {
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "journal_size_limit(67108864)")
	q.Add("_pragma", "foreign_keys(0)")
	u := url.URL{Scheme: "file", Path: path}
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

// sqliteStorage checkpoints the WAL of the database at path into the main
// file (PRAGMA wal_checkpoint(TRUNCATE)) and returns the size of the main
// file plus its WAL. The -shm index is not counted: it holds no data.
func sqliteStorage(ctx context.Context, path string) (int64, error) {
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var busy, logFrames, checkpointed int
	if err := db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &checkpointed); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", filepath.Base(path), err)
	}
	if busy != 0 {
		return 0, fmt.Errorf("checkpoint %s: database busy", filepath.Base(path))
	}
	if err := db.Close(); err != nil {
		return 0, err
	}
	return fileAndWAL(path)
}

// openObserver opens a separate small pool on a peer's database file for
// the harness's own read-only progress checks, so they never queue behind
// the peer's single connection.
func openObserver(path string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// waitFor polls cond every interval until it returns true or ctx ends.
// An error from cond does not end the wait unless errors persist for 5 s:
// the polls are the harness's observation, not the system's work, so a
// transient error (e.g. SQLITE_BUSY on a read) is counted and the first
// one returned in poll for the measurement's notes.
func waitFor(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error)) (poll *PollErrors, err error) {
	var failingSince time.Time
	for {
		ok, err := cond(ctx)
		switch {
		case err != nil:
			if poll == nil {
				poll = &PollErrors{First: err}
			}
			poll.N++
			if failingSince.IsZero() {
				failingSince = time.Now()
			} else if time.Since(failingSince) > 5*time.Second {
				return poll, err
			}
		case ok:
			return poll, nil
		default:
			failingSince = time.Time{}
		}
		select {
		case <-ctx.Done():
			return poll, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// waitDone waits until inst reports no unfinished task.
func waitDone(ctx context.Context, inst Instance, interval time.Duration) (*PollErrors, error) {
	return waitFor(ctx, interval, func(ctx context.Context) (bool, error) {
		left, err := inst.Unfinished(ctx)
		return !left, err
	})
}

// PollErrors counts the errors a waitFor tolerated.
type PollErrors struct {
	N     int
	First error
}

// Note describes the tolerated errors for the table's notes, or "".
func (p *PollErrors) Note(what string) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf("%s: %d polls failed and were retried (first: %v)", what, p.N, p.First)
}

// fileAndWAL is the size of a SQLite file plus its WAL, as they are; a file
// that does not exist counts zero.
func fileAndWAL(path string) (int64, error) {
	var total int64
	for _, p := range []string{path, path + "-wal"} {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		total += st.Size()
	}
	return total, nil
}
