package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// Attempt records. Each task row keeps, in its attempts column, a JSON
// array of the attempts that ended without success, appended by the same
// UPDATE that ends the attempt (a success appends nothing). Past
// transport.MaxAttemptRecords the second record is dropped: the first and
// the latest ones stay.

// attemptRecord is one element of the attempts column.
type attemptRecord struct {
	N        int     `json:"n"`
	Owner    *string `json:"o"`
	Started  int64   `json:"s"`
	Finished int64   `json:"f"`
	State    int     `json:"st"`
	Error    *string `json:"e"`
}

// appendAttempt is the SQL expression of the attempts column with one
// record appended for the row's current attempt (its old values in an
// UPDATE): state and errExpr are SQL expressions of the state the task
// moves to and the attempt's error, now the expression of the time.
func appendAttempt(state, errExpr, now string) string {
	return `json_insert(CASE WHEN json_array_length(coalesce(attempts, '[]')) >= ` + strconv.Itoa(transport.MaxAttemptRecords) +
		` THEN json_remove(attempts, '$[1]') ELSE coalesce(attempts, '[]') END, '$[#]', json_object('n', attempt, 'o', owner, 's', started_at, 'f', ` +
		now + `, 'st', ` + state + `, 'e', ` + errExpr + `))`
}

// decodeAttempts reads the attempts column (empty when none ended).
func decodeAttempts(raw string) ([]transport.Attempt, error) {
	if raw == "" {
		return nil, nil
	}
	var recs []attemptRecord
	if err := json.Unmarshal([]byte(raw), &recs); err != nil {
		return nil, fmt.Errorf("docket: decode attempt records: %w: %v", transport.ErrIncompatible, err)
	}
	out := make([]transport.Attempt, len(recs))
	for i, r := range recs {
		a := transport.Attempt{N: r.N, Started: wire.FromMillis(r.Started), Finished: wire.FromMillis(r.Finished), State: transport.State(r.State)}
		if r.Owner != nil {
			a.Owner = *r.Owner
		}
		if r.Error != nil {
			a.Error = *r.Error
		}
		out[i] = a
	}
	return out, nil
}

// Outcomes per minute. docket_minutes counts, per minute and queue, the
// attempts that succeeded and those that failed (retried or final),
// written in the transaction that records them, with one upsert per
// (minute, queue) of a writer op rather than one per task.

const minuteMillis = 60_000

// minuteOf is the start of now's minute, in Unix milliseconds.
func minuteOf(now int64) int64 { return now - ((now%minuteMillis)+minuteMillis)%minuteMillis }

const upsertMinuteSQL = `INSERT INTO docket_minutes (minute, queue, succeeded, failed) VALUES (?, ?, ?, ?)
	ON CONFLICT (minute, queue) DO UPDATE SET succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed`

type minuteKey struct {
	minute int64
	queue  string
}

// minuteCounts gathers outcomes of one writer op by minute and queue.
type minuteCounts struct{ m map[minuteKey][2]int64 }

func (c *minuteCounts) add(now int64, queue string, succeeded, failed int64) {
	if c.m == nil {
		c.m = map[minuteKey][2]int64{}
	}
	k := minuteKey{minuteOf(now), queue}
	v := c.m[k]
	v[0] += succeeded
	v[1] += failed
	c.m[k] = v
}

// write adds the gathered counts to docket_minutes.
func (c *minuteCounts) write(ctx context.Context, r runner) error {
	for k, v := range c.m {
		if _, err := r.exec(ctx, upsertMinuteSQL, k.minute, k.queue, v[0], v[1]); err != nil {
			return fmt.Errorf("docket: count outcomes: %w", err)
		}
	}
	return nil
}

// finishCounts gathers the outcomes of one Finish op, by queue. An
// outcome that does not name its queue is looked up by id.
type finishCounts struct {
	byQueue           map[string]*[2]int64 // succeeded, failed
	succeeded, failed []string             // ids of outcomes without a queue
}

