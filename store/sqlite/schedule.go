package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

var _ transport.ScheduleStore = (*Store)(nil)

// runHistory is how long a fired slot is remembered, in milliseconds. The
// cursor already prevents a slot from firing twice; the run rows make it
// certain even for a scheduler whose clock jumped back by up to this much.
const runHistory = 30 * 24 * 60 * 60 * 1000

// ScheduleInit implements transport.ScheduleStore.
func (s *Store) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	err := s.w.do(ctx, "schedule", func(r runner) error {
		_, err := r.exec(ctx, `INSERT INTO docket_schedules (name, spec, next_at, updated_at) VALUES (?1, ?2, ?3, ?4)
			ON CONFLICT (name) DO UPDATE SET spec = ?2, next_at = ?3, updated_at = ?4 WHERE spec != ?2`,
			p.Name, p.Spec, wire.Millis(p.NextAt), wire.Millis(p.Now))
		return err
	})
	if err != nil {
		return transport.ScheduleState{}, fmt.Errorf("docket: init schedule %s: %w", p.Name, err)
	}
	sts, err := s.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: p.Now, Names: []string{p.Name}})
	if err != nil {
		return transport.ScheduleState{}, err
	}
	if len(sts) == 0 {
		return transport.ScheduleState{}, fmt.Errorf("docket: schedule %s vanished: %w", p.Name, transport.ErrNotFound)
	}
	return sts[0], nil
}

// ScheduleStates implements transport.ScheduleStore.
func (s *Store) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	q := `SELECT s.name, s.spec, s.next_at, s.last_slot, s.last_fired, s.last_task_id, t.state, s.updated_at
		FROM docket_schedules s LEFT JOIN docket_tasks t ON t.id = s.last_task_id`
	var args []any
	if len(p.Names) > 0 {
		names, _ := json.Marshal(p.Names)
		q += " WHERE s.name IN (SELECT value FROM json_each(?))"
		args = append(args, string(names))
	}
	q += " ORDER BY s.name"
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: read schedules: %w", err)
	}
	defer rows.Close()
	var out []transport.ScheduleState
	for rows.Next() {
		var st transport.ScheduleState
		var next, slot, fired, updated int64
		var task sql.NullString
		var state sql.NullInt64
		if err := rows.Scan(&st.Name, &st.Spec, &next, &slot, &fired, &task, &state, &updated); err != nil {
			return nil, fmt.Errorf("docket: read schedules: %w", err)
		}
		st.NextAt, st.LastSlot, st.LastFiredAt, st.Updated = wire.FromMillis(next), wire.FromMillis(slot), wire.FromMillis(fired), wire.FromMillis(updated)
		st.LastTaskID, st.LastTaskState = task.String, transport.State(state.Int64)
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: read schedules: %w", err)
	}
	return out, nil
}

// errLostRace rolls back a fire whose cursor moved under it.
var errLostRace = errors.New("docket: schedule cursor moved")

// ScheduleFire implements transport.ScheduleStore.
func (s *Store) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	var res transport.ScheduleFireResult
	now := wire.Millis(p.Now)
	err := s.w.doSavepoint(ctx, "schedule", func(r runner) error {
		res = transport.ScheduleFireResult{}
		var lastTask sql.NullString
		err := queryOne(ctx, r, []any{&lastTask}, `UPDATE docket_schedules SET next_at = ?, updated_at = ?
			WHERE name = ? AND next_at = ? RETURNING last_task_id`, wire.Millis(p.NextAt), now, p.Name, wire.Millis(p.Cursor))
		if errors.Is(err, sql.ErrNoRows) {
			return errLostRace
		}
		if err != nil {
			return err
		}
		res.Advanced = true
		if p.Slot.IsZero() || p.Message == nil {
			return nil
		}
		if p.SkipIfRunning && lastTask.Valid {
			var state int
			err := queryOne(ctx, r, []any{&state}, "SELECT state FROM docket_tasks WHERE id = ?", lastTask.String)
			if err == nil && !transport.State(state).Terminal() {
				res.Skipped = "running"
				return nil
			}
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		ins, err := r.exec(ctx, `INSERT INTO docket_schedule_runs (schedule, slot, task_id, fired_at) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, p.Name, wire.Millis(p.Slot), p.Message.ID, now)
		if err != nil {
			return err
		}
		if n, _ := ins.RowsAffected(); n == 0 {
			res.Skipped = "duplicate"
			return nil
		}
		out, err := insert(ctx, r, transport.EnqueueParams{Now: p.Now, Messages: []transport.Message{*p.Message}})
		if err != nil {
			return err
		}
		res.Fired, res.TaskID = true, out[0].ID
		if _, err := r.exec(ctx, `UPDATE docket_schedules SET last_slot = ?, last_fired = ?, last_task_id = ? WHERE name = ?`,
			wire.Millis(p.Slot), now, res.TaskID, p.Name); err != nil {
			return err
		}
		// Forget old slots, a few at a time.
		_, err = r.exec(ctx, `DELETE FROM docket_schedule_runs WHERE (schedule, slot) IN
			(SELECT schedule, slot FROM docket_schedule_runs WHERE fired_at < ? LIMIT 10)`, now-runHistory)
		return err
	})
	if errors.Is(err, errLostRace) {
		return transport.ScheduleFireResult{}, nil
	}
	if err != nil {
		return transport.ScheduleFireResult{}, fmt.Errorf("docket: fire schedule %s: %w", p.Name, err)
	}
	return res, nil
}

// ScheduleDelete implements transport.ScheduleStore.
func (s *Store) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	return s.w.do(ctx, "schedule", func(r runner) error {
		_, err := r.exec(ctx, "DELETE FROM docket_schedules WHERE name = ?", p.Name)
		return err
	})
}
