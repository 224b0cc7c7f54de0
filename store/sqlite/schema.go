package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/docketq/docket/transport"
)

// schemaVersion is the PRAGMA user_version this package writes. Migrations
// run in order inside one transaction; a file with a higher version was
// written by a newer docket and is refused.
const schemaVersion = 4

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
	// 2: the operations API. A task keeps its last owner after it ends,
	// records the attempts that ended without success (attempts, a JSON
	// array of at most transport.MaxAttemptRecords) and the latest
	// progress its handler reported in its current attempt (a claim
	// clears it). One index in (queue, state, id)
	// order serves the counts (a covering scan) and the listings (one
	// range per queue and state, in id order) of the scheduled and
	// finished tasks. It is the only index added to the task table, since
	// every index costs on each write that moves an entry, and it leaves
	// out the two hot states, ready and running: an enqueue of a task due
	// now and a claim never touch it (an enqueue with an ETA adds one
	// entry, a scheduled task), a finish adds one entry at the end of its (queue,
	// terminal state) range, a retry adds one and a promotion removes
	// one. Ready and running tasks are counted from docket_tasks_ready
	// and docket_tasks_timers and listed in primary-key order. Paused
	// queues have a row in docket_queues; running worker processes one in
	// docket_workers; docket_minutes counts outcomes per minute and queue,
	// written with the outcomes. A schedule can be paused and keeps the
	// message its slots enqueue.
	`ALTER TABLE docket_tasks ADD COLUMN attempts TEXT;
	ALTER TABLE docket_tasks ADD COLUMN progress BLOB;
	CREATE INDEX docket_tasks_admin ON docket_tasks (queue, state, id) WHERE state NOT IN (2, 3);
	CREATE TABLE docket_queues (
		name      TEXT    NOT NULL PRIMARY KEY,
		paused_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE TABLE docket_workers (
		id        TEXT    NOT NULL PRIMARY KEY,
		info      TEXT    NOT NULL,
		heartbeat INTEGER NOT NULL,
		expires   INTEGER NOT NULL
	) STRICT;
	CREATE TABLE docket_minutes (
		minute    INTEGER NOT NULL,
		queue     TEXT    NOT NULL,
		succeeded INTEGER NOT NULL DEFAULT 0,
		failed    INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (minute, queue)
	) STRICT, WITHOUT ROWID;
	ALTER TABLE docket_schedules ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE docket_schedules ADD COLUMN template BLOB;`,
	// 3: workflows (transport.FlowStep). A step row names its workflow
	// (the id of its last step), the step that takes its result and where,
	// how many predecessors it still waits for (state 8, waiting), how it
	// takes their results, and the collecting step its result leads to.
	// Two triggers advance a workflow in the statement that ends a step,
	// whichever statement it is (a finish, a claim that finds a task
	// expired or its worker lost, a cancel, an operator's action), so no
	// code path can forget to:
	//   - docket_flow_end, when a step reaches a terminal state, counts
	//     down its successor, or fails its branch, or fails the workflow;
	//   - docket_flow_join, when a step's count reaches zero, writes its
	//     arguments from its predecessors' rows and makes it ready (or, for
	//     a pass-through step, succeeded).
	// Steps ended because their workflow failed (cancelled), or because
	// another step of their branch failed (all but the branch's last),
	// carry flow_waits = -1, which keeps docket_flow_end from firing once
	// per such step: its work is done by the statement that ended them.
	// The arguments of a join are gathered from a subquery in slot order,
	// not with an ORDER BY inside the aggregate, which SQLite before 3.44
	// (the sqlite3 command of many systems) cannot read. The finished
	// tasks' index leaves out the waiting steps (state 8), which the
	// pruner never wants.
	// Workflow connections set PRAGMA recursive_triggers, so that a
	// pass-through step that succeeds advances its own successor.
	`ALTER TABLE docket_tasks ADD COLUMN flow TEXT;
	ALTER TABLE docket_tasks ADD COLUMN flow_next TEXT;
	ALTER TABLE docket_tasks ADD COLUMN flow_slot INTEGER NOT NULL DEFAULT -1;
	ALTER TABLE docket_tasks ADD COLUMN flow_waits INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE docket_tasks ADD COLUMN flow_mode INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE docket_tasks ADD COLUMN flow_catch TEXT;
	ALTER TABLE docket_tasks ADD COLUMN flow_branch INTEGER NOT NULL DEFAULT 0;
	DROP INDEX docket_tasks_done;
	CREATE INDEX docket_tasks_done ON docket_tasks (run_at) WHERE state >= 4 AND state <= 7;
	CREATE INDEX docket_tasks_flow ON docket_tasks (flow, id) WHERE flow IS NOT NULL;
	CREATE INDEX docket_tasks_flow_next ON docket_tasks (flow_next, flow_slot) WHERE flow_next IS NOT NULL;
	CREATE TRIGGER docket_flow_end AFTER UPDATE OF state ON docket_tasks
	WHEN new.flow IS NOT NULL AND new.flow_waits >= 0
		AND new.state BETWEEN 4 AND 7 AND old.state NOT BETWEEN 4 AND 7
	BEGIN
` + flowCountdownSQL + flowFailSQL + flowKeepSQL + `	END;
	CREATE TRIGGER docket_flow_join AFTER UPDATE OF flow_waits ON docket_tasks
	WHEN new.state = 8 AND new.flow_waits = 0
	BEGIN
		UPDATE docket_tasks SET payload = CAST(CASE WHEN new.flow_mode & 1 = 0 THEN
			(SELECT coalesce(CAST(p.result AS TEXT), 'null') FROM docket_tasks p WHERE p.flow_next = new.id)
		ELSE
			(SELECT json_group_array(CASE
				WHEN new.flow_mode & 2 = 0 THEN json(coalesce(CAST(p.result AS TEXT), 'null'))
				WHEN p.state = 4 THEN json_object('result', json(coalesce(CAST(p.result AS TEXT), 'null')))
				ELSE json_object('error', coalesce(p.error, 'ended ' || ` + stateNameSQL("p.state") + `)) END)
			FROM (SELECT state, result, error FROM docket_tasks WHERE flow_next = new.id ORDER BY flow_slot) p)
		END AS BLOB)
		WHERE id = new.id;
		UPDATE docket_tasks SET
			state = CASE WHEN flow_mode & 4 THEN 4 ELSE 2 END,
			result = CASE WHEN flow_mode & 4 THEN payload END,
			finished_at = CASE WHEN flow_mode & 4 THEN run_at ELSE 0 END,
			run_at = CASE WHEN flow_mode & 4 THEN run_at + ttl_ms ELSE run_at END
		WHERE id = new.id;
	END;`,
	// 4: workflows carried by a broker (transport.FlowOutbox). A step
	// enqueued with FlowPublish (flow_mode & 8) that its join made ready is
	// in the broker's outbox until Published clears the bit; the index
	// holds only those steps, so the relay's read costs nothing when it is
	// empty.
	//
	// The end of a step is split in two triggers, docket_flow_done for a
	// success and docket_flow_end for any other end, so that a success
	// does not step through the statements of a failure; and a success
	// makes a step with one predecessor whose result it takes as it is (a
	// chain's) ready in one statement, without docket_flow_join.
	`CREATE INDEX docket_tasks_outbox ON docket_tasks (id) WHERE state = 2 AND flow_mode & 8;
	DROP TRIGGER docket_flow_end;
	CREATE TRIGGER docket_flow_done AFTER UPDATE OF state ON docket_tasks
	WHEN new.flow IS NOT NULL AND new.flow_waits >= 0 AND new.state = 4 AND old.state NOT BETWEEN 4 AND 7
	BEGIN
		UPDATE docket_tasks SET flow_waits = 0, state = 2, run_at = new.finished_at,
			payload = CAST(coalesce(CAST(new.result AS TEXT), 'null') AS BLOB)
		WHERE id = new.flow_next AND state = 8 AND flow_waits = 1 AND flow_mode & 7 = 0;
` + flowCountdownSQL + flowKeepSQL + `	END;
	CREATE TRIGGER docket_flow_end AFTER UPDATE OF state ON docket_tasks
	WHEN new.flow IS NOT NULL AND new.flow_waits >= 0
		AND new.state BETWEEN 5 AND 7 AND old.state NOT BETWEEN 4 AND 7
	BEGIN
` + flowCountdownSQL + flowFailSQL + flowKeepSQL + `	END;`,
}