func (c *finishCounts) add(o transport.Outcome) {
	var i int
	switch o.State {
	case transport.StateSucceeded:
		i = 0
	case transport.StateFailed, transport.StateScheduled:
		i = 1
	default:
		return
	}
	if o.Queue == "" {
		if i == 0 {
			c.succeeded = append(c.succeeded, o.ID)
		} else {
			c.failed = append(c.failed, o.ID)
		}
		return
	}
	if c.byQueue == nil {
		c.byQueue = map[string]*[2]int64{}
	}
	n := c.byQueue[o.Queue]
	if n == nil {
		n = new([2]int64)
		c.byQueue[o.Queue] = n
	}
	n[i]++
}

// addMinutesSQL adds to one queue's outcome counts of a minute: ?1 the
// minute, ?2 the queue, ?3 and ?4 the succeeded and failed attempts.
const addMinutesSQL = `INSERT INTO docket_minutes (minute, queue, succeeded, failed) VALUES (?1, ?2, ?3, ?4)
	ON CONFLICT (minute, queue) DO UPDATE SET succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed`

// finishMinutesSQL adds outcomes whose queue is unknown: ?1 the minute,
// ?2 and ?3 the JSON arrays of succeeded and failed task ids.
const finishMinutesSQL = `INSERT INTO docket_minutes (minute, queue, succeeded, failed)
	SELECT ?1, t.queue, sum(j.ok), sum(1 - j.ok)
	FROM (SELECT value AS id, 1 AS ok FROM json_each(?2) UNION ALL SELECT value, 0 FROM json_each(?3)) j
	JOIN docket_tasks t ON t.id = j.id
	WHERE true GROUP BY t.queue
	ON CONFLICT (minute, queue) DO UPDATE SET succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed`

func (c *finishCounts) write(ctx context.Context, r runner, now int64) error {
	minute := minuteOf(now)
	for queue, n := range c.byQueue {
		if _, err := r.exec(ctx, addMinutesSQL, minute, queue, n[0], n[1]); err != nil {
			return fmt.Errorf("docket: count outcomes: %w", err)
		}
	}
	if len(c.succeeded)+len(c.failed) == 0 {
		return nil
	}
	ok, _ := json.Marshal(c.succeeded)
	failed, _ := json.Marshal(c.failed)
	if c.succeeded == nil {
		ok = []byte("[]")
	}
	if c.failed == nil {
		failed = []byte("[]")
	}
	if _, err := r.exec(ctx, finishMinutesSQL, minute, string(ok), string(failed)); err != nil {
		return fmt.Errorf("docket: count outcomes: %w", err)
	}
	return nil
}

// minuteHistory is how long outcome counts are kept.
const minuteHistory = 2 * time.Hour

// pruneAdmin forgets outcome counts older than minuteHistory and workers
// whose heartbeat expired, in Prune's op.
func pruneAdmin(ctx context.Context, r runner, now int64) error {
	if _, err := r.exec(ctx, "DELETE FROM docket_minutes WHERE minute < ?", now-minuteHistory.Milliseconds()); err != nil {
		return fmt.Errorf("docket: prune outcome counts: %w", err)
	}
	if _, err := r.exec(ctx, "DELETE FROM docket_workers WHERE expires < ?", now); err != nil {
		return fmt.Errorf("docket: prune workers: %w", err)
	}
	return nil
}

// readTx starts a read transaction on the read pool (a plain BEGIN: the
// pool's connections otherwise begin IMMEDIATE), so that every statement
// of a Stats or Search call sees one snapshot.
func (s *Store) readTx(ctx context.Context) (*sql.Tx, error) {
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, classify(err)
	}
	return tx, nil
}

