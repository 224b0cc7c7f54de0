package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/docketq/docket/internal/failpoint"
	"github.com/docketq/docket/transport"
)

// The writer owns the store's single write connection. Every write (enqueue,
// claim, heartbeat, finish, cancel, prune) is an op sent to it; the writer
// takes every op that is waiting, runs them in one BEGIN IMMEDIATE
// transaction and commits once (group commit). An op that may refuse after
// it wrote (doSavepoint) runs in a savepoint of its own and rolls back to it
// alone; any other op refuses only before it writes (refuse), and any other
// error of it, like a failed commit, fails every op of the batch, which
// rolls back whole. Callers always learn a definite outcome: an op that was
// skipped because its ctx ended reports ctx.Err().

// maxBatch bounds how many ops share one transaction, so a flood of writers
// cannot hold the write lock for long.
const maxBatch = 256

type op struct {
	ctx  context.Context
	kind string // enqueue, claim, extend, finish, cancel, prune, schedule: names failpoints
	run  func(r runner) error
	noTx bool // runs outside any transaction (PRAGMA data_version)
	// savepoint runs the op in a savepoint of its own, for an op that may
	// refuse after it wrote (a batch of tasks with a duplicate in the
	// middle). Other ops refuse only before writing (see refuse) and share
	// the transaction without the cost of a savepoint.
	savepoint bool
	err       error
	done      chan struct{}
}

// refusal marks an op's error as its own reason to do nothing (a duplicate
// task, no task to cancel), returned before the op wrote anything: the
// rest of its batch commits. Any other error of an op without a savepoint
// fails the whole batch.
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

// refuse wraps err as a refusal (nil stays nil).
func refuse(err error) error {
	if err == nil {
		return nil
	}
	return refusal{err}
}

var opPool = sync.Pool{New: func() any { return &op{done: make(chan struct{}, 1)} }}

type writer struct {
	conn    *sql.Conn
	queue   chan *op
	quit    chan struct{}
	stopped chan struct{}
	stmts   map[string]*sql.Stmt // prepared on conn, used only by the writer goroutine
	bg      context.Context
	commits atomic.Int64 // transactions committed
	ops     atomic.Int64 // ops committed in them
}

func newWriter(conn *sql.Conn) *writer {
	w := &writer{
		conn:    conn,
		queue:   make(chan *op, maxBatch),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
		stmts:   map[string]*sql.Stmt{},
		bg:      context.Background(),
	}
	go w.loop()
	return w
}

// do runs fn on the writer inside the next group transaction and returns its
// error, or the transaction's. It waits for a definite outcome. kind names
// the operation for failpoints.
// fn may refuse (see refuse) only before it writes.
func (w *writer) do(ctx context.Context, kind string, fn func(r runner) error) error {
	return w.submit(ctx, kind, fn, false, false)
}

// doSavepoint is do for an op that may refuse after writing: it runs in a
// savepoint, and any error it returns undoes its writes alone.
func (w *writer) doSavepoint(ctx context.Context, kind string, fn func(r runner) error) error {
	return w.submit(ctx, kind, fn, false, true)
}

// doNoTx runs fn on the writer connection outside any transaction.
func (w *writer) doNoTx(ctx context.Context, fn func(r runner) error) error {
	return w.submit(ctx, "", fn, true, false)
}

func (w *writer) submit(ctx context.Context, kind string, fn func(r runner) error, noTx, savepoint bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := opPool.Get().(*op)
	o.ctx, o.kind, o.run, o.noTx, o.savepoint, o.err = ctx, kind, fn, noTx, savepoint, nil
	select {
	case w.queue <- o:
	case <-w.quit:
		opPool.Put(o)
		return errClosed
	case <-ctx.Done():
		opPool.Put(o)
		return ctx.Err()
	}
	// The op is queued: wait for its outcome even if ctx ends meanwhile, so
	// the caller never mistakes a committed write for a failed one. The
	// writer skips ops whose ctx ended before their turn.
	<-o.done
	err := o.err
	o.ctx, o.run = nil, nil
	opPool.Put(o)
	if r, ok := err.(refusal); ok {
		err = r.err
	}
	return classify(err)
}

// classify wraps SQLite's busy, full, read-only and not-a-database errors in docket's
// typed errors, so callers can tell them apart with errors.Is.
func classify(err error) error {
	var se *sqlitedrv.Error
	if err == nil || !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%w: %w", transport.ErrBusy, err)
	case sqlite3.SQLITE_FULL:
		return fmt.Errorf("%w: %w", transport.ErrStorageFull, err)
	case sqlite3.SQLITE_READONLY:
		return fmt.Errorf("%w: %w", transport.ErrReadOnly, err)
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("%w: %w", transport.ErrIncompatible, err)
	}
	return err
}