// The statements of the triggers that advance a workflow when a step
// ends (see migrations 3 and 4).
var (
	flowCountdownSQL = `		-- A success, or any end when the successor collects, counts down.
		UPDATE docket_tasks SET flow_waits = flow_waits - 1, run_at = new.finished_at
		WHERE id = new.flow_next AND state = 8 AND (new.state = 4 OR flow_mode & 2);
`
	flowFailSQL = `		-- Any other end inside a collecting step's branch ends the branch.
		-- Its other steps end quietly (flow_waits = -1: their own ends
		-- advance nothing), then its last step ends failed, and that end
		-- reports the error to the collecting step.
		UPDATE docket_tasks SET state = 5, flow_waits = -1, finished_at = new.finished_at,
			run_at = new.finished_at + ttl_ms,
			error = 'docket: step ' || new.id || ' (' || new.name || ') of its branch ended ' ||
				` + stateNameSQL("new.state") + ` || coalesce(': ' || new.error, '')
		WHERE new.state <> 4 AND new.flow_catch IS NOT NULL AND new.flow_next <> new.flow_catch
			AND flow = new.flow AND flow_catch = new.flow_catch AND flow_branch = new.flow_branch
			AND flow_next <> new.flow_catch AND state IN (1, 2, 8);
		UPDATE docket_tasks SET state = 5, finished_at = new.finished_at,
			run_at = new.finished_at + ttl_ms,
			error = 'docket: step ' || new.id || ' (' || new.name || ') of its branch ended ' ||
				` + stateNameSQL("new.state") + ` || coalesce(': ' || new.error, '')
		WHERE new.state <> 4 AND new.flow_catch IS NOT NULL AND new.flow_next <> new.flow_catch
			AND flow_next = new.flow_catch AND flow_branch = new.flow_branch AND flow = new.flow
			AND state IN (1, 2, 8);
		UPDATE docket_tasks SET cancel = 1
		WHERE new.state <> 4 AND new.flow_catch IS NOT NULL AND new.flow_next <> new.flow_catch
			AND flow = new.flow AND flow_catch = new.flow_catch AND flow_branch = new.flow_branch
			AND state = 3;
		-- Any other end outside one fails the workflow: its last step
		-- fails with the cause, the rest is cancelled.
		UPDATE docket_tasks SET state = 5, finished_at = new.finished_at,
			run_at = new.finished_at + ttl_ms,
			error = 'docket: workflow step ' || new.id || ' (' || new.name || ') ended ' ||
				` + stateNameSQL("new.state") + ` || coalesce(': ' || new.error, '')
		WHERE new.state <> 4 AND new.flow_catch IS NULL AND id = new.flow AND id <> new.id
			AND state IN (1, 2, 8);
		UPDATE docket_tasks SET state = 6, flow_waits = -1, finished_at = new.finished_at,
			run_at = new.finished_at + ttl_ms,
			error = 'docket: cancelled: workflow step ' || new.id || ' (' || new.name || ') ended ' ||
				` + stateNameSQL("new.state") + `
		WHERE new.state <> 4 AND new.flow_catch IS NULL AND flow = new.flow AND state IN (1, 2, 8);
		UPDATE docket_tasks SET cancel = 1
		WHERE new.state <> 4 AND new.flow_catch IS NULL AND flow = new.flow AND state = 3;
`
	flowKeepSQL = `		-- The workflow's end keeps all its steps as long as its last one.
		UPDATE docket_tasks SET run_at = new.run_at
		WHERE new.id = new.flow AND flow = new.flow AND state BETWEEN 4 AND 7 AND id <> new.id;
`
)