// Stats queries. Each count reads an index that holds only the tasks of
// the states it counts:
//
//   - scheduled and finished tasks: a covering scan of docket_tasks_admin,
//     which leaves out ready and running tasks;
//   - ready tasks: a covering scan of docket_tasks_ready, queue first;
//   - running tasks: the rowids of docket_tasks_timers, which holds the
//     scheduled and running tasks, less those of the scheduled tasks,
//     read from docket_tasks_admin (?1 lists the queues that have any):
//     two reads of indexes alone (the CROSS JOIN keeps the seek per
//     queue, whatever the planner's statistics say), with a row lookup
//     (for the queue) only for the running tasks, at most as many as the
//     workers' capacity.
//
// The retrying counts read the scheduled tasks of each queue that has
// any; the oldest ready task of a queue is one seek per priority level
// present in the ready index, found by skipping from level to level. The
// terms adminIndexCond and "state IN (1, 3)" are the WHERE clauses of the
// partial indexes, written out so that the planner may use them.
const (
	statsCountSQL   = `SELECT queue, state, count(*) FROM docket_tasks WHERE ` + adminIndexCond + ` GROUP BY queue, state`
	statsReadySQL   = `SELECT queue, count(*) FROM docket_tasks WHERE state = 2 GROUP BY queue`
	statsRunningSQL = `SELECT queue, count(*) FROM docket_tasks
		WHERE rowid IN (SELECT rowid FROM docket_tasks WHERE state IN (1, 3) AND rowid NOT IN
			(SELECT t.rowid FROM json_each(?1) j CROSS JOIN docket_tasks t ON t.queue = j.value AND t.` + adminIndexCond + ` AND t.state = 1))
		AND state = 3
		GROUP BY queue`
	statsRetryingSQL = `SELECT j.value, (SELECT count(*) FROM docket_tasks WHERE queue = j.value AND ` + adminIndexCond + ` AND state = 1 AND attempt > 0)
		FROM json_each(?) j`
	statsOldestReadySQL = `WITH RECURSIVE p(pr) AS (
			SELECT (SELECT priority FROM docket_tasks WHERE state = 2 AND queue = ?1 ORDER BY priority DESC LIMIT 1)
			UNION ALL
			SELECT (SELECT priority FROM docket_tasks WHERE state = 2 AND queue = ?1 AND priority < p.pr ORDER BY priority DESC LIMIT 1)
			FROM p WHERE p.pr IS NOT NULL
		)
		SELECT min((SELECT run_at FROM docket_tasks WHERE state = 2 AND queue = ?1 AND priority = p.pr ORDER BY run_at LIMIT 1))
		FROM p WHERE p.pr IS NOT NULL`
	statsHistorySQL = `SELECT minute, queue, succeeded, failed FROM docket_minutes WHERE minute > ? ORDER BY minute, queue`
)

// historyMinutes is how many minutes Stats reports, the current one
// included.
const historyMinutes = 60

// Stats implements transport.Stater from the read pool, in one snapshot.
func (s *Store) Stats(ctx context.Context, p transport.StatsParams) (transport.Stats, error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return transport.Stats{}, fmt.Errorf("docket: stats: %w", err)
	}
	defer tx.Rollback()
	st, err := readStats(ctx, tx, wire.Millis(p.Now))
	if err != nil {
		return transport.Stats{}, fmt.Errorf("docket: stats: %w", classify(err))
	}
	return st, nil
}