// isConstraint reports whether err is a constraint that refused a
// statement (a NOT NULL column left empty): SQLite undoes that statement
// alone and the transaction goes on.
func isConstraint(err error) bool {
	var se *sqlitedrv.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

func (w *writer) close() {
	close(w.quit)
	<-w.stopped
	for _, s := range w.stmts {
		s.Close()
	}
}

func (w *writer) loop() {
	defer close(w.stopped)
	batch := make([]*op, 0, maxBatch)
	for {
		select {
		case o := <-w.queue:
			batch = append(batch, o)
		case <-w.quit:
			w.failPending(errClosed)
			return
		}
		// Let writers that are about to submit do so, so they share this
		// transaction instead of waiting for the next one.
		runtime.Gosched()
	gather:
		for len(batch) < maxBatch {
			select {
			case o := <-w.queue:
				batch = append(batch, o)
			default:
				break gather
			}
		}
		w.runBatch(batch)
		clear(batch)
		batch = batch[:0]
	}
}

func (w *writer) failPending(err error) {
	for {
		select {
		case o := <-w.queue:
			o.err = err
			o.done <- struct{}{}
		default:
			return
		}
	}
}

func (w *writer) runBatch(batch []*op) {
	live := batch[:0:0]
	for _, o := range batch {
		switch {
		case o.ctx.Err() != nil:
			o.err = o.ctx.Err()
			o.done <- struct{}{}
		case o.noTx:
			o.err = o.run(w)
			o.done <- struct{}{}
		default:
			live = append(live, o)
		}
	}
	if len(live) == 0 {
		return
	}
	err := w.exec0("BEGIN IMMEDIATE")
	if err == nil {
		single := len(live) == 1
		for _, o := range live {
			if single || !o.savepoint {
				// The transaction is the op's savepoint when it is alone;
				// otherwise an error that is not a refusal (which comes
				// before any write) fails the batch.
				if o.err = o.run(w); o.err != nil && !single {
					if _, ok := o.err.(refusal); !ok {
						err = o.err
						break
					}
				}
				continue
			}
			if err = w.exec0("SAVEPOINT op"); err != nil {
				break
			}
			o.err = o.run(w)
			if o.err != nil {
				if err = w.exec0("ROLLBACK TO op"); err != nil {
					break
				}
			}
			if err = w.exec0("RELEASE op"); err != nil {
				break
			}
		}
		if err == nil && single && live[0].err != nil {
			err = w.exec0("ROLLBACK")
			live[0].done <- struct{}{}
			if err != nil {
				w.recover()
			}
			return
		}
		if err == nil {
			failpoints(live, ".before-commit")
			if err = w.exec0("COMMIT"); err == nil {
				w.commits.Add(1)
				w.ops.Add(int64(len(live)))
				failpoints(live, ".after-commit")
			}
		}
	}
	if err != nil {
		w.recover()
		err = fmt.Errorf("docket: sqlite write: %w", err)
		for _, o := range live {
			o.err = err
		}
	}
	for _, o := range live {
		o.done <- struct{}{}
	}
}

// failpoints marks kind+suffix ("claim.before-commit") for each op of a
// batch (see package internal/failpoint); a no-op unless a fault test armed
// one.
func failpoints(batch []*op, suffix string) {
	if !failpoint.Enabled() {
		return
	}
	for _, o := range batch {
		if o.err == nil {
			failpoint.Hit(o.kind + suffix)
		}
	}
}

// recover rolls back whatever transaction may be open after a failure.
func (w *writer) recover() {
	w.conn.ExecContext(w.bg, "ROLLBACK") // error ignored: there may be no transaction
}

func (w *writer) exec0(query string) error {
	_, err := w.exec(w.bg, query)
	return err
}

func (w *writer) stmt(query string) (*sql.Stmt, error) {
	if s, ok := w.stmts[query]; ok {
		return s, nil
	}
	s, err := w.conn.PrepareContext(w.bg, query)
	if err != nil {
		return nil, err
	}
	w.stmts[query] = s
	return s, nil
}

// runner is what an operation needs from a connection: the writer (with
// cached prepared statements) or a caller's *sql.Tx.
type runner interface {
	exec(ctx context.Context, query string, args ...any) (sql.Result, error)
	query(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (w *writer) exec(_ context.Context, query string, args ...any) (sql.Result, error) {
	s, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	// SQL on the writer runs under a context that is never cancelled:
	// interrupting a statement would abort the whole shared transaction.
	return s.ExecContext(w.bg, args...)
}

func (w *writer) query(_ context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(w.bg, args...)
}

type txRunner struct{ tx *sql.Tx }

func (t txRunner) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.tx.ExecContext(ctx, query, args...)
}

func (t txRunner) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(ctx, query, args...)
}

var errClosed = transport.ErrClosed