// stateNameSQL is the SQL expression naming the state in expr, a
// terminal one.
func stateNameSQL(expr string) string {
	return "CASE " + expr + " WHEN 4 THEN 'succeeded' WHEN 5 THEN 'failed' WHEN 6 THEN 'cancelled' WHEN 7 THEN 'expired' ELSE 'not ended' END"
}

// SchemaError reports a database file this version of docket cannot use:
// another application's database, or one written by a newer docket. It
// matches transport.ErrIncompatible (docket.ErrIncompatible).
type SchemaError struct {
	Version int // the file's user_version
	Reason  string
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("docket: sqlite schema version %d: %s", e.Version, e.Reason)
}

// Unwrap returns transport.ErrIncompatible.
func (e *SchemaError) Unwrap() error { return transport.ErrIncompatible }

// checkSchema decides whether docket may use a file with this user_version
// and these tables (docket's own and others). A file with tables docket did
// not create and none of docket's is another application's database: it is
// refused unless shared is set, so a mistyped path never adds tables to (or
// switches the journal of) somebody else's file. Tables an application added
// to docket's file later are fine.
func checkSchema(version int, tables []string, shared bool) error {
	var docket bool
	var foreign []string
	for _, t := range tables {
		if t == "docket_tasks" {
			docket = true
		}
		if !strings.HasPrefix(t, "docket_") {
			foreign = append(foreign, t)
		}
	}
	switch {
	case version > schemaVersion && docket:
		return &SchemaError{Version: version, Reason: fmt.Sprintf("newer than this docket supports (%d); upgrade docket", schemaVersion)}
	case version != 0 && !docket:
		return &SchemaError{Version: version, Reason: "user_version was not written by docket: this is another application's database (docket owns PRAGMA user_version of its file)"}
	case version == 0 && len(foreign) > 0 && !shared:
		if len(foreign) > 3 {
			foreign = append(foreign[:3], "…")
		}
		return &SchemaError{Version: version, Reason: fmt.Sprintf("the file holds tables docket did not create (%s): it is another application's database; to keep docket's tables beside them, open it with ?shared=true (Options.Shared)", strings.Join(foreign, ", "))}
	}
	return nil
}

