package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"path/filepath"
	"time"

	"github.com/oklog/ulid/v2"
)

// sqliteRawSystem is the floor a queue on SQLite is compared with: the rows
// docket writes for an enqueue, inserted into a table with docket's columns
// and primary key and nothing else (no secondary index, no queue
// machinery), on the same driver and pragmas (sqliteDSN) through one
// connection. It only enqueues.
type sqliteRawSystem struct{}

func (sqliteRawSystem) Name() string                        { return "sqlite-raw" }
func (sqliteRawSystem) Available(ctx context.Context) error { return nil }
func (sqliteRawSystem) dbFile() string                      { return "raw.db" }

func (sqliteRawSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return sqliteStorage(ctx, filepath.Join(dir, sqliteRawSystem{}.dbFile()))
}

// Unsupported: a table takes part in the enqueue rows only.
func (sqliteRawSystem) Unsupported(measurement string) error {
	switch measurement {
	case "enq1", "enq8", "batch":
		return nil
	}
	return &NA{Reason: "a table, not a queue: the floor for enqueue only"}
}

// rawSchema is docket_tasks as docket's schema (store/sqlite/schema.go)
// creates it, columns, STRICT and primary key, without its four partial
// indexes.
const rawSchema = `CREATE TABLE IF NOT EXISTS docket_tasks (
	id           TEXT    NOT NULL PRIMARY KEY,
	name         TEXT    NOT NULL,
	queue        TEXT    NOT NULL,
	state        INTEGER NOT NULL,
	priority     INTEGER NOT NULL DEFAULT 0,
	run_at       INTEGER NOT NULL,
	expires_at   INTEGER NOT NULL DEFAULT 0,
	attempt      INTEGER NOT NULL DEFAULT 0,
	max_attempts INTEGER NOT NULL,
	timeout_ms   INTEGER NOT NULL DEFAULT 0,
	ttl_ms       INTEGER NOT NULL,
	owner        TEXT,
	cancel       INTEGER NOT NULL DEFAULT 0,
	unique_key   TEXT,
	payload      BLOB    NOT NULL,
	meta         TEXT,
	result       BLOB,
	error        TEXT,
	created_at   INTEGER NOT NULL,
	started_at   INTEGER NOT NULL DEFAULT 0,
	finished_at  INTEGER NOT NULL DEFAULT 0
) STRICT`

// rawInsert binds the columns docket's insert binds, in its order.
const rawInsert = `INSERT INTO docket_tasks
	(id, name, queue, state, priority, run_at, expires_at, max_attempts, timeout_ms, ttl_ms,
	 unique_key, payload, meta, created_at, finished_at, error)
	VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`

// The values docket writes for the harness's task ("bench.noop" with
// IgnoreResult and otherwise default options): ready (state 2) in the
// default queue, 4 attempts (3 retries), a result TTL of 24 h, and the
// metadata docket records for IgnoreResult.
const (
	rawName        = "bench.noop"
	rawQueue       = "default"
	rawStateReady  = 2
	rawMaxAttempts = 4
	rawTTLMillis   = int64(24 * time.Hour / time.Millisecond)
	rawMeta        = `{"ir":true}`
)

type sqliteRawInstance struct {
	db   *sql.DB
	stmt *sql.Stmt
}

func (sqliteRawSystem) Open(ctx context.Context, o Options) (Instance, error) {
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(o.Dir, sqliteRawSystem{}.dbFile())))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, rawSchema); err != nil {
		db.Close()
		return nil, err
	}
	stmt, err := db.PrepareContext(ctx, rawInsert)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &sqliteRawInstance{db: db, stmt: stmt}, nil
}

// insert writes one row through stmt: a fresh ULID, now in milliseconds,
// and the payload docket's task encodes for stamp (its arguments as JSON:
// {} when zero).
func (r *sqliteRawInstance) insert(ctx context.Context, stmt *sql.Stmt, stamp int64) error {
	payload, err := json.Marshal(stampArgs{T: stamp})
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	_, err = stmt.ExecContext(ctx, ulid.Make().String(), rawName, rawQueue, rawStateReady, 0, now, 0,
		rawMaxAttempts, 0, rawTTLMillis, nil, payload, rawMeta, now, 0, nil)
	return err
}

// Enqueue inserts one row in autocommit.
func (r *sqliteRawInstance) Enqueue(ctx context.Context, stamp int64) error {
	return r.insert(ctx, r.stmt, stamp)
}

// EnqueueBatch inserts n rows in one BEGIN IMMEDIATE transaction (the
// DSN's _txlock) with the prepared statement.
func (r *sqliteRawInstance) EnqueueBatch(ctx context.Context, n int) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmt := tx.StmtContext(ctx, r.stmt)
	for range n {
		if err := r.insert(ctx, stmt, 0); err != nil {
			return err
		}
	}
	return tx.Commit()
}

var errRawNoWorkers = &NA{Reason: "a table, not a queue: nothing runs its rows"}

func (r *sqliteRawInstance) Start(ctx context.Context) error { return errRawNoWorkers }
func (r *sqliteRawInstance) Stop(ctx context.Context) error  { return nil }

func (r *sqliteRawInstance) Unfinished(ctx context.Context) (bool, error) {
	return false, errRawNoWorkers
}

func (r *sqliteRawInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	return "", nil, errRawNoWorkers
}

func (r *sqliteRawInstance) Close() error {
	return errors.Join(r.stmt.Close(), r.db.Close())
}
