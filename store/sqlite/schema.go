package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// schemaVersion is the PRAGMA user_version this package writes. Migrations
// run in order inside one transaction; a file with a higher version was
// written by a newer docket and is refused.
const schemaVersion = 1

// migrations[i] moves the schema from version i to i+1.
var migrations = []string{
	// 1: the task table. run_at is the one timer column: the ETA while
	// scheduled, the due time (FIFO order) while ready, the lease deadline
	// while running and the prune time once terminal. Each state has its own
	// partial index, so claims, promotions, rescues and pruning are index
	// range scans at any queue depth.
	`CREATE TABLE docket_tasks (
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
	) STRICT;
	CREATE INDEX docket_tasks_ready ON docket_tasks (queue, priority DESC, run_at, id) WHERE state = 2;
	CREATE INDEX docket_tasks_timers ON docket_tasks (run_at) WHERE state IN (1, 3);
	CREATE INDEX docket_tasks_done ON docket_tasks (run_at) WHERE state >= 4;
	CREATE UNIQUE INDEX docket_tasks_unique ON docket_tasks (unique_key) WHERE unique_key IS NOT NULL AND state <= 3;
	-- Periodic schedules: one cursor row per schedule, and one row per slot
	-- that fired, unique forever, so any number of schedulers fire a slot once.
	CREATE TABLE docket_schedules (
		name         TEXT    NOT NULL PRIMARY KEY,
		spec         TEXT    NOT NULL,
		next_at      INTEGER NOT NULL,
		last_slot    INTEGER NOT NULL DEFAULT 0,
		last_fired   INTEGER NOT NULL DEFAULT 0,
		last_task_id TEXT,
		updated_at   INTEGER NOT NULL
	) STRICT;
	CREATE TABLE docket_schedule_runs (
		schedule TEXT    NOT NULL,
		slot     INTEGER NOT NULL,
		task_id  TEXT    NOT NULL,
		fired_at INTEGER NOT NULL,
		PRIMARY KEY (schedule, slot)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX docket_schedule_runs_fired ON docket_schedule_runs (fired_at);`,
}

// SchemaError reports a database file this version of docket cannot use.
type SchemaError struct {
	Version int // the file's user_version
	Reason  string
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("docket: sqlite schema version %d: %s", e.Version, e.Reason)
}

// migrate brings the schema to schemaVersion on the writer connection.
func migrate(ctx context.Context, conn *sql.Conn) error {
	var version int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("docket: read schema version: %w", err)
	}
	if version > schemaVersion {
		return &SchemaError{Version: version, Reason: fmt.Sprintf("newer than this docket supports (%d); upgrade docket", schemaVersion)}
	}
	if version == schemaVersion {
		return nil
	}
	var tables int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE name = 'docket_tasks'").Scan(&tables); err != nil {
		return fmt.Errorf("docket: read schema: %w", err)
	}
	if version != 0 && tables == 0 {
		return &SchemaError{Version: version, Reason: "user_version is set but docket's tables are missing; docket owns PRAGMA user_version of its file"}
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("docket: migrate: %w", err)
	}
	// Re-read inside the write lock: another process may have migrated.
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("docket: read schema version: %w", err)
	}
	for v := version; v < schemaVersion; v++ {
		if _, err := conn.ExecContext(ctx, migrations[v]); err != nil {
			conn.ExecContext(ctx, "ROLLBACK")
			return fmt.Errorf("docket: migrate schema to version %d: %w", v+1, err)
		}
	}
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
		conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("docket: write schema version: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("docket: migrate: %w", err)
	}
	return nil
}