// readSchema returns the file's user_version and table names.
func readSchema(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}) (int, []string, error) {
	var version int
	if err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return 0, nil, fmt.Errorf("docket: read schema version: %w", classify(err))
	}
	rows, err := q.QueryContext(ctx, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		return 0, nil, fmt.Errorf("docket: read schema: %w", classify(err))
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return 0, nil, fmt.Errorf("docket: read schema: %w", classify(err))
		}
		tables = append(tables, name)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("docket: read schema: %w", classify(err))
	}
	return version, tables, nil
}

// inspect reads the file's schema on a plain connection, without the
// pragmas docket sets (WAL, auto_vacuum), and refuses a file docket must not
// touch before anything is written to it.
func inspect(ctx context.Context, o Options) error {
	db, err := sql.Open("sqlite", plainDSN(o))
	if err != nil {
		return fmt.Errorf("docket: open sqlite: %w", err)
	}
	defer db.Close()
	version, tables, err := readSchema(ctx, db)
	if err != nil {
		return fmt.Errorf("docket: open sqlite %s: %w", o.Path, err)
	}
	return checkSchema(version, tables, o.Shared)
}

// migrate brings the schema to schemaVersion on the writer connection.
func migrate(ctx context.Context, conn *sql.Conn, shared bool) error {
	var version int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("docket: read schema version: %w", classify(err))
	}
	if version == schemaVersion {
		return nil // inspect checked the file before it was opened
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("docket: migrate: %w", err)
	}
	// Read and check again inside the write lock: another process may
	// have migrated (or written a newer schema) since.
	version, tables, err := readSchema(ctx, conn)
	if err == nil {
		err = checkSchema(version, tables, shared)
	}
	if err != nil {
		conn.ExecContext(ctx, "ROLLBACK")
		return err
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