func readStats(ctx context.Context, tx *sql.Tx, now int64) (transport.Stats, error) {
	var st transport.Stats
	byQueue := map[string]map[transport.State]int64{}
	add := func(queue string, state transport.State, n int64) {
		counts, ok := byQueue[queue]
		if !ok {
			counts = make(map[transport.State]int64, 7)
			for s := transport.StateScheduled; s <= transport.StateWaiting; s++ {
				counts[s] = 0
			}
			byQueue[queue] = counts
		}
		if state.Valid() {
			counts[state] += n
		}
	}
	rows, err := tx.QueryContext(ctx, statsCountSQL)
	if err != nil {
		return st, err
	}
	for rows.Next() {
		var queue string
		var state transport.State
		var n int64
		if err := rows.Scan(&queue, &state, &n); err != nil {
			rows.Close()
			return st, err
		}
		add(queue, state, n)
	}
	if err := closeRows(rows); err != nil {
		return st, err
	}
	var scheduled []string
	for queue, counts := range byQueue {
		if counts[transport.StateScheduled] > 0 {
			scheduled = append(scheduled, queue)
		}
	}
	withScheduled, _ := json.Marshal(scheduled)
	if scheduled == nil {
		withScheduled = []byte("[]")
	}
	for _, c := range []struct {
		query string
		args  []any
		state transport.State
	}{{statsReadySQL, nil, transport.StateReady}, {statsRunningSQL, []any{string(withScheduled)}, transport.StateRunning}} {
		rows, err := tx.QueryContext(ctx, c.query, c.args...)
		if err != nil {
			return st, err
		}
		for rows.Next() {
			var queue string
			var n int64
			if err := rows.Scan(&queue, &n); err != nil {
				rows.Close()
				return st, err
			}
			add(queue, c.state, n)
		}
		if err := closeRows(rows); err != nil {
			return st, err
		}
	}
	names := make([]string, 0, len(byQueue))
	for queue := range byQueue {
		names = append(names, queue)
	}
	slices.Sort(names)
	index := make(map[string]int, len(names))
	var ready []string
	for i, queue := range names {
		index[queue] = i
		st.Queues = append(st.Queues, transport.QueueStats{Queue: queue, Counts: byQueue[queue]})
		if byQueue[queue][transport.StateReady] > 0 {
			ready = append(ready, queue)
		}
	}
	if len(scheduled) > 0 {
		rows, err := tx.QueryContext(ctx, statsRetryingSQL, string(withScheduled))
		if err != nil {
			return st, err
		}
		for rows.Next() {
			var queue string
			var n int64
			if err := rows.Scan(&queue, &n); err != nil {
				rows.Close()
				return st, err
			}
			q := &st.Queues[index[queue]]
			q.Retrying = n
			q.Counts[transport.StateScheduled] -= n
		}
		if err := closeRows(rows); err != nil {
			return st, err
		}
	}
	if len(ready) > 0 {
		stmt, err := tx.PrepareContext(ctx, statsOldestReadySQL)
		if err != nil {
			return st, err
		}
		defer stmt.Close()
		for _, queue := range ready {
			var oldest sql.NullInt64
			if err := stmt.QueryRowContext(ctx, queue).Scan(&oldest); err != nil {
				return st, err
			}
			if oldest.Valid {
				st.Queues[index[queue]].OldestReady = wire.FromMillis(oldest.Int64)
			}
		}
	}
	rows, err = tx.QueryContext(ctx, statsHistorySQL, minuteOf(now)-historyMinutes*minuteMillis)
	if err != nil {
		return st, err
	}
	for rows.Next() {
		var m transport.MinuteStats
		var minute int64
		if err := rows.Scan(&minute, &m.Queue, &m.Succeeded, &m.Failed); err != nil {
			rows.Close()
			return st, err
		}
		m.Minute = wire.FromMillis(minute)
		st.History = append(st.History, m)
	}
	if err := closeRows(rows); err != nil {
		return st, err
	}
	if st.History == nil {
		st.History = []transport.MinuteStats{}
	}
	return st, nil
}

