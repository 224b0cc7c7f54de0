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
// transaction, each inside its own savepoint, and commits once (group
// commit). An op that fails rolls back to its savepoint alone; a failed
// commit fails every op of the batch. Callers always learn a definite
// outcome: an op that was skipped because its ctx ended reports ctx.Err().

// maxBatch bounds how many ops share one transaction, so a flood of writers
// cannot hold the write lock for long.
const maxBatch = 256

type op struct {
	ctx  context.Context
	kind string // enqueue, claim, extend, finish, cancel, prune, schedule: names failpoints
	run  func(r runner) error
	noTx bool // runs outside any transaction (PRAGMA data_version)
	err  error
	done chan struct{}
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
func (w *writer) do(ctx context.Context, kind string, fn func(r runner) error) error {
	return w.submit(ctx, kind, fn, false)
}

// doNoTx runs fn on the writer connection outside any transaction.
func (w *writer) doNoTx(ctx context.Context, fn func(r runner) error) error {
	return w.submit(ctx, "", fn, true)
}

func (w *writer) submit(ctx context.Context, kind string, fn func(r runner) error, noTx bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := opPool.Get().(*op)
	o.ctx, o.kind, o.run, o.noTx, o.err = ctx, kind, fn, noTx, nil
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
			if single || !o.mayRefuse() {
				// The transaction is the op's savepoint: an op that cannot
				// refuse fails only on an I/O error, which fails the batch.
				if o.err = o.run(w); o.err != nil && !single {
					err = o.err
					break
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

// mayRefuse reports whether the op can fail for its own reasons (a
// duplicate task, a schedule cursor that moved, no task to cancel); such
// ops run in a savepoint so that the rest of the batch commits.
func (o *op) mayRefuse() bool {
	return o.kind == "enqueue" || o.kind == "schedule" || o.kind == "cancel"
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
