package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// Timestamps are stored as UTC Unix milliseconds; zero means unset.
func encodeMeta(m *transport.Message) (any, error) {
	raw, err := wire.EncodeMeta(m)
	if raw == "" || err != nil {
		return nil, err
	}
	return raw, nil
}

func decodeMeta(raw sql.NullString, m *transport.Message) error {
	return wire.DecodeMeta(raw.String, m)
}

const insertSQL = `INSERT INTO docket_tasks
	(id, name, queue, state, priority, run_at, expires_at, max_attempts, timeout_ms, ttl_ms,
	 unique_key, payload, meta, created_at, finished_at, error,
	 flow, flow_next, flow_slot, flow_waits, flow_mode, flow_catch, flow_branch)
	VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
	ON CONFLICT DO NOTHING`

// Enqueue implements transport.Transport: one group-commit op for the whole batch.
func (s *Store) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	do := s.w.do
	if len(p.Messages) > 1 {
		// A duplicate in the middle of a batch refuses it after the rows
		// before it were written: undo them.
		do = s.w.doSavepoint
	}
	var out []transport.EnqueueResult
	err := do(ctx, "enqueue", func(r runner) error {
		var err error
		out, err = insert(ctx, r, p)
		if dup := (*transport.DuplicateError)(nil); errors.As(err, &dup) || isConstraint(err) {
			// Nothing written: the INSERT that failed undid itself, and
			// in a batch the savepoint undoes the rows before it.
			return refuse(err)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EnqueueTx implements transport.TxEnqueuer: the rows are written inside tx
// and exist only if the caller commits it.
func (s *Store) EnqueueTx(ctx context.Context, tx *sql.Tx, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if tx == nil {
		return nil, fmt.Errorf("%w: nil *sql.Tx", transport.ErrInvalid)
	}
	if err := s.sameDatabase(ctx, tx); err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, "SAVEPOINT docket_enqueue"); err != nil {
		return nil, fmt.Errorf("docket: enqueue in transaction: %w", err)
	}
	out, err := insert(ctx, txRunner{tx}, p)
	if err != nil {
		tx.ExecContext(ctx, "ROLLBACK TO docket_enqueue")
		tx.ExecContext(ctx, "RELEASE docket_enqueue")
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, "RELEASE docket_enqueue"); err != nil {
		return nil, fmt.Errorf("docket: enqueue in transaction: %w", err)
	}
	return out, nil
}

// sameDatabase refuses a transaction on another database than the store's:
// the task would be written there, where no worker of this queue looks.
func (s *Store) sameDatabase(ctx context.Context, tx *sql.Tx) error {
	var file string
	err := tx.QueryRowContext(ctx, "SELECT file FROM pragma_database_list WHERE name = 'main'").Scan(&file)
	if err != nil {
		return fmt.Errorf("docket: enqueue in transaction: %w", classify(err))
	}
	if file == s.file {
		return nil
	}
	if a, err := os.Stat(file); err == nil {
		if b, err := os.Stat(s.file); err == nil && os.SameFile(a, b) {
			return nil
		}
	}
	if file == "" {
		file = "an in-memory database"
	}
	return fmt.Errorf("%w: the transaction is on %s, the queue on %s", transport.ErrOtherDatabase, file, s.file)
}

func insert(ctx context.Context, r runner, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	now := wire.Millis(p.Now)
	out := make([]transport.EnqueueResult, len(p.Messages))
	for i := range p.Messages {
		m := &p.Messages[i]
		state, runAt := transport.StateReady, now
		var finished int64
		var reason any
		if eta := wire.Millis(m.ETA); eta > now {
			state, runAt = transport.StateScheduled, eta
		}
		if exp := wire.Millis(m.Expires); exp != 0 && exp <= now {
			state, runAt, finished, reason = transport.StateExpired, now+m.ResultTTL.Milliseconds(), now, "expired before enqueue"
		}
		mt, err := encodeMeta(m)
		if err != nil {
			return nil, err
		}
		var uk any
		if m.UniqueKey != "" {
			uk = m.UniqueKey
		}
		created := wire.Millis(m.Created)
		if created == 0 {
			created = now
		}
		var flow, next, catch any
		slot, waits, mode, branch := -1, 0, 0, 0
		if f := m.Flow; f != nil {
			flow, slot, waits, mode, branch = f.ID, f.Slot, f.Waits, int(f.Mode), f.Branch
			if f.Next != "" {
				next = f.Next
			}
			if f.Catch != "" {
				catch = f.Catch
			}
			if waits > 0 {
				state, runAt, finished, reason = transport.StateWaiting, now, 0, nil
			}
		}
		res, err := r.exec(ctx, insertSQL, m.ID, m.Name, m.Queue, int(state), m.Priority, runAt, wire.Millis(m.Expires),
			m.MaxAttempts, m.Timeout.Milliseconds(), m.ResultTTL.Milliseconds(), uk, m.Payload, mt, created, finished, reason,
			flow, next, slot, waits, mode, catch, branch)
		if err != nil {
			return nil, fmt.Errorf("docket: insert task %s: %w", m.ID, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("docket: insert task %s: %w", m.ID, err)
		} else if n == 1 {
			out[i] = transport.EnqueueResult{ID: m.ID}
			continue
		}
		dup, err := conflict(ctx, r, m)
		if err != nil {
			return nil, err
		}
		if !m.ReturnExisting {
			return nil, dup
		}
		out[i] = transport.EnqueueResult{ID: dup.ExistingID, Existing: true}
	}
	return out, nil
}

// conflict explains why an insert did nothing: the id or the unique key.
func conflict(ctx context.Context, r runner, m *transport.Message) (*transport.DuplicateError, error) {
	var existing string
	err := queryOne(ctx, r, []any{&existing}, "SELECT id FROM docket_tasks WHERE id = ?", m.ID)
	if err == nil {
		return &transport.DuplicateError{ID: m.ID, ExistingID: existing}, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("docket: insert task %s: %w", m.ID, err)
	}
	if m.UniqueKey != "" {
		err = queryOne(ctx, r, []any{&existing}, "SELECT id FROM docket_tasks WHERE unique_key = ? AND state <= 3", m.UniqueKey)
		if err == nil {
			return &transport.DuplicateError{ID: m.ID, UniqueKey: m.UniqueKey, ExistingID: existing}, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("docket: insert task %s: %w", m.ID, err)
		}
	}
	return nil, fmt.Errorf("docket: insert task %s: ignored for an unknown reason", m.ID)
}

// execOne runs a statement that writes at most one row, and returns
// sql.ErrNoRows when it wrote none.
func execOne(ctx context.Context, r runner, query string, args ...any) error {
	res, err := r.exec(ctx, query, args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return sql.ErrNoRows
	}
	return nil
}

func queryOne(ctx context.Context, r runner, dest []any, query string, args ...any) error {
	rows, err := r.query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
}

// promoteSQL makes due scheduled tasks ready and rescues running tasks whose
// lease lapsed: back to ready, or failed ("worker lost") when that attempt
// was their last, or cancelled when a cancel was pending. Attempts were
// counted at claim, so a task that kills its worker every time still ends.
// A rescue records the lost attempt; the owner stays (Info.Owner).
//
// Every assignment leaves alone a row that is no longer scheduled or
// running when its turn comes: the workflow trigger, fired by an earlier
// row of the same statement, may have ended it (SQLite does not check the
// WHERE again for rows a trigger changed). Such a row is returned in its
// terminal state, and reported as ended. claimSQL does the same.
var promoteSQL = `UPDATE docket_tasks SET
	state = CASE WHEN state = 1 THEN 2 WHEN state = 3 THEN ` + rescueState + ` ELSE state END,
	error = CASE WHEN state = 3 THEN ` + rescueError + ` ELSE error END,
	finished_at = CASE WHEN state = 3 AND (cancel = 1 OR attempt >= max_attempts) THEN ?1 ELSE finished_at END,
	run_at = CASE WHEN state <> 3 THEN run_at WHEN cancel = 1 OR attempt >= max_attempts THEN ?1 + ttl_ms ELSE ?1 END,
	attempts = CASE WHEN state = 3 THEN ` + appendAttempt(rescueState, rescueError, "?1") + ` ELSE attempts END
	WHERE state IN (1, 3) AND run_at <= ?1
	RETURNING id, state, queue, name, attempt`

// rescueState and rescueError are the state and error a running task whose
// lease lapsed moves to.
const (
	rescueState = `CASE WHEN cancel = 1 THEN 6 WHEN attempt >= max_attempts THEN 5 ELSE 2 END`
	rescueError = `CASE WHEN cancel = 1 THEN 'cancelled; the worker was lost in attempt ' || attempt
		ELSE 'worker lost: lease expired in attempt ' || attempt END`
)

// claimSQL leases the first ready tasks of one queue in priority, then due
// time, order. A task past its expiry is moved to expired instead.
const claimSQL = `UPDATE docket_tasks SET
	state = CASE WHEN state <> 2 THEN state WHEN expires_at > 0 AND expires_at <= ?1 THEN 7 ELSE 3 END,
	attempt = attempt + CASE WHEN state <> 2 OR (expires_at > 0 AND expires_at <= ?1) THEN 0 ELSE 1 END,
	owner = CASE WHEN state <> 2 OR (expires_at > 0 AND expires_at <= ?1) THEN owner ELSE ?2 END,
	run_at = CASE WHEN state <> 2 THEN run_at WHEN expires_at > 0 AND expires_at <= ?1 THEN ?1 + ttl_ms ELSE ?3 END,
	started_at = CASE WHEN state <> 2 OR (expires_at > 0 AND expires_at <= ?1) THEN started_at ELSE ?1 END,
	progress = CASE WHEN state <> 2 THEN progress END,
	finished_at = CASE WHEN state <> 2 THEN finished_at WHEN expires_at > 0 AND expires_at <= ?1 THEN ?1 ELSE 0 END,
	error = CASE WHEN state = 2 AND expires_at > 0 AND expires_at <= ?1 THEN 'expired before start' ELSE error END
	WHERE rowid IN (SELECT rowid FROM docket_tasks WHERE state = 2 AND queue = ?4 %s
		ORDER BY priority DESC, run_at, id LIMIT %d)
	RETURNING ` + deliveryCols

const deliveryCols = `id, name, queue, state, priority, expires_at, attempt, max_attempts, timeout_ms, ttl_ms,
	unique_key, payload, meta, created_at, error, run_at, flow`

// claimQuery returns the claim statement for a limit. The limit is part of
// the SQL text, not a parameter: SQLite's planner uses a bound LIMIT's
// value, so rebinding a different one forces a re-prepare of the statement
// on every call. The writer caches one prepared statement per distinct
// limit (at most maxClaim).
func claimQuery(limit int, exclude bool) string {
	i := 0
	if exclude {
		i = 1
	}
	if q := claimQueries[i][limit].Load(); q != nil {
		return *q
	}
	filter := ""
	if exclude {
		filter = "AND name NOT IN (SELECT value FROM json_each(?5))"
	}
	q := fmt.Sprintf(claimSQL, filter, limit)
	claimQueries[i][limit].Store(&q)
	return q
}

// maxClaim bounds one claim, and so the number of cached claim statements.
const maxClaim = 256

// claimQueries memoizes claimQuery's text (the writer's statement cache is
// keyed by it); the texts are the same for every store.
var claimQueries [2][maxClaim + 1]atomic.Pointer[string]

// Claim implements transport.Transport.
func (s *Store) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	if p.Limit <= 0 || len(p.Queues) == 0 {
		return res, nil
	}
	var exclude string
	if len(p.Exclude) > 0 {
		raw, _ := json.Marshal(p.Exclude)
		exclude = string(raw)
	}
	err := s.w.do(ctx, "claim", func(r runner) error {
		res = transport.ClaimResult{}
		now := wire.Millis(p.Now)
		var err error
		if res.Ended, err = promote(ctx, r, now); err != nil {
			return err
		}
		for _, q := range p.Queues {
			want := min(p.Limit-len(res.Deliveries), maxClaim)
			if want <= 0 {
				break
			}
			if err := claimQueue(ctx, r, p, q, want, exclude, &res); err != nil {
				return err
			}
		}
		if len(res.Ended) > 0 {
			if err := unleaseStopped(ctx, r, now, &res); err != nil {
				return err
			}
		}
		if len(res.Deliveries) < p.Limit {
			var next sql.NullInt64
			if err := queryOne(ctx, r, []any{&next}, "SELECT min(run_at) FROM docket_tasks WHERE state IN (1, 3)"); err != nil {
				return fmt.Errorf("docket: claim: %w", err)
			}
			if next.Valid {
				res.NextAt = wire.FromMillis(next.Int64)
			}
		}
		return nil
	})
	if err != nil {
		return transport.ClaimResult{}, err
	}
	// RETURNING order is unspecified; hand tasks out in claim order.
	sort.SliceStable(res.Deliveries, func(i, j int) bool {
		a, b := &res.Deliveries[i], &res.Deliveries[j]
		if a.Queue != b.Queue {
			return false
		}
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		return a.ID < b.ID
	})
	return res, nil
}

// promote makes due scheduled tasks ready and rescues lapsed leases; it
// returns the tasks that ended instead (expired, or out of attempts). A
// rescue that ends a task failed counts as a failed attempt of the minute.
func promote(ctx context.Context, r runner, now int64) ([]transport.Status, error) {
	rows, err := r.query(ctx, promoteSQL, now)
	if err != nil {
		return nil, fmt.Errorf("docket: promote due tasks: %w", err)
	}
	var ended []transport.Status
	var lost minuteCounts
	for rows.Next() {
		var st transport.Status
		if err := rows.Scan(&st.ID, &st.State, &st.Queue, &st.Name, &st.Attempt); err != nil {
			rows.Close()
			return nil, err
		}
		if st.State.Terminal() {
			ended = append(ended, st)
		}
		if st.State == transport.StateFailed {
			lost.add(now, st.Queue, 0, 1)
		}
	}
	if err := closeRows(rows); err != nil {
		return nil, fmt.Errorf("docket: promote due tasks: %w", err)
	}
	if err := lost.write(ctx, r); err != nil {
		return nil, err
	}
	return ended, nil
}

// claimQueue leases up to want ready tasks of queue q into res.
func claimQueue(ctx context.Context, r runner, p transport.ClaimParams, q string, want int, exclude string, res *transport.ClaimResult) error {
	now := wire.Millis(p.Now)
	var rows *sql.Rows
	var err error
	if exclude == "" {
		rows, err = r.query(ctx, claimQuery(want, false), now, p.Owner, wire.Millis(p.LeaseUntil), q)
	} else {
		rows, err = r.query(ctx, claimQuery(want, true), now, p.Owner, wire.Millis(p.LeaseUntil), q, exclude)
	}
	if err != nil {
		return fmt.Errorf("docket: claim: %w", err)
	}
	for rows.Next() {
		d, state, err := scanDelivery(rows)
		if err != nil {
			rows.Close()
			return err
		}
		if state != transport.StateRunning {
			res.Ended = append(res.Ended, transport.Status{ID: d.ID, State: state, Name: d.Name, Queue: d.Queue, Attempt: d.Attempt})
			continue
		}
		d.Owner = p.Owner
		res.Deliveries = append(res.Deliveries, d)
	}
	if err := closeRows(rows); err != nil {
		return fmt.Errorf("docket: claim: %w", err)
	}
	return nil
}

// unleaseStoppedSQL ends a workflow step this claim leased and a later
// end in the same claim asked to stop (its workflow failed): it never
// reaches a worker, and its attempt is given back.
const unleaseStoppedSQL = `UPDATE docket_tasks SET state = 6, attempt = attempt - 1, finished_at = ?1,
	run_at = ?1 + ttl_ms, error = 'cancelled before start'
	WHERE id = ?2 AND state = 3 AND cancel = 1`

// unleaseStopped moves such steps from res's deliveries to its ended.
func unleaseStopped(ctx context.Context, r runner, now int64, res *transport.ClaimResult) error {
	kept := res.Deliveries[:0]
	for _, d := range res.Deliveries {
		if d.Flow == nil {
			kept = append(kept, d)
			continue
		}
		out, err := r.exec(ctx, unleaseStoppedSQL, now, d.ID)
		if err != nil {
			return fmt.Errorf("docket: claim: %w", err)
		}
		if n, _ := out.RowsAffected(); n == 0 {
			kept = append(kept, d)
			continue
		}
		res.Ended = append(res.Ended, transport.Status{ID: d.ID, State: transport.StateCancelled, Name: d.Name, Queue: d.Queue, Attempt: d.Attempt - 1})
	}
	res.Deliveries = kept
	return nil
}

// unleaseStoppedIDs is unleaseStopped for ClaimIDs: a step leased by the
// call that a later end in the same call asked to stop ends cancelled.
func unleaseStoppedIDs(ctx context.Context, r runner, now int64, out []transport.ClaimIDResult) error {
	if !slices.ContainsFunc(out, func(c transport.ClaimIDResult) bool { return c.Ended }) {
		return nil
	}
	for i, c := range out {
		if c.Delivery == nil || c.Delivery.Flow == nil {
			continue
		}
		res, err := r.exec(ctx, unleaseStoppedSQL, now, c.Delivery.ID)
		if err != nil {
			return fmt.Errorf("docket: claim: %w", err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			out[i] = transport.ClaimIDResult{State: transport.StateCancelled, Ended: true}
		}
	}
	return nil
}

func closeRows(rows *sql.Rows) error {
	err := rows.Err()
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	return err
}

func scanDelivery(rows *sql.Rows) (transport.Delivery, transport.State, error) {
	var (
		d                                     transport.Delivery
		state                                 transport.State
		expires, timeout, ttl, created, lease int64
		uk, mt, lastErr, flow                 sql.NullString
	)
	err := rows.Scan(&d.ID, &d.Name, &d.Queue, &state, &d.Priority, &expires, &d.Attempt, &d.MaxAttempts,
		&timeout, &ttl, &uk, &d.Payload, &mt, &created, &lastErr, &lease, &flow)
	if err != nil {
		return d, 0, fmt.Errorf("docket: read claimed task: %w", err)
	}
	if flow.Valid {
		// A delivery names its workflow; Steps tells the rest.
		d.Flow = &transport.FlowStep{ID: flow.String}
	}
	d.Expires, d.Created, d.LeaseUntil = wire.FromMillis(expires), wire.FromMillis(created), wire.FromMillis(lease)
	d.Timeout, d.ResultTTL = time.Duration(timeout)*time.Millisecond, time.Duration(ttl)*time.Millisecond
	d.UniqueKey, d.LastError = uk.String, lastErr.String
	if err := wire.DecodeDeliveryMeta(mt.String, &d.Message); err != nil {
		return d, 0, err
	}
	return d, state, nil
}

const extendSQL = `UPDATE docket_tasks SET run_at = ? WHERE id = ? AND attempt = ? AND owner = ? AND state = 3 RETURNING cancel`

// Extend implements transport.Transport.
func (s *Store) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out := make([]transport.ExtendResult, len(p.Leases))
	if len(p.Leases) == 0 {
		return out, nil
	}
	until := wire.Millis(p.Until)
	err := s.w.do(ctx, "extend", func(r runner) error {
		for i, l := range p.Leases {
			var cancel int
			err := queryOne(ctx, r, []any{&cancel}, extendSQL, until, l.ID, l.Attempt, l.Owner)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				out[i] = transport.ExtendResult{Lost: true}
			case err != nil:
				return fmt.Errorf("docket: extend lease of %s: %w", l.ID, err)
			default:
				out[i] = transport.ExtendResult{CancelRequested: cancel != 0}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// finishSQL writes one attempt's outcome, fenced on (id, attempt, owner).
// ?1 new state, ?2 now, ?3 run_at for a retry, ?4 result, ?5 error,
// ?6..?8 the lease. A release (state 2) gives the attempt back and keeps
// the previous attempt's error. A retry or a release of a task whose
// cancel is pending ends it cancelled instead: a cancel that was accepted
// is never lost by putting the task back. Every outcome but a success
// appends the attempt's record; the owner stays (Info.Owner).
var finishSQL = `UPDATE docket_tasks SET
	state = ` + finishState + `,
	run_at = CASE WHEN ?1 >= 4 OR cancel = 1 THEN ?2 + ttl_ms WHEN ?1 = 1 THEN ?3 ELSE ?2 END,
	finished_at = CASE WHEN ?1 >= 4 OR cancel = 1 THEN ?2 ELSE 0 END,
	attempt = attempt - CASE WHEN ?1 = 2 THEN 1 ELSE 0 END,
	result = ?4,
	error = CASE
		WHEN ?1 = 2 AND cancel = 1 THEN '` + cancelledAtRelease + `'
		WHEN ?1 = 1 AND cancel = 1 THEN 'cancelled; attempt ' || attempt || ' failed' || coalesce(': ' || ?5, '')
		WHEN ?1 = 2 THEN error
		ELSE ?5 END,
	attempts = CASE WHEN ?1 = 4 THEN attempts ELSE ` +
	appendAttempt(finishState, `coalesce(?5, CASE WHEN ?1 = 2 AND cancel = 1 THEN '`+cancelledAtRelease+`' END)`, "?2") + ` END
	WHERE id = ?6 AND attempt = ?7 AND owner = ?8 AND state = 3`

// finishState is the state finishSQL writes.
const finishState = `CASE WHEN ?1 IN (1, 2) AND cancel = 1 THEN 6 WHEN ?1 = 1 AND ?3 <= ?2 THEN 2 ELSE ?1 END`

// finishReturningSQL is finishSQL for an outcome that puts the task back
// (a retry or a release): it reports the state written, which is
// cancelled when a cancel was pending. A final outcome needs only the
// count of rows written, which is cheaper than a returned row.
var finishReturningSQL = finishSQL + ` RETURNING state`

// cancelledAtRelease is the error recorded for a task whose worker gave it
// back (at shutdown) while a cancel was pending.
const cancelledAtRelease = "cancelled; its worker released it before it finished"

// Finish implements transport.Transport.
func (s *Store) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	out := make([]transport.FinishResult, len(p.Items))
	for _, o := range p.Items {
		switch o.State {
		case transport.StateScheduled, transport.StateReady, transport.StateSucceeded, transport.StateFailed, transport.StateCancelled:
		default:
			return nil, fmt.Errorf("docket: finish task %s: invalid outcome state %v: %w", o.ID, o.State, transport.ErrInvalid)
		}
	}
	now := wire.Millis(p.Now)
	err := s.w.do(ctx, "finish", func(r runner) error {
		var counts finishCounts
		var steps []int // the successes of workflow steps
		for i, o := range p.Items {
			var errText any
			if o.Error != "" {
				errText = o.Error
			}
			args := []any{int(o.State), now, wire.Millis(o.RunAt), o.Result, errText, o.ID, o.Attempt, o.Owner}
			var state transport.State
			var err error
			if o.State.Terminal() {
				err = execOne(ctx, r, finishSQL, args...)
			} else {
				err = queryOne(ctx, r, []any{&state}, finishReturningSQL, args...)
			}
			switch {
			case errors.Is(err, sql.ErrNoRows):
				out[i] = transport.FinishResult{Lost: true}
			case err != nil:
				return fmt.Errorf("docket: finish task %s: %w", o.ID, err)
			default:
				out[i] = transport.FinishResult{Cancelled: !o.State.Terminal() && state == transport.StateCancelled}
				counts.add(o)
				if o.Flow != "" && o.State == transport.StateSucceeded {
					steps = append(steps, i)
				}
			}
		}
		// Once every outcome is written, so that a failure later in the
		// batch has cancelled what its workflow had not started: hand
		// over the steps the successes made ready, and say which ended
		// their workflow.
		handed := 0
		for _, i := range steps {
			o := p.Items[i]
			var err error
			if h := p.Handoff; h != nil && o.Flow != o.ID && handed < h.Limit {
				if out[i].Next, err = handoff(ctx, r, now, o.ID, h); err != nil {
					return err
				}
				if out[i].Next != nil {
					handed++
					continue // the workflow goes on
				}
			}
			if out[i].FlowEnded, err = flowEnded(ctx, r, o); err != nil {
				return err
			}
		}
		return counts.write(ctx, r, now)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// flowEnded reports whether the workflow of o's step has ended.
func flowEnded(ctx context.Context, r runner, o transport.Outcome) (bool, error) {
	if o.Flow == o.ID {
		return true, nil
	}
	var state transport.State
	err := queryOne(ctx, r, []any{&state}, "SELECT state FROM docket_tasks WHERE id = ?", o.Flow)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("docket: finish task %s: %w", o.ID, err)
	}
	return state.Terminal(), nil
}

// handoffSQL leases to ?2 the step that the success of step ?4 made
// ready (see handoff), as a claim would: its successor, or, past a
// group's gathering step that the success completed, the gathering
// step's successor (a chord's body); only of the queues in the JSON array
// ?5 and of none of the names in ?6.
var handoffSQL = `UPDATE docket_tasks SET state = 3, attempt = attempt + 1, owner = ?2, run_at = ?3,
	started_at = ?1, finished_at = 0, progress = NULL
	WHERE id = (SELECT CASE WHEN n.flow_mode & 4 AND n.state = 4 THEN n.flow_next ELSE n.id END
		FROM docket_tasks t JOIN docket_tasks n ON n.id = t.flow_next WHERE t.id = ?4)
	AND state = 2 AND cancel = 0 AND (expires_at = 0 OR expires_at > ?1)
	AND queue IN (SELECT value FROM json_each(?5)) AND name NOT IN (SELECT value FROM json_each(?6))
	RETURNING ` + deliveryCols

// handoff leases to h.Owner the step that the success of step id made
// ready, if h allows it. Finish calls it after recording the success, in
// the same write.
func handoff(ctx context.Context, r runner, now int64, id string, h *transport.Handoff) (*transport.Delivery, error) {
	queues, _ := json.Marshal(h.Queues)
	exclude, _ := json.Marshal(h.Exclude)
	if h.Exclude == nil {
		exclude = []byte("[]")
	}
	rows, err := r.query(ctx, handoffSQL, now, h.Owner, wire.Millis(h.LeaseUntil), id, string(queues), string(exclude))
	if err != nil {
		return nil, fmt.Errorf("docket: finish task %s: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, closeRows(rows)
	}
	d, _, err := scanDelivery(rows)
	if err != nil {
		return nil, err
	}
	if err := closeRows(rows); err != nil {
		return nil, err
	}
	d.Owner = h.Owner
	return &d, nil
}

const cancelSQL = `UPDATE docket_tasks SET
	state = CASE WHEN state IN (1, 2, 8) THEN 6 ELSE state END,
	cancel = CASE WHEN state = 3 THEN 1 ELSE cancel END,
	finished_at = CASE WHEN state IN (1, 2, 8) THEN ?1 ELSE finished_at END,
	run_at = CASE WHEN state IN (1, 2, 8) THEN ?1 + ttl_ms ELSE run_at END,
	error = CASE WHEN state IN (1, 2, 8) THEN 'cancelled before start' ELSE error END
	WHERE id = ?2 RETURNING state`

// Cancel implements transport.Transport.
func (s *Store) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	var res transport.CancelResult
	err := s.w.do(ctx, "cancel", func(r runner) error {
		err := queryOne(ctx, r, []any{&res.State}, cancelSQL, wire.Millis(p.Now), p.ID)
		if errors.Is(err, sql.ErrNoRows) {
			return refuse(fmt.Errorf("docket: cancel %s: %w", p.ID, transport.ErrNotFound))
		}
		return err
	})
	return res, err
}

const infoCols = `id, name, queue, state, priority, run_at, expires_at, attempt, max_attempts, timeout_ms, ttl_ms,
	unique_key, payload, meta, result, error, created_at, started_at, finished_at, cancel, owner, progress,
	flow, flow_next, flow_slot, flow_waits`

func scanInfo(sc interface{ Scan(...any) error }, extra ...any) (transport.Info, error) {
	var (
		in                                                             transport.Info
		runAt, expires, timeout, ttl, created, started, finished, canc int64
		uk, mt, errText, owner, flow, next                             sql.NullString
		slot, waits                                                    int
	)
	err := sc.Scan(append([]any{&in.ID, &in.Name, &in.Queue, &in.State, &in.Priority, &runAt, &expires, &in.Attempt, &in.MaxAttempts,
		&timeout, &ttl, &uk, &in.Payload, &mt, &in.Result, &errText, &created, &started, &finished, &canc, &owner, &in.Progress,
		&flow, &next, &slot, &waits}, extra...)...)
	if err != nil {
		return in, err
	}
	if flow.Valid {
		in.Flow = &transport.FlowStep{ID: flow.String, Next: next.String, Slot: slot, Waits: max(waits, 0)}
	}
	in.Owner = owner.String
	in.RunAt, in.Expires, in.Created, in.Started, in.Finished = wire.FromMillis(runAt), wire.FromMillis(expires), wire.FromMillis(created), wire.FromMillis(started), wire.FromMillis(finished)
	if in.State == transport.StateScheduled {
		in.ETA = in.RunAt
	}
	in.Timeout, in.ResultTTL = time.Duration(timeout)*time.Millisecond, time.Duration(ttl)*time.Millisecond
	in.UniqueKey, in.Error, in.CancelRequested = uk.String, errText.String, canc != 0
	return in, decodeMeta(mt, &in.Message)
}

// Get implements transport.Transport. It reads from the pool, not the writer.
func (s *Store) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	row := s.rdb.QueryRowContext(ctx, "SELECT "+infoCols+", attempts FROM docket_tasks WHERE id = ?", p.ID)
	var attempts sql.NullString
	in, err := scanInfo(row, &attempts)
	if errors.Is(err, sql.ErrNoRows) {
		return in, fmt.Errorf("docket: task %s: %w", p.ID, transport.ErrNotFound)
	}
	if err != nil {
		return in, fmt.Errorf("docket: read task %s: %w", p.ID, classify(err))
	}
	if in.Attempts, err = decodeAttempts(attempts.String); err != nil {
		return in, fmt.Errorf("docket: read task %s: %w", p.ID, err)
	}
	return in, nil
}

// Lookup implements transport.Transport.
func (s *Store) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	if len(p.IDs) == 0 {
		return nil, nil
	}
	ids, _ := json.Marshal(p.IDs)
	rows, err := s.rdb.QueryContext(ctx, "SELECT id, state, cancel FROM docket_tasks WHERE id IN (SELECT value FROM json_each(?))", string(ids))
	if err != nil {
		return nil, fmt.Errorf("docket: look up tasks: %w", classify(err))
	}
	defer rows.Close()
	out := make([]transport.Status, 0, len(p.IDs))
	for rows.Next() {
		var st transport.Status
		var c int
		if err := rows.Scan(&st.ID, &st.State, &c); err != nil {
			return nil, fmt.Errorf("docket: look up tasks: %w", err)
		}
		st.CancelRequested = c != 0
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: look up tasks: %w", err)
	}
	return out, nil
}

// List implements transport.Lister.
func (s *Store) List(ctx context.Context, p transport.ListParams) ([]transport.Info, error) {
	var where []string
	var args []any
	if p.Name != "" {
		where, args = append(where, "name = ?"), append(args, p.Name)
	}
	if p.Queue != "" {
		where, args = append(where, "queue = ?"), append(args, p.Queue)
	}
	if len(p.States) > 0 {
		marks := make([]string, len(p.States))
		for i, st := range p.States {
			marks[i], args = "?", append(args, int(st))
		}
		where = append(where, "state IN ("+strings.Join(marks, ",")+")")
	}
	if p.After != "" {
		where, args = append(where, "id > ?"), append(args, p.After)
	}
	q := "SELECT " + infoCols + " FROM docket_tasks"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	q += " ORDER BY id LIMIT ?"
	args = append(args, limit)
	return s.readInfos(ctx, "list tasks", q, args...)
}

// readInfos reads the tasks a query of infoCols returns, from the pool;
// what names the read in errors.
func (s *Store) readInfos(ctx context.Context, what, query string, args ...any) ([]transport.Info, error) {
	rows, err := s.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: %s: %w", what, classify(err))
	}
	defer rows.Close()
	var out []transport.Info
	for rows.Next() {
		in, err := scanInfo(rows)
		if err != nil {
			return nil, fmt.Errorf("docket: %s: %w", what, classify(err))
		}
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: %s: %w", what, classify(err))
	}
	return out, nil
}

const pruneSQL = `DELETE FROM docket_tasks WHERE rowid IN
	(SELECT rowid FROM docket_tasks WHERE state >= 4 AND state <= 7 AND run_at <= ? AND ` + flowOverSQL + `
	 ORDER BY run_at LIMIT ?)`

// flowOverSQL holds for a task that is no workflow step, or whose
// workflow has ended: the rows of a workflow that still runs are the
// arguments of its later steps, and are neither pruned nor deleted.
const flowOverSQL = `(flow IS NULL OR NOT EXISTS (SELECT 1 FROM docket_tasks f
	WHERE f.id = docket_tasks.flow AND f.state NOT BETWEEN 4 AND 7))`

// Prune implements transport.Pruner: it deletes up to p.Limit finished tasks
// whose result TTL has passed, then returns freed pages to the file system.
func (s *Store) Prune(ctx context.Context, p transport.PruneParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	var n int64
	err := s.w.do(ctx, "prune", func(r runner) error {
		res, err := r.exec(ctx, pruneSQL, wire.Millis(p.Now), limit)
		if err != nil {
			return fmt.Errorf("docket: prune: %w", err)
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		return pruneAdmin(ctx, r, wire.Millis(p.Now))
	})
	if err != nil {
		return 0, err
	}
	// Return up to 1000 free pages each time, also on calls that deleted
	// nothing: one large prune can free more than that.
	s.w.doNoTx(ctx, func(r runner) error {
		var free int64
		if err := queryOne(ctx, r, []any{&free}, "PRAGMA freelist_count"); err != nil || free == 0 {
			return err
		}
		_, err := r.exec(ctx, "PRAGMA incremental_vacuum(1000)")
		return err
	})
	return int(n), nil
}

var _ transport.IDClaimer = (*Store)(nil)

// claimIDSQL leases one task by id: the next attempt, owned by ?2 until ?3.
// A task still running under a lapsed lease records its lost attempt.
var claimIDSQL = `UPDATE docket_tasks SET state = 3, attempt = attempt + 1, owner = ?2, run_at = ?3,
	started_at = ?1, finished_at = 0, cancel = 0, progress = NULL,
	attempts = CASE WHEN state = 3 THEN ` + appendAttempt("2", "'worker lost: lease expired in attempt ' || attempt", "?1") + ` ELSE attempts END
	WHERE id = ?4 RETURNING ` + deliveryCols

// endIDSQL moves one task to a terminal state ?2 with error ?3; a task
// that was running (its worker lost) records that attempt.
var endIDSQL = `UPDATE docket_tasks SET state = ?2, error = ?3, finished_at = ?1, run_at = ?1 + ttl_ms,
	attempts = CASE WHEN state = 3 THEN ` + appendAttempt("?2", "?3", "?1") + ` ELSE attempts END
	WHERE id = ?4`

// ClaimIDs implements transport.IDClaimer.
func (s *Store) ClaimIDs(ctx context.Context, p transport.ClaimIDsParams) ([]transport.ClaimIDResult, error) {
	out := make([]transport.ClaimIDResult, len(p.IDs))
	now := wire.Millis(p.Now)
	err := s.w.do(ctx, "claim", func(r runner) error {
		var lost minuteCounts
		for i, id := range p.IDs {
			out[i] = transport.ClaimIDResult{}
			var state transport.State
			var runAt, expires int64
			var attempt, maxAttempts, cancel int
			var queue string
			err := queryOne(ctx, r, []any{&state, &runAt, &expires, &attempt, &maxAttempts, &cancel, &queue},
				"SELECT state, run_at, expires_at, attempt, max_attempts, cancel, queue FROM docket_tasks WHERE id = ?", id)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("docket: claim task %s: %w", id, err)
			}
			end, reason := leaseDecision(state, runAt, expires, attempt, maxAttempts, cancel != 0, now)
			switch {
			case end != 0:
				if _, err := r.exec(ctx, endIDSQL, now, int(end), reason, id); err != nil {
					return fmt.Errorf("docket: end task %s: %w", id, err)
				}
				out[i] = transport.ClaimIDResult{State: end, Ended: true}
				if state == transport.StateRunning && end == transport.StateFailed {
					lost.add(now, queue, 0, 1)
				}
			case reason != "":
				out[i] = transport.ClaimIDResult{State: state}
				if !state.Terminal() {
					out[i].RunAt = wire.FromMillis(runAt)
				}
			default:
				rows, err := r.query(ctx, claimIDSQL, now, p.Owner, wire.Millis(p.LeaseUntil), id)
				if err != nil {
					return fmt.Errorf("docket: claim task %s: %w", id, err)
				}
				if !rows.Next() {
					rows.Close()
					return fmt.Errorf("docket: claim task %s: vanished: %w", id, transport.ErrNotFound)
				}
				d, _, err := scanDelivery(rows)
				if cerr := closeRows(rows); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				d.Owner = p.Owner
				out[i] = transport.ClaimIDResult{Delivery: &d, State: transport.StateRunning}
			}
		}
		if err := unleaseStoppedIDs(ctx, r, now, out); err != nil {
			return err
		}
		return lost.write(ctx, r)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// leaseDecision says what ClaimIDs does with a task: end it (end is the
// terminal state, reason the error to record), leave it (end 0 and a
// reason: already final, held under a live lease, or not due), or lease it
// (end 0, reason empty). A task with a cancel recorded is never leased.
func leaseDecision(state transport.State, runAt, expires int64, attempt, maxAttempts int, cancel bool, now int64) (end transport.State, reason string) {
	switch {
	case state.Terminal():
		return 0, "final"
	case state == transport.StateRunning && runAt > now:
		return 0, "held"
	case state == transport.StateScheduled && runAt > now:
		return 0, "not due"
	case state == transport.StateWaiting:
		return 0, "waiting" // a workflow step whose predecessors run
	case state == transport.StateRunning && cancel:
		return transport.StateCancelled, fmt.Sprintf("cancelled; the worker was lost in attempt %d", attempt)
	case cancel:
		return transport.StateCancelled, "cancelled before start"
	case expires > 0 && expires <= now:
		return transport.StateExpired, "expired before start"
	case attempt >= maxAttempts:
		return transport.StateFailed, fmt.Sprintf("worker lost: delivered again after attempt %d", attempt)
	}
	return 0, ""
}

var _ transport.Workflows = (*Store)(nil)

// Steps implements transport.Workflows. It reads from the pool.
func (s *Store) Steps(ctx context.Context, p transport.StepsParams) ([]transport.Info, error) {
	return s.readInfos(ctx, "read workflow "+p.ID, "SELECT "+infoCols+" FROM docket_tasks WHERE flow = ? ORDER BY id", p.ID)
}

var _ transport.Overdue = (*Store)(nil)

// Overdue implements transport.Overdue. It reads from the pool: the
// scheduled and running tasks through the index of timers, the ready ones
// through their queue's ready index. The index of timers holds every
// queue's: with a result store, a backlogged queue's countdowns stay
// scheduled past their time until delivered, and the read passes over them
// (about 85 ms for 200,000 such rows).
func (s *Store) Overdue(ctx context.Context, p transport.OverdueParams) ([]transport.Message, error) {
	if len(p.Queues) == 0 {
		return nil, nil
	}
	queues, err := json.Marshal(p.Queues)
	if err != nil {
		return nil, err
	}
	in, err := s.readInfos(ctx, "read overdue tasks", "SELECT "+infoCols+` FROM docket_tasks
		WHERE state IN (1, 3) AND run_at < ?1 AND queue IN (SELECT value FROM json_each(?2))
		UNION ALL SELECT `+infoCols+` FROM docket_tasks
		WHERE state = 2 AND queue IN (SELECT value FROM json_each(?2)) AND run_at < ?1
		ORDER BY run_at LIMIT ?3`, p.Before.UnixMilli(), string(queues), max(p.Limit, 1))
	out := make([]transport.Message, len(in))
	for i := range in {
		out[i] = in[i].Message
	}
	return out, err
}

var _ transport.FlowOutbox = (*Store)(nil)

// Outbox implements transport.FlowOutbox. It reads from the pool, through
// the index of the outbox's steps.
func (s *Store) Outbox(ctx context.Context, p transport.OutboxParams) ([]transport.Message, error) {
	in, err := s.readInfos(ctx, "read workflow outbox", "SELECT "+infoCols+" FROM docket_tasks WHERE state = 2 AND flow_mode & 8 ORDER BY id LIMIT ?", max(p.Limit, 1))
	out := make([]transport.Message, len(in))
	for i := range in {
		out[i] = in[i].Message
	}
	return out, err
}

// Published implements transport.FlowOutbox: one write.
func (s *Store) Published(ctx context.Context, p transport.PublishedParams) error {
	if len(p.IDs) == 0 {
		return nil
	}
	raw, err := json.Marshal(p.IDs)
	if err != nil {
		return err
	}
	return s.w.do(ctx, "published", func(r runner) error {
		_, err := r.exec(ctx, `UPDATE docket_tasks SET flow_mode = flow_mode & ~8
			WHERE id IN (SELECT value FROM json_each(?)) AND flow_mode & 8`, string(raw))
		if err != nil {
			return fmt.Errorf("docket: workflow outbox: %w", err)
		}
		return nil
	})
}

const (
	flowStepsSQL  = `SELECT id, state FROM docket_tasks WHERE flow = ? AND state IN (1, 2, 3, 8)`
	cancelFlowSQL = `UPDATE docket_tasks SET state = 6, flow_waits = -1, finished_at = ?1, run_at = ?1 + ttl_ms,
		error = 'docket: workflow cancelled'
		WHERE flow = ?2 AND state IN (1, 2, 8)`
	stopFlowSQL = `UPDATE docket_tasks SET cancel = 1 WHERE flow = ? AND state = 3`
)

// CancelFlow implements transport.Workflows: one write. The cancelled
// steps carry flow_waits = -1, so the workflow trigger leaves them be;
// running steps that end later find nothing left to advance.
func (s *Store) CancelFlow(ctx context.Context, p transport.CancelParams) (transport.CancelFlowResult, error) {
	var res transport.CancelFlowResult
	err := s.w.do(ctx, "cancel", func(r runner) error {
		res = transport.CancelFlowResult{}
		var n int
		if err := queryOne(ctx, r, []any{&n}, "SELECT count(*) FROM docket_tasks WHERE flow = ?", p.ID); err != nil {
			return fmt.Errorf("docket: cancel workflow %s: %w", p.ID, err)
		}
		if n == 0 {
			return refuse(fmt.Errorf("docket: cancel workflow %s: %w", p.ID, transport.ErrNotFound))
		}
		rows, err := r.query(ctx, flowStepsSQL, p.ID)
		if err != nil {
			return fmt.Errorf("docket: cancel workflow %s: %w", p.ID, err)
		}
		for rows.Next() {
			var id string
			var state transport.State
			if err := rows.Scan(&id, &state); err != nil {
				rows.Close()
				return err
			}
			if state == transport.StateRunning {
				res.Running = append(res.Running, id)
			} else {
				res.Ended = append(res.Ended, id)
			}
		}
		if err := closeRows(rows); err != nil {
			return fmt.Errorf("docket: cancel workflow %s: %w", p.ID, err)
		}
		if _, err := r.exec(ctx, cancelFlowSQL, wire.Millis(p.Now), p.ID); err != nil {
			return fmt.Errorf("docket: cancel workflow %s: %w", p.ID, err)
		}
		if _, err := r.exec(ctx, stopFlowSQL, p.ID); err != nil {
			return fmt.Errorf("docket: cancel workflow %s: %w", p.ID, err)
		}
		return nil
	})
	return res, err
}