// Act statements, each for one task and guarded by the states the action
// applies to (transport.Action.Applies), so that a task in another state
// is left alone. A retry also leaves a task whose unique key another
// unfinished task holds now: the unique index would refuse it, and a
// workflow step: its workflow has moved on (a retried member would count
// towards a join twice, a retried body would run without its arguments).
const (
	actRetrySQL = `UPDATE docket_tasks SET state = 2, run_at = ?1, max_attempts = attempt + ?2, expires_at = 0,
		finished_at = 0, result = NULL, cancel = 0
		WHERE id = ?3 AND state IN (5, 6, 7) AND flow IS NULL AND (unique_key IS NULL OR NOT EXISTS
			(SELECT 1 FROM docket_tasks u WHERE u.unique_key = docket_tasks.unique_key AND u.state <= 3))`
	actCancelSQL = `UPDATE docket_tasks SET
		state = CASE WHEN state IN (1, 2, 8) THEN 6 ELSE state END,
		cancel = CASE WHEN state = 3 THEN 1 ELSE cancel END,
		finished_at = CASE WHEN state IN (1, 2, 8) THEN ?1 ELSE finished_at END,
		run_at = CASE WHEN state IN (1, 2, 8) THEN ?1 + ttl_ms ELSE run_at END,
		error = CASE WHEN state IN (1, 2, 8) THEN 'cancelled before start' ELSE error END
		WHERE id = ?2 AND (state <= 3 OR state = 8)`
	actDeleteSQL = `DELETE FROM docket_tasks WHERE id = ? AND state NOT IN (3, 8) AND ` + flowOverSQL
	actRunNowSQL = `UPDATE docket_tasks SET state = 2, run_at = ?1 WHERE id = ?2 AND state = 1`
)

// Act implements transport.Admin: one writer op for all ids.
func (s *Store) Act(ctx context.Context, p transport.ActParams) (transport.ActResult, error) {
	var query string
	switch p.Action {
	case transport.ActionRetry:
		if p.Attempts < 1 {
			return transport.ActResult{}, fmt.Errorf("%w: a retry needs at least 1 attempt, not %d", transport.ErrInvalid, p.Attempts)
		}
		query = actRetrySQL
	case transport.ActionCancel:
		query = actCancelSQL
	case transport.ActionDelete:
		query = actDeleteSQL
	case transport.ActionRunNow:
		query = actRunNowSQL
	default:
		return transport.ActResult{}, fmt.Errorf("%w: unknown action %d", transport.ErrInvalid, p.Action)
	}
	if len(p.IDs) == 0 {
		return transport.ActResult{}, nil
	}
	now := wire.Millis(p.Now)
	var res transport.ActResult
	err := s.w.do(ctx, "act", func(r runner) error {
		res = transport.ActResult{}
		for _, id := range p.IDs {
			var err error
			switch p.Action {
			case transport.ActionRetry:
				err = execOne(ctx, r, query, now, p.Attempts, id)
			case transport.ActionDelete:
				err = execOne(ctx, r, query, id)
			default:
				err = execOne(ctx, r, query, now, id)
			}
			switch {
			case err == nil:
				res.Changed = append(res.Changed, id)
				continue
			case isConstraint(err):
				// The statement undid itself; the task stays as it was.
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("docket: %s task %s: %w", p.Action, id, err)
			}
			var one int
			err = queryOne(ctx, r, []any{&one}, "SELECT 1 FROM docket_tasks WHERE id = ?", id)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				res.Missing++
			case err != nil:
				return fmt.Errorf("docket: %s task %s: %w", p.Action, id, err)
			default:
				res.Skipped++
			}
		}
		return nil
	})
	if err != nil {
		return transport.ActResult{}, err
	}
	return res, nil
}

// Paused implements transport.Admin.
func (s *Store) Paused(ctx context.Context, p transport.PausedParams) ([]transport.QueuePause, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT name, paused_at FROM docket_queues ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("docket: read paused queues: %w", classify(err))
	}
	defer rows.Close()
	var out []transport.QueuePause
	for rows.Next() {
		var qp transport.QueuePause
		var since int64
		if err := rows.Scan(&qp.Queue, &since); err != nil {
			return nil, fmt.Errorf("docket: read paused queues: %w", err)
		}
		qp.Since = wire.FromMillis(since)
		out = append(out, qp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: read paused queues: %w", classify(err))
	}
	return out, nil
}

// SetPaused implements transport.Admin. Pausing a paused queue keeps the
// time it was first paused.
func (s *Store) SetPaused(ctx context.Context, p transport.SetPausedParams) error {
	if p.Queue == "" {
		return fmt.Errorf("%w: pause: empty queue name", transport.ErrInvalid)
	}
	return s.w.do(ctx, "admin", func(r runner) error {
		var err error
		if p.Paused {
			_, err = r.exec(ctx, "INSERT INTO docket_queues (name, paused_at) VALUES (?, ?) ON CONFLICT DO NOTHING", p.Queue, wire.Millis(p.Now))
		} else {
			_, err = r.exec(ctx, "DELETE FROM docket_queues WHERE name = ?", p.Queue)
		}
		if err != nil {
			return fmt.Errorf("docket: pause queue %s: %w", p.Queue, err)
		}
		return nil
	})
}

// Heartbeat implements transport.Admin.
func (s *Store) Heartbeat(ctx context.Context, p transport.HeartbeatParams) error {
	w := p.Worker
	if w.ID == "" {
		return fmt.Errorf("%w: heartbeat: empty worker id", transport.ErrInvalid)
	}
	info, err := wire.EncodeWorker(&w)
	if err != nil {
		return fmt.Errorf("docket: heartbeat: %w", err)
	}
	return s.w.do(ctx, "admin", func(r runner) error {
		var err error
		if p.Gone {
			_, err = r.exec(ctx, "DELETE FROM docket_workers WHERE id = ?", w.ID)
		} else {
			_, err = r.exec(ctx, `INSERT INTO docket_workers (id, info, heartbeat, expires) VALUES (?, ?, ?, ?)
				ON CONFLICT (id) DO UPDATE SET info = excluded.info, heartbeat = excluded.heartbeat, expires = excluded.expires`,
				w.ID, string(info), wire.Millis(w.Heartbeat), wire.Millis(w.Expires))
		}
		if err != nil {
			return fmt.Errorf("docket: heartbeat of worker %s: %w", w.ID, err)
		}
		return nil
	})
}

// Workers implements transport.Admin.
func (s *Store) Workers(ctx context.Context, p transport.WorkersParams) ([]transport.WorkerInfo, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT id, info, heartbeat, expires FROM docket_workers WHERE expires > ? ORDER BY id", wire.Millis(p.Now))
	if err != nil {
		return nil, fmt.Errorf("docket: read workers: %w", classify(err))
	}
	defer rows.Close()
	var out []transport.WorkerInfo
	for rows.Next() {
		var id, info string
		var beat, expires int64
		if err := rows.Scan(&id, &info, &beat, &expires); err != nil {
			return nil, fmt.Errorf("docket: read workers: %w", err)
		}
		w, err := wire.DecodeWorker([]byte(info))
		if err != nil {
			return nil, fmt.Errorf("docket: read worker %s: %w", id, err)
		}
		w.ID, w.Heartbeat, w.Expires = id, wire.FromMillis(beat), wire.FromMillis(expires)
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: read workers: %w", classify(err))
	}
	return out, nil
}

const progressSQL = `UPDATE docket_tasks SET progress = ? WHERE id = ? AND state = 3 AND attempt = ? AND owner = ?`

// SetProgress implements transport.Admin, fenced on the lease.
func (s *Store) SetProgress(ctx context.Context, p transport.ProgressParams) (transport.ProgressResult, error) {
	var res transport.ProgressResult
	err := s.w.do(ctx, "progress", func(r runner) error {
		err := execOne(ctx, r, progressSQL, p.Value, p.Lease.ID, p.Lease.Attempt, p.Lease.Owner)
		res.Lost = errors.Is(err, sql.ErrNoRows)
		if err != nil && !res.Lost {
			return fmt.Errorf("docket: progress of task %s: %w", p.Lease.ID, err)
		}
		return nil
	})
	if err != nil {
		return transport.ProgressResult{}, err
	}
	return res, nil
}
